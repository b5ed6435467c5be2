"""The command line of the deployment report, `python -m ft_keras.deployment`
(its entry point, `ft_keras/deployment/__main__.py`, runs `main`)."""

import argparse
import os
import shlex
import sys

from ft_keras.deployment.deploy import deployment
from ft_keras.deployment.table import markdown
from ft_keras.deployment.trained import OUT_DIR
from ft_keras.deployment.trained import DeploymentError
from ft_keras.deployment.trained import trained_models


def main(argv=None):
    """`python -m ft_keras.deployment`: returns the exit status (2 with one
    line on stderr when the report cannot be made)."""
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.deployment",
        description="Export and measure every trained network of a workdir.",
    )
    parser.add_argument("--workdir", required=True)
    # Unset flags keep the workdir's `deployment.*` (DeploymentConfig).
    parser.add_argument("--latency_runs", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--full_integer", action="store_const", const=True)
    args = parser.parse_args(argv)
    options = {
        name: getattr(args, name)
        for name in ("latency_runs", "batch", "threads", "full_integer")
        if getattr(args, name) is not None
    }
    try:
        trained_models(args.workdir)  # before TensorFlow loads
        from ft_keras import _console

        _console.quiet_python_logging()
        command = shlex.join(["python", "-m", "ft_keras.deployment",
                              *(sys.argv[1:] if argv is None else argv)])
        report = deployment(args.workdir, command=command, **options)
    except (DeploymentError, ImportError, ValueError, FileNotFoundError) as e:
        if os.environ.get("FT_KERAS_TRACEBACK"):
            raise
        print(f"ft_keras: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(markdown(report), end="")
    print(f"[ft_keras] deployment report: "
          f"{os.path.join(os.path.abspath(args.workdir), OUT_DIR)}")
    return 0
