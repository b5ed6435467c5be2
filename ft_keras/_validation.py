"""Argument checks shared by the library's constructors and settings."""


class ConfigurationError(ValueError):
    """The experiment cannot start or go on: bad config, inputs or workdir.
    The command-line tools print its message as one line and exit with
    status 2."""


def non_negative(name, value, hint):
    """Returns `value` as a float, or raises a `ValueError` naming `name`,
    the bad value and `hint` (a typical value, e.g. "5e-4 in the paper")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative number ({hint}). Received: "
            f"{name}={value!r}"
        )
    return float(value)


def positive(name, value, hint):
    """Returns `value` as a float, or raises a `ValueError` naming `name`,
    the bad value and `hint` unless it is a number above zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive number ({hint}). Received: "
            f"{name}={value!r}"
        )
    return float(value)


def one_of(name, value, choices, hint=""):
    """Returns `value`, or raises a `ValueError` unless it is one of
    `choices`. `name` may carry its gin prefix (`factor_transfer.p`)."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {tuple(choices)}{hint}. Received: "
            f"{name.rsplit('.', 1)[-1]}={value!r}"
        )
    return value
