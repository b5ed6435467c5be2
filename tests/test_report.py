"""ft_keras.report: the table and plots of finished runs, from the files the
runner leaves."""

import json
import os
import pathlib
import subprocess
import sys

import gin
import keras
import pytest

from ft_keras import config
from ft_keras import term_configs
from ft_keras import experiment as ft_experiment
from ft_keras import report

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
TOP5_NOTE = "top-5 is not computed for datasets of 5 classes or fewer"


def table_rows(table):
    """`{network: {column: cell}}` of a run's rows in a Markdown table."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row)) for row in rows]


def stage_json(workdir, stage):
    return json.loads((workdir / stage / "stage.json").read_text())


def write_run(workdir, evaluation, stages, dataset="five_flowers"):
    """A finished FT run's files as the runner leaves them, with the given
    `results.json` evaluation and `{stage: stage.json}`."""
    workdir.mkdir()
    (workdir / "operative_config.gin").write_text(
        f"dataset.name = '{dataset}'\ndistillation.method = 'ft'\n"
        "teacher/network.name = 'wrn16_2'\nstudent/network.name = 'wrn10_1'\n")
    (workdir / "results.json").write_text(json.dumps({"evaluation": evaluation}))
    for stage, record in stages.items():
        (workdir / stage).mkdir()
        (workdir / stage / "stage.json").write_text(json.dumps(record))
    return workdir


def timing(wall, speed, epochs_run=10, epochs=10):
    return {"wall_time_s": wall, "images_per_second": speed,
            "epochs_run": epochs_run, "epochs": epochs}


@pytest.fixture
def five_classes(tmp_path):
    """An FT run on 5 classes: top-1 only, and round stage timings."""
    return write_run(
        tmp_path / "five",
        {role: {"top1": 0.5} for role in ("teacher", "baseline", "student")},
        {"teacher": timing(300.0, 900.0), "paraphraser": timing(40.0, 2000.0),
         "student": timing(100.0, 1234.0), "baseline": timing(60.0, 3000.0)})


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
            distillation=method,
            training={s: config.TrainingConfig(epochs=2, learning_rate=0.05)
                      for s in ("teacher", "paraphraser", "student")},
            network={"teacher": config.NetworkConfig("wrn10_2", {}),
                     "student": config.NetworkConfig("wrn10_1", {})},
        )

    ft_experiment.Experiment(root / "ft", settings=settings(
        config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", "stage3")]), ("teacher", "paraphraser", "student", "baseline", "evaluate"))
    ).run()
    keras.backend.clear_session()
    ft_experiment.Experiment(root / "kd", settings=settings(
        config.DistillationConfig(
            terms=[term_configs.knowledge_distillation(weight=0.9)],
            student_loss_weight=0.1), ("teacher", "student", "evaluate"),
        teacher_checkpoint=str(root / "ft" / "teacher" / "model.keras"))
    ).run()
    return root


def test_a_run_is_read_from_its_workdir(runs):
    run = report.load_run(runs / "ft")
    assert (run["dataset"], run["teacher"], run["student"], run["label"]) == (
        "digits", "wrn10_2", "wrn10_1", "FT")
    assert set(run["evaluation"]) == {"teacher", "student", "baseline"}
    assert set(run["logs"]) == {"teacher", "paraphraser", "student", "baseline"}
    # Two epochs of training loss, and of test accuracy where validated.
    assert len(run["logs"]["student"]["loss"]) == 2
    assert len(run["logs"]["student"]["val_top1"]) == 2
    assert run["logs"]["paraphraser"].get("val_top1") is None
    assert report.load_run(runs / "kd")["label"] == "KD"


def test_the_table_has_a_row_per_network_with_the_runs_figures(runs):
    ft, kd = report.load_run(runs / "ft"), report.load_run(runs / "kd")
    rows = table_rows(report.markdown_table([ft, kd]))
    assert [row["network"] for row in rows] == [
        "teacher", "student alone", "FT student", "teacher", "KD student"]
    student = rows[2]
    top1 = 100 * ft["evaluation"]["student"]["top1"]
    assert student["test top-1 (%)"] == f"{top1:.2f}"
    # Each time column is the stage.json of the stage it names.
    alone, paraphraser = (stage_json(runs / "ft", s)
                          for s in ("student", "paraphraser"))
    assert student["own stage wall time (s)"] == f"{alone['wall_time_s']:.0f}"
    assert student["own stage images/s"] == (
        f"{alone['images_per_second']:,.0f}")
    assert student["paraphraser stage wall time (s)"] == (
        f"{paraphraser['wall_time_s']:.0f}")
    assert rows[4]["paraphraser stage wall time (s)"] == "-"  # KD has none
    # KD's teacher came from FT's checkpoint: loaded, not timed.
    assert rows[3]["own stage wall time (s)"] == "loaded, not trained here"


def test_an_ft_students_times_are_its_stage_and_its_paraphrasers_apart(
    five_classes
):
    rows = table_rows(report.markdown_table([report.load_run(five_classes)]))
    student = next(row for row in rows if row["network"] == "FT student")
    # 100 s for the student stage and 40 s for the paraphraser, not 140 s.
    assert student["own stage wall time (s)"] == "100"
    assert student["own stage images/s"] == "1,234"
    assert student["paraphraser stage wall time (s)"] == "40"
    assert rows[0]["own stage wall time (s)"] == "300"
    assert rows[0]["paraphraser stage wall time (s)"] == "-"


def test_without_any_top5_the_column_is_left_out_and_explained(five_classes):
    table = report.markdown_table([report.load_run(five_classes)])
    rows = table_rows(table)
    assert "test top-5 (%)" not in rows[0]
    assert [row["test top-1 (%)"] for row in rows] == ["50.00"] * 3
    lines = table.splitlines()
    assert lines[lines.index("") + 1].startswith(
        f"No test top-5 column: {TOP5_NOTE}")


def test_a_run_without_top5_beside_one_with_shows_na_with_a_note(
    runs, five_classes
):
    table = report.markdown_table(
        [report.load_run(runs / "ft"), report.load_run(five_classes)])
    rows = table_rows(table)
    assert [row["test top-5 (%)"] == "n/a" for row in rows] == [False] * 3 + [
        True] * 3
    lines = table.splitlines()
    assert lines[lines.index("") + 1].startswith(
        f"n/a in test top-5 (%): {TOP5_NOTE}")


def test_a_resumed_stage_says_its_wall_time_covers_the_last_call(tmp_path):
    workdir = write_run(tmp_path / "resumed", {"student": {"top1": 0.5}}, {
        "paraphraser": timing(40.0, 2000.0),
        "student": timing(30.0, 1000.0, epochs_run=3)})
    rows = table_rows(report.markdown_table([report.load_run(workdir)]))
    assert rows[0]["own stage wall time (s)"] == (
        "30 (last 3 of 10 epochs: resumed)")
    assert rows[0]["own stage images/s"] == "1,000"


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
