"""The command line: flags to gin bindings, one-line errors, exit codes."""

import pathlib

import gin
import pytest

from ft_keras import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_strategy_and_cluster_flags_become_gin_bindings(parsed_flags):
    parsed_flags("--strategy=mirrored", "--cluster=slurm")
    assert cli.flag_bindings() == ["experiment.strategy = 'mirrored'",
                                   "cluster.resolver = 'slurm'"]
    parsed_flags()
    assert cli.flag_bindings() == []


def test_errors_are_one_line_with_the_exit_code(capsys):
    assert cli._fail(ValueError("bad\n   value"), 2) == 2
    assert capsys.readouterr().err == "ft_keras: error: bad value\n"


def test_missing_gin_file_is_named(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="nowhere.gin"):
        cli.parse_config(["gin/nowhere.gin"], [])


def test_run_without_gin_file_or_workdir_exits_2(parsed_flags, capsys):
    parsed_flags()
    assert cli.run([]) == 2
    assert "--gin_file" in capsys.readouterr().err
    parsed_flags("--gin_file=gin/quickstart.gin")
    assert cli.run([]) == 2
    assert "--workdir" in capsys.readouterr().err


def test_includes_resolve_from_the_checkout_in_any_directory(
    monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    cli.parse_config([str(REPO / "gin" / "quickstart.gin")], [])
    from ft_keras import config

    assert config.dataset().name == "digits"
    gin.clear_config()


# What a line of the tools' console may be: ours, or Keras' progress.
CONSOLE_LINE = (
    r"^(\[ft_keras\] .*"
    r"|Epoch \d+/\d+"
    r"|\d+/\d+ - \d+m?s - \d+m?s/step - .*)$"
)


def quiet_env():
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    return env


def test_the_quickstart_prints_only_our_lines_and_keras_progress(tmp_path):
    import re
    import subprocess
    import sys

    # Every stage, export included, shortened.
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.train",
         "--gin_file=gin/quickstart.gin", f"--workdir={tmp_path / 'w'}",
         "--gin_bindings=training.epochs = 2",
         "--gin_bindings=paraphraser/training.epochs = 1"],
        cwd=REPO, env=quiet_env(), capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    other = [line for line in lines if not re.match(CONSOLE_LINE, line)]
    assert other == []
    assert "[ft_keras] stage paraphraser: 1 epochs" in lines
    assert any(line.startswith("[ft_keras] exported to ") for line in lines)


def test_verbosity_brings_tensorflow_logs_back(tmp_path):
    import re
    import subprocess
    import sys

    # From another directory: gin's include probe logs no error either.
    args = [sys.executable, "-m", "ft_keras.train",
            f"--gin_file={REPO / 'gin' / 'quickstart.gin'}", "--dry_run",
            "--gin_bindings=experiment.stages = ['baseline']"]
    quiet = subprocess.run(args, cwd=tmp_path, env=quiet_env(),
                           capture_output=True, text=True, timeout=600)
    loud = subprocess.run(args + ["--verbosity=0"], cwd=tmp_path,
                          env=quiet_env(), capture_output=True, text=True,
                          timeout=600)
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert [line for line in lines if not re.match(CONSOLE_LINE, line)] == []
    # TensorFlow's C++ start-up lines (oneDNN, CPU features or CUDA).
    assert "I0000" in loud.stderr
