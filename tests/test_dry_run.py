"""`--dry_run`: every stage of every config built and stepped on synthetic
data, and impossible configs refused before any work."""

import glob
import os
import pathlib
import subprocess
import sys
import tempfile

import gin
import pytest

from ft_keras import cli
from ft_keras import data

REPO = pathlib.Path(__file__).resolve().parent.parent
# Every config meant to be run: all but the shared includes.
RUNNABLE = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(str(REPO / "gin" / "**" / "*.gin"), recursive=True)
    if pathlib.Path(p).parent.name not in ("data", "recipes", "methods")
)
# Each method file, given after a config (its own taps and schedule).
METHOD_RUNS = [
    [config, os.path.relpath(p, REPO)]
    for p in sorted(glob.glob(str(REPO / "gin" / "methods" / "*.gin")))
    for config in ["gin/quickstart.gin"]
] + [["gin/distill.gin", "gin/methods/at.gin"]]


pytestmark = pytest.mark.usefixtures("clean_gin")


def dry_runs_left():
    return set(glob.glob(os.path.join(tempfile.gettempdir(),
                                      "ft_keras_dry_run_*")))


# Student network families whose export this module's dry runs have
# checked: the export stage is built and run once per family, the module of
# the builder that makes the network (he_resnet, wide_resnet, resnet,
# mobilenet, ...). It is the same code for every config of that family, the
# converters meet the same kinds of layers, and a ResNet-18's LiteRT, int8
# and ONNX conversion is half of its config's dry run.
_EXPORTED = set()


def _family(name):
    """The module of the builder of network `name` (the name itself for a
    network of another library)."""
    from ft_keras.models import registry

    factory = registry._factory(name)
    return getattr(factory[0], "__module__", name) if factory else name


def _stages_to_run(gin_files):
    """The config's stages, without `export` when an earlier config of this
    module exported a student of the same family."""
    from ft_keras import config

    cli.parse_config(gin_files, [])
    settings = config.from_gin()
    gin.clear_config()
    stages = list(settings.experiment.stages)
    family = _family(settings.network["student"].name)
    if "export" in stages:
        if family in _EXPORTED:
            stages.remove("export")
        _EXPORTED.add(family)
    return settings, stages


@pytest.mark.parametrize(
    "gin_files", [[f] for f in RUNNABLE] + METHOD_RUNS,
    ids=lambda files: "+".join(files))
def test_every_config_runs_every_stage_for_two_steps(gin_files, capsys):
    settings, stages = _stages_to_run(gin_files)
    if "student" in stages:  # it reads the student; in no config's list
        stages.append("deployment")
    before = dry_runs_left()
    assert cli.dry_run(gin_files, [f"experiment.stages = {stages!r}"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    for stage in ("teacher", "paraphraser", "student", "baseline"):
        if stage not in stages:
            continue
        if stage == "teacher" and settings.experiment.teacher_checkpoint:
            continue
        if stage == "paraphraser" and not settings.distillation.pretrains:
            assert "stage paraphraser: skipped, the terms" in out, out
            continue
        assert f"dry run: stage {stage}: " in out, out
    # The real run's figures are printed, e.g. "164 epochs x 390 steps".
    assert " epochs x " in out and "steps at global batch" in out
    if "export" in stages:
        # What it wrote, not a path that is gone when it ends.
        assert ("dry run: stage export: wrote saved_model, student.keras, "
                in out)
        assert "(in the temporary workdir, removed at the end)" in out
    assert "exported to" not in out
    if "deployment" in stages:  # it would measure on the real test split
        assert "dry run: stage deployment: skipped (it measures" in out
    assert "every stage built and stepped" in out
    assert "nan" not in out.split("[ft_keras] dry run of")[1]
    assert dry_runs_left() == before  # its temporary workdir is removed


def test_dry_run_prints_the_real_schedule_in_steps(capsys):
    assert cli.dry_run(["gin/paper/cifar10_resnet56_resnet20.gin"],
                       ["experiment.stages = ['baseline']"]) == 0
    out = capsys.readouterr().out
    # 50,000 CIFAR-10 images / 128 = 390 full batches; x0.1 at 82 and 123.
    assert ("stage baseline: 164 epochs x 390 steps at global batch 128 = "
            "63,960 steps; sgd lr 0.1 step, x0.1 at steps [31980, 47970]") in out


def test_dry_run_never_writes_the_workdir(tmp_path):
    workdir = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.train", "--gin_file=gin/quickstart.gin",
         "--gin_bindings=experiment.stages = ['baseline']", "--dry_run",
         f"--workdir={workdir}"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not workdir.exists()


def run_train(*args):
    return subprocess.run(
        [sys.executable, "-m", "ft_keras.train", *args], cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
        text=True, timeout=300)


@pytest.mark.parametrize("dry", [True, False])
def test_boundary_beyond_a_stages_epochs_exits_2_before_any_work(
    tmp_path, dry
):
    # A boundary beyond the paraphraser's epochs would crash after the
    # teacher's epochs: it is refused at start.
    result = run_train(
        "--gin_file=gin/quickstart.gin",
        "--gin_bindings=paraphraser/training.schedule = 'step'",
        "--gin_bindings=paraphraser/training.boundaries = [2, 3]",
        *(["--dry_run"] if dry else [f"--workdir={tmp_path / 'w'}"]))
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("ft_keras: error:") and "paraphraser" in error
    assert "[2, 3]" in error and "3" in error
    assert "stage teacher" not in result.stdout  # nothing trained
    assert not (tmp_path / "w" / "teacher" / "model.keras").exists()


def test_stage_that_needs_a_missing_artifact_exits_2_before_any_work(tmp_path):
    result = run_train(
        "--gin_file=gin/quickstart.gin", f"--workdir={tmp_path / 'w'}",
        "--gin_bindings=experiment.stages = ['teacher', 'student']")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "'student'" in error and "paraphraser/paraphraser.keras" in error
    assert "add 'paraphraser' to `experiment.stages`" in error
    assert "stage teacher" not in result.stdout

    # KD needs no paraphraser, so the same stages are fine for it.
    gin.clear_config()
    cli.parse_config(["gin/quickstart.gin"], [
        "experiment.stages = ['teacher', 'student']",
        "distillation.terms = [@knowledge_distillation()]"])
    from ft_keras import experiment as ft_experiment

    ft_experiment.Experiment(tmp_path / "kd", dry_run=True)  # does not raise


def test_export_without_a_student_exits_2(tmp_path):
    result = run_train(
        "--gin_file=gin/quickstart.gin", f"--workdir={tmp_path / 'w'}",
        "--gin_bindings=experiment.stages = ['teacher', 'export']")
    assert result.returncode == 2
    assert "'export'" in result.stderr and "student/model.keras" in result.stderr


def test_dry_run_error_is_the_one_line_a_real_run_gives(capsys):
    assert cli.dry_run(["gin/quickstart.gin"],
                       ["factor_transfer.teacher_layer = 'stage9'"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'stage9'" in err and "stage3" in err


def test_synthetic_dataset_has_the_real_pipelines_shapes_and_dtypes():
    ds = data.synthetic_dataset("fashion_mnist", batch_size=4, steps=2)
    batches = list(ds)
    assert len(batches) == 2
    images, labels = batches[0]
    assert images.shape == (4, 28, 28, 1) and images.dtype.name == "float32"
    assert labels.dtype.name == "int32" and labels.numpy().max() < 10
    _, soft = next(iter(data.synthetic_dataset(
        "cifar100", batch_size=3, steps=1, one_hot=True)))
    assert soft.shape == (3, 100) and soft.dtype.name == "float32"
    images, _ = next(iter(data.synthetic_dataset(
        "imagenet2012", batch_size=2, steps=1, image_size=160)))
    assert images.shape == (2, 160, 160, 3)


@pytest.mark.parametrize("name, split, size", [
    ("cifar10", "train", 50_000), ("cifar100", "test", 10_000),
    ("fashion_mnist", "train", 60_000), ("imagenet2012", "validation", 50_000),
    ("digits", "test", 360), ("digits", "validation", None),
])
def test_num_examples_without_data(name, split, size):
    assert data.num_examples(name, split) == size
