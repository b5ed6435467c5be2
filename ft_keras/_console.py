"""What the command-line tools print: our lines, Keras' progress, results.

TensorFlow logs a few dozen lines a user cannot act on (CPU features, a
CUDA probe that fails on every machine without a GPU, grappler and TFLite
converter chatter). The tools (`python -m ft_keras.<tool>`) hide them
unless asked with absl's `--verbosity` (`-v`) flag: `--verbosity=0` shows
TensorFlow's INFO lines again, as plain TensorFlow would. A library user
(`import ft_keras`) gets TensorFlow's defaults: nothing here runs then.

TensorFlow's C++ logging is set from the environment when TensorFlow
loads, which `import ft_keras` does, so `ft_keras/__init__.py` calls
`quiet_before_tensorflow` first when started by `python -m`, and imports
TensorFlow inside `tensorflow_import_quieted`: TensorFlow 2.21 logs its
first lines (oneDNN, CPU features, the CUDA probe) before its log level
applies (abseil-cpp logs everything before `absl::InitializeLog`;
abseil/abseil-cpp#1957), so only capturing stderr hides them.
"""

import contextlib
import logging
import os
import sys
import tempfile

# Whether a command-line tool hides TensorFlow's output (set below).
quiet = False


def _asks_for_logs(argv):
    """Whether `argv` sets absl's verbosity (`-v`, `--verbosity`)."""
    return any(
        arg in ("-v", "--verbosity") or arg.startswith(("-v=", "--verbosity="))
        for arg in argv
    )


def quiet_before_tensorflow(argv):
    """Before TensorFlow loads: hide its C++ log lines (`TF_CPP_MIN_LOG_LEVEL`
    3), unless `argv` asks for logs or the environment already sets it."""
    global quiet
    if _asks_for_logs(argv):
        return
    quiet = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Lines of TensorFlow's import that say nothing a user can act on.
_IMPORT_NOISE = (
    "I0000 ",
    "WARNING: All log messages before absl::InitializeLog()",
    "To enable the following instructions:",
)


@contextlib.contextmanager
def tensorflow_import_quieted():
    """While quiet, captures what the process writes to stderr (TensorFlow
    loading), and then writes back every line but TensorFlow's INFO lines:
    a warning or error of the import, or its traceback, still shows."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith(_IMPORT_NOISE):
                    print(line, file=sys.stderr)


def quiet_python_logging():
    """After flags are parsed: TensorFlow's and absl's Python loggers show
    errors only (the SavedModel writer logs each file at INFO)."""
    if not quiet:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger().addFilter(_not_a_gin_include_probe)


def _not_a_gin_include_probe(record):
    """gin logs an ERROR "Path not found" for each include it first looks
    for on the Python path, before it finds it on the search path that
    `ft_keras.cli` adds (a missing file is still reported, by gin's
    exception)."""
    return not (
        record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
        and str(record.msg).startswith("Path not found")
    )


@contextlib.contextmanager
def native_output_silenced():
    """While quiet, hides what native code prints straight to the process's
    stdout and stderr (the TFLite converter prints its quantization settings
    there); its errors still arrive as Python exceptions."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
