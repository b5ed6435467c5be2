"""Frozen settings: a field normalised in `__post_init__`."""


def set_field(instance, name, value):
    """Normalises a field of a frozen dataclass in `__post_init__`."""
    object.__setattr__(instance, name, value)
