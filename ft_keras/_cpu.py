"""What this CPU is: its model name and flags, read from `/proc/cpuinfo`.

Imports nothing heavy, so that `import ft_keras` can read it before
TensorFlow loads (`ft_keras._onednn`).
"""


def read_cpuinfo(path="/proc/cpuinfo"):
    """`(model name, set of flags)` of the first CPU listed in `path`; None
    for what cannot be read (not Linux).

    Example:

    >>> model, flags = read_cpuinfo("/no/such/file")
    >>> model, flags
    (None, None)
    """
    model, flags = None, None
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags
