"""KerasHub networks by name (`ft_keras.models.keras_hub`): built from their
backbone's arguments or from a preset directory made here (never a
download), tapped by the taps finder, and trained by the runner as teacher
and student with FT, KD and AT."""

import json
import pathlib
import subprocess
import sys
import zipfile

import gin
import keras
import numpy as np
import pytest

from ft_keras import cli
from ft_keras import models

keras_hub = pytest.importorskip("keras_hub")

REPO = pathlib.Path(__file__).resolve().parent.parent
# A two-stack ResNet (KerasHub's ResNetBackbone arguments) for 8x8 digits.
RESNET = dict(input_conv_filters=[64], input_conv_kernel_sizes=[3],
              stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
              stackwise_num_strides=[1, 2], block_type="basic_block")
TAPS = ["conv1_relu", "stack0_block0_out", "stack1_block0_out"]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A KerasHub ResNet classifier for 8x8x1 images and 10 classes, saved
    as a preset directory as `save_to_preset` writes one; and the
    classifier."""
    backbone = keras_hub.models.ResNetBackbone(image_shape=(8, 8, 1), **RESNET)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=10, activation="softmax")
    path = tmp_path_factory.mktemp("keras_hub") / "resnet_preset"
    classifier.save_to_preset(str(path))
    return str(path), classifier


def images(n=4):
    return np.random.default_rng(0).normal(size=(n, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize("name", ["keras_hub.ResNetImageClassifier",
                                  "keras_hub.ResNetBackbone"])
def test_built_from_arguments_a_flat_network_with_taps_that_reloads(
        name, tmp_path):
    model = models.get(name, num_classes=7, input_shape=(8, 8, 1),
                       model_name="student", **RESNET)
    assert model.name == "student" and model.output_shape == (None, 7)
    # The backbone's own layers, not one nested KerasHub layer: tappable.
    assert models.feature_taps(model) == TAPS
    assert not any(isinstance(layer, keras_hub.models.Backbone)
                   for layer in model.layers)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as saved:
        # Keras' own layers: the file loads without KerasHub.
        assert b"keras_hub" not in saved.read("config.json")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(images(), verbose=0),
                                  model.predict(images(), verbose=0))


def test_a_preset_directory_gives_its_weights_and_logits(preset):
    path, classifier = preset
    model = models.get("keras_hub.ResNetImageClassifier", num_classes=10,
                       input_shape=(8, 8, 1), preset=path)
    # The preset's head without its softmax: the same predictions.
    np.testing.assert_allclose(
        keras.ops.softmax(model.predict(images(), verbose=0)),
        classifier.predict(images(), verbose=0), rtol=1e-5, atol=1e-6)
    # Another class count: the preset's backbone under a new head.
    other = models.get("keras_hub.ResNetImageClassifier", num_classes=3,
                       input_shape=(8, 8, 1), preset=path)
    assert other.output_shape == (None, 3)
    backbone = keras.Model(other.input, other.get_layer(TAPS[-1]).output)
    np.testing.assert_allclose(
        backbone.predict(images(), verbose=0),
        classifier.backbone.predict(images(), verbose=0), rtol=1e-5,
        atol=1e-6)


def test_the_extra_pins_the_keras_hub_this_module_was_checked_with():
    from ft_keras.models import keras_hub as ours

    setup = (REPO / "setup.py").read_text()
    pin = f'"keras-hub=={ours.KERAS_HUB_VERSION}"'
    assert setup.count(pin) == 2  # the `keras-hub` extra and the tests'
    assert keras_hub.__version__ == ours.KERAS_HUB_VERSION


def test_wrong_names_and_arguments_fail_in_one_line(preset, monkeypatch):
    with pytest.raises(ValueError, match=r"keras_hub.models has no image "
                       r"classifier or backbone 'Nope'.*ResNetImageClassifier"):
        models.get("keras_hub.Nope", num_classes=3)
    with pytest.raises(ValueError, match=r"takes no 'dropout_rate'.*"
                       r"'stackwise_num_filters'.*Received: dropout_rate=0.5"):
        models.get("keras_hub.ResNetBackbone", num_classes=3, dropout_rate=0.5)
    with pytest.raises(ValueError, match=r"preset .* pass none besides"):
        models.get("keras_hub.ResNetBackbone", num_classes=3,
                   preset=preset[0], block_type="basic_block")
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'ft_keras\[keras-hub\]'"):
        models.get("keras_hub.ResNetBackbone", num_classes=3, **RESNET)


def test_the_taps_finder_lists_a_preset_networks_maps(preset):
    out = subprocess.run(
        [sys.executable, "-m", "ft_keras.taps", "--network",
         "keras_hub.ResNetImageClassifier", "--network_args",
         f"preset={preset[0]!r}", "--input_shape", "8,8,1",
         "--num_classes", "10"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    for tap in TAPS:
        assert tap in out.stdout, out.stdout


def _network(role, kind, preset_path):
    """Bindings of `role`'s network: the preset classifier, a classifier
    built from arguments, or a backbone (with a new head) from arguments."""
    if kind == "preset":
        return [f"{role}/network.name = 'keras_hub.ResNetImageClassifier'",
                f"{role}/network.preset = {preset_path!r}"]
    name = {"classifier": "ResNetImageClassifier", "backbone": "ResNetBackbone"}
    return [f"{role}/network.name = 'keras_hub.{name[kind]}'",
            *(f"{role}/network.{k} = {v!r}" for k, v in RESNET.items())]


def _bindings(preset_path, teacher="preset", student="backbone"):
    """The quickstart with KerasHub networks, tapped at their last stacks."""
    return [
        *_network("teacher", teacher, preset_path),
        *_network("student", student, preset_path),
        "network.weight_decay = 0.0",  # a penalty of our own networks only
        "factor_transfer.teacher_layer = 'stack1_block0_out'",
        "factor_transfer.student_layer = 'stack1_block0_out'",
        "attention_transfer.teacher_layers = ['stack0_block0_out', 'stack1_block0_out']",
        "attention_transfer.student_layers = ['stack0_block0_out', 'stack1_block0_out']",
    ]


@pytest.mark.parametrize("method, teacher, student", [
    ("factor_transfer", "preset", "backbone"),
    ("knowledge_distillation", "classifier", "preset"),
    ("attention_transfer", "preset", "classifier"),
])
def test_the_runner_dry_runs_keras_hub_teacher_and_student(
        preset, method, teacher, student, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    gin.clear_config()
    try:
        code = cli.dry_run(
            ["gin/quickstart.gin"],
            _bindings(preset[0], teacher, student) + [
                f"distillation.terms = [@{method}()]",
                "experiment.stages = ['teacher', 'paraphraser', 'student', "
                "'evaluate']"])
    finally:
        gin.clear_config()
        keras.backend.clear_session()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "dry run: stage student: " in captured.out
    assert ("dry run: stage paraphraser: " in captured.out) == (
        method == "factor_transfer")
    assert "every stage built and stepped" in captured.out


def test_a_short_ft_run_trains_a_keras_hub_student_from_a_keras_hub_teacher(
        preset, tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.train", "--gin_file=gin/quickstart.gin",
         f"--workdir={workdir}",
         *(f"--gin_bindings={b}" for b in _bindings(preset[0])),
         "--gin_bindings=training.epochs = 2",
         "--gin_bindings=paraphraser/training.epochs = 1",
         "--gin_bindings=experiment.stages = ['teacher', 'paraphraser', "
         "'student', 'evaluate']"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    evaluation = results["evaluation"]
    assert set(evaluation) >= {"teacher", "student"}
    # Trained: well above chance (0.1) on the 360 test digits.
    assert evaluation["teacher"]["top1"] > 0.5, evaluation
    assert evaluation["student"]["top1"] > 0.3, evaluation
    student = keras.models.load_model(workdir / "student" / "model.keras")
    assert models.feature_taps(student) == TAPS
