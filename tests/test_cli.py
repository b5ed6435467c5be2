"""The command line: flags to gin bindings, one-line errors, exit codes."""

import pathlib

import gin
import pytest
from absl import flags

from ft_keras import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def parsed_flags():
    """Defines the flags on a fresh FlagValues and parses `argv`."""
    saved = cli.FLAGS

    def parse(*argv):
        cli.FLAGS = flags.FlagValues()
        cli.define_flags(cli.FLAGS)
        cli.FLAGS(["prog", *argv])
        return cli.FLAGS

    yield parse
    cli.FLAGS = saved
    gin.clear_config()


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
