"""The deployment report (`ft_keras.deployment`): a real digits workdir
(teacher, FT student and student alone, one epoch each, evaluated, exported
and measured by the runner's `deployment` stage), each network exported and
measured in every format; then `python -m ft_keras.deployment` on it."""

import contextlib
import dataclasses
import io
import json
import os

import gin
import numpy as np
import pytest

from ft_keras import config
from ft_keras import deployment as ft_deployment
from ft_keras import experiment as ft_experiment
from ft_keras import export as ft_export
from ft_keras import workdir as ft_workdir
from ft_keras.deployment import exports
from _settings import digits_settings

STAGES = ("teacher", "paraphraser", "student", "baseline", "evaluate", "export",
          "deployment")
# The float files run the float32 graph of model.keras on the same images:
# the same top-1 but for a rare near-tie image.
FLOAT_TOLERANCE = 0.01


def settings():
    return dataclasses.replace(
        digits_settings(batch_size=64, stages=STAGES, representative_batches=1),
        deployment=config.DeploymentConfig(
            latency_runs=5, threads=1, full_integer=True),
    )


# `{export directory: representative images}` of each export of `deployed`'s
# run: the export stage's and the deployment stage's.
CALIBRATED = {}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """`(workdir, report, printed)`: the runner's workdir, the report its
    deployment stage stored in results.json, and what the run printed."""
    gin.clear_config()
    workdir = tmp_path_factory.mktemp("deployment") / "run"
    printed = io.StringIO()
    export_for_dataset = ft_export.export_for_dataset

    def recorded(student, dataset, export_dir, **options):
        CALIBRATED[os.path.relpath(export_dir, workdir)] = options.get(
            "representative")
        return export_for_dataset(student, dataset, export_dir, **options)

    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ft_export, "export_for_dataset", recorded)
        ft_experiment.Experiment(workdir, settings=settings()).run()
    report = json.loads((workdir / "results.json").read_text())["deployment"]
    return workdir, report, printed.getvalue()


def test_rows_cover_every_network_and_every_file_it_exported(deployed):
    workdir, report, _ = deployed
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for role, model in report["models"].items():
        export_dir = workdir / model["export_dir"]
        present = [key for key, name in ft_export.FILES.items()
                   if (export_dir / name).exists()]
        assert {"saved_model", "tflite_float", "tflite_int8",
                "tflite_int8_full"} <= set(present)
        assert [r["file_key"] for r in report["rows"] if r["role"] == role] \
            == present
    assert [r["model"] for r in report["rows"]][0] == "teacher"
    assert {r["model"] for r in report["rows"]} == {
        "teacher", "FT student", "student alone"}


def test_student_reuses_the_export_stage_and_the_others_get_their_own(
        deployed):
    workdir, report, _ = deployed
    assert report["models"]["student"]["export_dir"] == "export"
    assert report["models"]["teacher"]["export_dir"] == os.path.join(
        "deployment", "teacher")
    assert (workdir / "deployment" / "baseline" / "student.keras").exists()


def test_the_export_stage_and_the_deployment_calibrate_on_the_same_images(
        deployed):
    """The student's int8 files (the export stage's) and the teacher's and
    the student alone's (the deployment stage's) are calibrated on the same
    training images: `representative_batches` batches of the test pipeline,
    raw uint8."""
    stage = CALIBRATED["export"]
    assert stage.dtype == np.uint8 and stage.shape == (64, 8, 8, 1)
    assert sorted(CALIBRATED) == [os.path.join("deployment", "baseline"),
                                  os.path.join("deployment", "teacher"),
                                  "export"]
    for images in CALIBRATED.values():
        np.testing.assert_array_equal(images, stage)


def test_sizes_are_the_exported_files_sizes(deployed):
    workdir, report, _ = deployed
    for row in report["rows"]:
        path = workdir / report["models"][row["role"]]["export_dir"] / row["file"]
        assert row["size_bytes"] == ft_export.size_bytes(path) > 0


def test_teacher_speedup_is_one_in_every_format(deployed):
    _, report, _ = deployed
    teacher = [r for r in report["rows"] if r["role"] == "teacher"]
    assert teacher and all(r["speedup_vs_teacher"] == 1.0 for r in teacher)
    base = {r["file_key"]: r["latency_ms"]["median"] for r in teacher}
    for row in report["rows"]:
        assert row["speedup_vs_teacher"] == pytest.approx(
            base[row["file_key"]] / row["latency_ms"]["median"]), row


def test_full_integer_files_take_uint8_and_give_int8(deployed):
    from ai_edge_litert.interpreter import Interpreter

    workdir, report, _ = deployed
    full = [r for r in report["rows"] if r["file_key"] == "tflite_int8_full"]
    assert {r["role"] for r in full} == {"teacher", "student", "baseline"}
    for row in full:
        path = workdir / report["models"][row["role"]]["export_dir"] / row["file"]
        interpreter = Interpreter(model_path=str(path))
        assert interpreter.get_input_details()[0]["dtype"] == np.uint8
        assert interpreter.get_output_details()[0]["dtype"] == np.int8


def test_the_run_prints_the_table(deployed):
    workdir, _, printed = deployed
    assert (workdir / "deployment" / "deployment.md").read_text() in printed
    assert (f"[ft_keras] deployment report: {workdir / 'deployment'}"
            in printed)


def test_float_files_score_the_evaluate_stage_top1(deployed):
    workdir, report, _ = deployed
    evaluation = json.loads((workdir / "results.json").read_text())["evaluation"]
    floats = [r for r in report["rows"]
              if r["file_key"] in ("saved_model", "tflite_float", "onnx")]
    assert {r["role"] for r in floats} == {"teacher", "student", "baseline"}
    for row in floats:
        keras_top1 = evaluation[row["role"]]["top1"]
        assert abs(row["top1"] - keras_top1) <= FLOAT_TOLERANCE, row
        assert abs(row["top1_change"]) <= FLOAT_TOLERANCE
        assert report["models"][row["role"]]["reference"] == "keras"


def test_markdown_has_the_machine_and_one_line_per_row(deployed):
    workdir, report, _ = deployed
    text = (workdir / "deployment" / "deployment.md").read_text()
    lines = text.splitlines()
    assert report["machine"]["cpu"] in lines[0]
    assert "on 1 thread," in lines[0] and "tensorflow " in lines[0]
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(report["rows"])  # header, rule, rows
    assert table[2].startswith("| teacher | SavedModel |")


def test_results_json_and_deployment_json_hold_the_report(deployed):
    workdir, report, _ = deployed
    results = json.loads((workdir / "results.json").read_text())
    written = json.loads(
        (workdir / "deployment" / "deployment.json").read_text())
    assert results["deployment"] == written == json.loads(json.dumps(report))
    assert "evaluation" in results and "export" in results  # kept


def test_plot_is_written(deployed):
    pytest.importorskip("matplotlib")
    workdir, _, _ = deployed
    assert (workdir / "deployment" / "deployment.png").stat().st_size > 0


def _measured(files, student=None):
    return {
        "files": {
            key: {"file": ft_export.FILES[key], "size_bytes": 10, "threads": 1,
                  "top1": top1, "latency_ms": {"median": ms, "p90": ms},
                  "images_per_second": 1.0}
            for key, (top1, ms) in files.items()
        },
        "student": student,
    }


def test_change_is_against_the_saved_model_without_an_evaluate_stage():
    measured = {
        "teacher": _measured({"saved_model": (0.9, 4.0),
                              "tflite_int8": (0.85, 2.0)}),
        "student": _measured({"saved_model": (0.8, 1.0),
                              "tflite_int8": (0.7, 0.5)}),
    }
    names = {"teacher": "teacher", "student": "FT student"}
    rows = ft_deployment.build_rows(measured, names, {"teacher": 0.95})
    changes = [(r["role"], r["file_key"], r["top1_change"]) for r in rows]
    assert changes == [
        ("teacher", "saved_model", -0.05), ("teacher", "tflite_int8", -0.1),
        ("student", "saved_model", 0.0), ("student", "tflite_int8", -0.1),
    ]
    assert [r["speedup_vs_teacher"] for r in rows] == [1.0, 1.0, 4.0, 4.0]


def test_cli_fails_in_one_line_on_a_workdir_without_a_student(
        tmp_path, capsys):
    assert ft_deployment.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("ft_keras: error: ")
    assert "no trained student" in err[0] and "ft_keras.train" in err[0]
    assert not (tmp_path / "deployment").exists()


# Last: it measures the workdir again, replacing the stage's report.
def test_cli_on_the_finished_workdir_measures_the_same_files(
        deployed, capsys):
    workdir, report, _ = deployed
    assert ft_deployment.main(
        ["--workdir", str(workdir), "--latency_runs", "2"]) == 0
    again = json.loads((workdir / "results.json").read_text())["deployment"]
    assert again["latency_runs"] == 2  # the flag
    assert again["command"] == (
        f"python -m ft_keras.deployment --workdir {workdir} --latency_runs 2")
    assert report["command"] == "the deployment stage of python -m ft_keras.train"
    assert again["threads"] == 1  # the workdir's deployment.threads

    # The same files, measured again: every network's export is kept (that
    # of an unchanged model.keras, with every file asked for).
    def files(r):
        return [(row["role"], row["file_key"], row["top1"], row["size_bytes"])
                for row in r["rows"]]
    assert files(again) == files(report)
    for role in ("teacher", "baseline"):
        source = workdir / "deployment" / role / ft_deployment.SOURCE_FILE
        assert json.loads(source.read_text()) == ft_workdir.fingerprint(
            workdir / role / "model.keras")
    printed = capsys.readouterr().out
    assert (workdir / "deployment" / "deployment.md").read_text() in printed


def test_an_export_is_kept_only_for_the_model_it_came_from(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights")
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    assert not exports._exported_from(export_dir, model)  # no record
    (export_dir / ft_deployment.SOURCE_FILE).write_text(
        json.dumps(ft_workdir.fingerprint(model)))
    assert exports._exported_from(export_dir, model)
    model.write_bytes(b"weights after --overwrite and training again")
    assert not exports._exported_from(export_dir, model)
