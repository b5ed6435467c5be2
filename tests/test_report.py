"""ft_keras.report: the table and plots of finished runs, from the files the
runner leaves."""

import os
import pathlib
import subprocess
import sys

import gin
import keras
import pytest

from ft_keras import config
from ft_keras import experiment as ft_experiment
from ft_keras import report

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs on digits, 2 epochs each, validated every epoch: FT
    with the student alone, and KD (its teacher from the first)."""
    gin.clear_config()
    root = tmp_path_factory.mktemp("runs")

    def settings(method, stages, teacher_checkpoint=None):
        return config.Settings(
            experiment=config.ExperimentConfig(
                stages=stages, seed=0, validate=True,
                teacher_checkpoint=teacher_checkpoint),
            cluster=config.ClusterConfig(),
            dataset=config.DataConfig("digits", batch_size=64),
            factor_transfer=config.FactorTransferConfig("stage3", "stage3"),
            distillation=config.DistillationConfig(method),
            training={s: config.TrainingConfig(epochs=2, learning_rate=0.05)
                      for s in ("teacher", "paraphraser", "student")},
            network={"teacher": config.NetworkConfig("wrn10_2", {}),
                     "student": config.NetworkConfig("wrn10_1", {})},
        )

    ft_experiment.Experiment(root / "ft", settings=settings(
        "ft", ("teacher", "paraphraser", "student", "baseline", "evaluate"))
    ).run()
    keras.backend.clear_session()
    ft_experiment.Experiment(root / "kd", settings=settings(
        "kd", ("teacher", "student", "evaluate"),
        teacher_checkpoint=str(root / "ft" / "teacher" / "model.keras"))
    ).run()
    return root


def test_a_run_is_read_from_its_workdir(runs):
    run = report.load_run(runs / "ft")
    assert (run["dataset"], run["teacher"], run["student"], run["method"]) == (
        "digits", "wrn10_2", "wrn10_1", "ft")
    assert set(run["evaluation"]) == {"teacher", "student", "baseline"}
    assert set(run["logs"]) == {"teacher", "paraphraser", "student", "baseline"}
    # Two epochs of training loss, and of test accuracy where validated.
    assert len(run["logs"]["student"]["loss"]) == 2
    assert len(run["logs"]["student"]["val_top1"]) == 2
    assert run["logs"]["paraphraser"].get("val_top1") is None
    assert report.load_run(runs / "kd")["method"] == "kd"


def test_the_table_has_a_row_per_network_with_the_runs_figures(runs):
    ft, kd = report.load_run(runs / "ft"), report.load_run(runs / "kd")
    table = report.markdown_table([ft, kd]).splitlines()
    assert len(table) == 2 + 3 + 2  # header, FT run's 3 networks, KD run's 2
    student = next(line for line in table if "| FT student |" in line)
    top1 = 100 * ft["evaluation"]["student"]["top1"]
    assert f"| {top1:.2f} |" in student
    wall = (ft["stages"]["student"]["wall_time_s"]
            + ft["stages"]["paraphraser"]["wall_time_s"])
    assert f"| {wall:.0f} |" in student
    assert any("| KD student |" in line for line in table)


def test_the_command_writes_the_report_and_its_plots(runs, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.report", str(runs / "ft"),
         str(runs / "kd"), f"--out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| FT student |" in result.stdout
    names = sorted(os.listdir(out))
    assert "report.md" in names and "students.png" in names
    assert "ft_student.png" in names and "kd_teacher.png" not in names
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG
    text = (out / "report.md").read_text()
    assert "![students](students.png)" in text
    assert "![ft: paraphraser](ft_paraphraser.png)" in text


def test_the_students_plot_has_each_student_and_the_alone_run(runs):
    series = report.student_curves([report.load_run(runs / "ft"),
                                    report.load_run(runs / "kd")])
    assert sorted(series) == ["ft: FT student", "ft: student alone",
                              "kd: KD student"]
    assert all(len(values) == 2 for values in series.values())


def test_a_directory_without_a_run_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.report", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"ft_keras: error: {tmp_path} holds no run of ft_keras.train")


def test_bindings_are_read_back_with_their_values(tmp_path):
    path = tmp_path / "operative_config.gin"
    path.write_text("# Parameters\ndataset.name = 'digits'\n"
                    "teacher/training.boundaries = \\\n    [82, 123]\n"
                    "experiment.seed = None\n")
    assert report.read_bindings(path) == {
        "dataset.name": "digits", "teacher/training.boundaries": [82, 123],
        "experiment.seed": None}


def test_without_matplotlib_the_table_is_written_and_says_so(
    runs, tmp_path, monkeypatch
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name == "matplotlib" else find_spec(name, *a)))
    paths = report.write_report([report.load_run(runs / "ft")], tmp_path)
    assert [os.path.basename(p) for p in paths] == ["report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "| FT student |" in text and "pip install 'ft_keras[report]'" in text
