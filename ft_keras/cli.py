"""The command line: flags, gin parsing, errors as exit codes, and `main`.

`python -m ft_keras.train`, `ft_keras.evaluate` and `ft_keras.export` are
thin entry points that call `main` with their stages; data flows one way,
cli -> experiment -> data / models -> distiller -> losses / layers.

Exit status: 0 on success; 2 when the experiment cannot start (a gin typo, a
missing file or value, an unknown dataset, data not prepared, mismatched
taps or checkpoint, a workdir of another config), with one line on stderr
naming the problem; 1 when training fails (e.g. a NaN loss).
Set FT_KERAS_TRACEBACK=1 to see the traceback of these errors.
"""

import os
import pathlib
import sys

import gin
from absl import flags

FLAGS = flags.FLAGS
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def define_flags(flag_values=None):
    """Defines the flags on `flag_values` (default: absl's global FLAGS)."""
    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config file(s), parsed in order.", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "gin_bindings", [],
        "Gin bindings, e.g. 'student/training.epochs = 10'.", flag_values=fv,
    )
    flags.DEFINE_string(
        "workdir", None,
        "Directory of the experiment (required, except with --dry_run).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "overwrite", False, "Delete the workdir first and start over.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "strategy", None, ["auto", "default", "mirrored", "multi_worker"],
        "Sets `experiment.strategy` (see ft_keras.distribute).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "cluster", None, ["auto", "tf_config", "slurm"],
        "Sets `cluster.resolver`: where multiple workers find each other.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "dry_run", False,
        "Run every stage of the config for two steps on synthetic data of "
        "its shapes, in a temporary workdir, print what the real run would "
        "do, and exit 0 (or 2 with the error a real run would hit).",
        flag_values=fv,
    )


def flag_bindings():
    """Gin bindings of the `--strategy` and `--cluster` flags."""
    bindings = []
    if FLAGS.strategy:
        bindings.append(f"experiment.strategy = '{FLAGS.strategy}'")
    if FLAGS.cluster:
        bindings.append(f"cluster.resolver = '{FLAGS.cluster}'")
    return bindings


def _fail(error, code):
    if isinstance(error, Exception) and os.environ.get("FT_KERAS_TRACEBACK"):
        raise error
    first = " ".join(str(error).split())
    print(f"ft_keras: error: {first}", file=sys.stderr, flush=True)
    return code


def parse_config(gin_files, gin_bindings):
    """Parses gin files (includes are resolved from the current directory
    and from the ft_keras checkout) and bindings."""
    from ft_keras import config  # noqa: F401  (registers the configurables)

    gin.add_config_file_search_path(str(_REPO_ROOT))
    for path in gin_files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Gin file not found: {path}")
    config.parse(gin_files, gin_bindings)


def run(argv, stages=None):
    """Parses the config, builds the experiment and runs it; returns the
    process exit status."""
    del argv
    from ft_keras import _console
    from ft_keras import callbacks

    _console.quiet_python_logging()
    from ft_keras import experiment as ft_experiment

    if not FLAGS.gin_file:
        return _fail("give at least one --gin_file.", 2)
    if FLAGS.dry_run:
        return dry_run(FLAGS.gin_file, FLAGS.gin_bindings + flag_bindings(),
                       stages)
    if not FLAGS.workdir:
        return _fail("give --workdir (or --dry_run to check the config).", 2)
    try:
        parse_config(FLAGS.gin_file, FLAGS.gin_bindings + flag_bindings())
        experiment = ft_experiment.Experiment(
            FLAGS.workdir, overwrite=FLAGS.overwrite, stages=stages
        )
    except Exception as e:  # noqa: BLE001 - every start-up error is reported.
        return _fail(e, 2)
    try:
        experiment.run()
    except (callbacks.NonFiniteLossError, ft_experiment.ConfigurationError) as e:
        return _fail(e, 1 if isinstance(e, callbacks.NonFiniteLossError) else 2)
    return 0


def dry_run(gin_files, gin_bindings, stages=None):
    """Runs every stage of a config for two steps on synthetic data in a
    temporary workdir (removed afterwards), printing what the real run
    would do; returns 0, or 2 with the one-line error a real run would hit.

    Example:

    ```python
    from ft_keras import cli
    assert cli.dry_run(["gin/distill.gin"], []) == 0
    ```
    """
    import shutil
    import tempfile

    from ft_keras import experiment as ft_experiment

    workdir = tempfile.mkdtemp(prefix="ft_keras_dry_run_")
    try:
        parse_config(gin_files, gin_bindings)
        experiment = ft_experiment.Experiment(
            workdir, stages=stages, dry_run=True
        )
        print(
            f"[ft_keras] dry run of {', '.join(gin_files)}: stages "
            f"{list(experiment.stages)}, {experiment.replicas} replica(s)",
            flush=True,
        )
        experiment.run()
    except Exception as e:  # noqa: BLE001 - the error a real run would hit.
        return _fail(e, 2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("[ft_keras] dry run: every stage built and stepped.", flush=True)
    return 0


def main(stages=None):
    """The `__main__` of `ft_keras.train` (all configured stages),
    `ft_keras.evaluate` and `ft_keras.export` (their one stage)."""
    from absl import app

    define_flags()
    app.run(lambda argv: run(argv, stages=stages))
