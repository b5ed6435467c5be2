"""The quiet console: what a user sees is ft_keras' lines, Keras' progress
and results, from the command-line tools and from Python alike.

TensorFlow logs a few dozen lines a user cannot act on (CPU features, a
CUDA probe that fails on every machine without a GPU, grappler and TFLite
converter chatter). `import ft_keras` hides them for the whole process, as
the tools (`python -m ft_keras.<tool>`) do:

- TensorFlow's C++ log lines are hidden (`TF_CPP_MIN_LOG_LEVEL` 3: INFO,
  WARNING and ERROR; its real errors reach Python as exceptions), set
  before TensorFlow loads unless the environment already sets a level (a
  level set there wins; a subprocess inherits either);
- the lines TensorFlow logs while it loads, before that level applies
  (abseil-cpp logs everything before `absl::InitializeLog`;
  abseil/abseil-cpp#1957), are captured and dropped: its INFO lines only,
  and only when the level hides INFO; a warning, an error or a traceback of
  the import still shows;
- what the TFLite converter prints straight to stdout and stderr during
  `ft_keras.export.export_student` is dropped (its errors are exceptions).

One ERROR line it hides is a known TensorFlow 2.21 bug, not ours: on the
CPU, the gradient of a Conv2D with bias followed by a LeakyReLU (the
`Paraphraser`, the `Translator`) makes grappler log `remapper failed: ...
LeakyReluGrad ... BiasAdd`; grappler then drops that pass and keeps the
graph unfused, so the numbers are those of a run with the remapper off.

TensorFlow reads its log level once, when it loads: import ft_keras before
TensorFlow (`import ft_keras` first in a script), or set
`TF_CPP_MIN_LOG_LEVEL=3` yourself when TensorFlow comes first (its
start-up lines then show, and its C++ lines at the level it read). To see
everything, set `FT_KERAS_VERBOSE=1` before the import (or pass the tools'
absl `--verbosity` (`-v`) flag: `--verbosity=0` shows TensorFlow's INFO
lines again, as plain TensorFlow would); `ft_keras.quiet_console(False)`
stops the rest (the converter's output shows again; TensorFlow's C++ level
is restored for a TensorFlow not loaded yet and for subprocesses).

Warnings our own calls would cause are fixed where they arise, not hidden:
the runner's `fit` passes `shuffle=False` (the pipeline shuffles), the image
folder reader skips TFDS' "prepared?" check (its files are read in place).
A warning a user's own call causes still shows, e.g. Keras' "`shuffle=True`
was passed, but will be ignored" for `model.fit(dataset)`: pass
`shuffle=False` as ft_keras does.
"""

import contextlib
import logging
import os
import sys
import tempfile

# Whether ft_keras quiets the console (`quiet_console`).
quiet = False
# Whether `quiet_console` set `TF_CPP_MIN_LOG_LEVEL` (it then may unset it).
_level_set_here = False
_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_VERBOSE = "FT_KERAS_VERBOSE"


def quiet_console(enabled=True):
    """Turns ft_keras' quiet console on (the default of `import ft_keras`)
    or off.

    On: `TF_CPP_MIN_LOG_LEVEL` is set to 3 unless the environment sets it,
    for a TensorFlow that loads after this call and for subprocesses (a
    TensorFlow already loaded keeps the level it read), and the TFLite
    converter's output during export is dropped. Off: both undone. See the
    module docstring of `ft_keras._console` for all the console does.

    Args:
        enabled: True for the quiet console, False for TensorFlow's own.

    Example:

    >>> import ft_keras
    >>> ft_keras.quiet_console(False)  # the converter prints again
    >>> ft_keras.quiet_console()
    """
    global quiet, _level_set_here
    if not isinstance(enabled, bool):
        raise ValueError(
            f"`enabled` must be True or False. Received: enabled={enabled!r}"
        )
    quiet = enabled
    if enabled and _LOG_LEVEL not in os.environ:
        os.environ[_LOG_LEVEL] = "3"
        _level_set_here = True
    elif not enabled and _level_set_here:
        os.environ.pop(_LOG_LEVEL, None)
        _level_set_here = False


def _asks_for_logs(argv):
    """Whether `argv` sets absl's verbosity (`-v`, `--verbosity`)."""
    return any(
        arg in ("-v", "--verbosity") or arg.startswith(("-v=", "--verbosity="))
        for arg in argv
    )


def quiet_on_import(tool_argv=()):
    """What `import ft_keras` runs before TensorFlow loads: the quiet console,
    unless `FT_KERAS_VERBOSE` is set (not "" or "0") or a tool's arguments
    `tool_argv` ask for logs (`-v`, `--verbosity`)."""
    if os.environ.get(_VERBOSE, "") not in ("", "0"):
        return
    if _asks_for_logs(tool_argv):
        return
    quiet_console()


def _level_hides_info():
    try:
        return int(os.environ.get(_LOG_LEVEL, "0")) >= 1
    except ValueError:
        return False


# Lines of TensorFlow's import that say nothing a user can act on.
_IMPORT_NOISE = (
    "I0000 ",
    "WARNING: All log messages before absl::InitializeLog()",
    "To enable the following instructions:",
)


@contextlib.contextmanager
def tensorflow_import_quieted():
    """While quiet and TensorFlow's INFO lines are hidden by its log level,
    captures what the process writes to stderr (TensorFlow loading), and
    then writes back every line but TensorFlow's INFO lines: a warning or
    error of the import, or its traceback, still shows."""
    if not quiet or not _level_hides_info():
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to capture
        yield
        return
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
    """The tools, after flags are parsed: TensorFlow's and absl's Python
    loggers show errors only (the SavedModel writer logs each file at INFO
    once absl's flags are parsed). Not for `import ft_keras`: a script's own
    absl and Python logging stay as it set them."""
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
