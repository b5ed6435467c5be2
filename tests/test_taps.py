"""Any Keras network as teacher or student (keras.applications, a .keras
file, your own factory), its feature taps, and `python -m ft_keras.taps`."""

import argparse
import pathlib
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

from ft_keras import config
from ft_keras import experiment as ft_experiment
from ft_keras import layers
from ft_keras import models
from ft_keras import taps
from ft_keras.taps import listing

REPO = pathlib.Path(__file__).resolve().parent.parent
CIFAR = (32, 32, 3)


@pytest.fixture(autouse=True)
def clean():
    gin.clear_config()
    yield
    gin.clear_config()
    keras.backend.clear_session()


def run_taps(*args):
    return subprocess.run([sys.executable, "-m", "ft_keras.taps", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_keras_application_gives_logits_and_stage_taps():
    model = models.get("keras.applications.ResNet50", num_classes=7,
                       input_shape=CIFAR, model_name="student")
    assert model.name == "student" and model.output_shape == (None, 7)
    assert model.count_params() == keras.applications.ResNet50(
        weights=None, input_shape=CIFAR, classes=7).count_params()
    logits = model(np.random.default_rng(0).normal(size=(2,) + CIFAR))
    assert not np.allclose(np.sum(np.asarray(logits), 1), 1.0)  # no softmax
    # Each stage's output after its ReLU, as keras.applications names them.
    assert models.feature_taps(model) == [
        "conv1_relu", "conv2_block3_out", "conv3_block4_out",
        "conv4_block6_out", "conv5_block3_out"]


def test_an_unknown_application_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"keras.applications has no "
                                         r"'MobileNetV9'.*MobileNetV2"):
        models.get("keras.applications.MobileNetV9", input_shape=CIFAR)


def test_a_keras_file_gives_its_architecture_with_new_weights(tmp_path):
    saved = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    saved.save(tmp_path / "mine.keras")
    model = models.get(str(tmp_path / "mine.keras"), num_classes=10,
                       input_shape=(8, 8, 1), model_name="student")
    assert model.name == "student"
    assert [w.shape for w in model.weights] == [w.shape for w in saved.weights]
    assert not np.allclose(model.get_layer("logits").kernel,
                           saved.get_layer("logits").kernel)
    assert models.feature_taps(model) == models.feature_taps(saved)
    with pytest.raises(ValueError, match=r"gives 10 outputs; the dataset has "
                                         r"100 classes"):
        models.get(str(tmp_path / "mine.keras"), num_classes=100,
                   input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"Network file not found"):
        models.get(str(tmp_path / "absent.keras"))


def tiny(num_classes=10, input_shape=CIFAR, name=None):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x),
                       name=name or "tiny")


def test_a_registered_factory_is_a_network_name():
    models.register("test_tiny", tiny)
    assert "test_tiny" in models.available()
    model = models.get("test_tiny", num_classes=3, input_shape=(8, 8, 1),
                       model_name="student")
    assert model.name == "student" and model.output_shape == (None, 3)
    assert models.feature_taps(model) == ["features"]
    for bad in ("resnet20", "wrn16_2", "keras.applications.X"):
        with pytest.raises(ValueError, match="give a new name"):
            models.register(bad, tiny)


def resnet20_to_mobilenetv2(student_layer, **experiment):
    """CIFAR-10 settings: ResNet-20 (tap `stage3`) -> a keras.applications
    MobileNetV2 (alpha 0.35) tapped at `student_layer`, 1 epoch a stage."""
    return config.Settings(
        experiment=config.ExperimentConfig(**experiment),
        cluster=config.ClusterConfig(),
        dataset=config.DataConfig("cifar10", batch_size=8),
        distillation=config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", student_layer)]),
        training={s: config.TrainingConfig(epochs=1)
                  for s in ("teacher", "paraphraser", "student")},
        network={
            "teacher": config.NetworkConfig("resnet20", {}),
            "student": config.NetworkConfig(
                "keras.applications.MobileNetV2", {"alpha": 0.35}),
        },
    )


def test_an_application_student_distils_through_the_runner(tmp_path):
    # RepDistiller's cross-architecture shape: a ResNet teacher, a
    # MobileNetV2 student, each tapped where their maps are 8x8.
    settings = resnet20_to_mobilenetv2(
        "block_2_add", stages=("teacher", "paraphraser", "student", "evaluate"),
        seed=0)
    experiment = ft_experiment.Experiment(tmp_path / "w", settings=settings,
                                          dry_run=True)
    results = experiment.run()
    assert set(results["evaluation"]) == {"teacher", "student"}
    assert experiment.student.count_params() < 600_000


def test_a_tap_that_does_not_exist_lists_the_valid_ones(tmp_path):
    settings = resnet20_to_mobilenetv2("block_3_add", stages=("student",))
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=r"'block_3_add' is not a layer of the student.*"
                             r"\['block_1_expand_relu', 'block_2_add', "
                             r"'block_5_add', 'block_12_add', 'out_relu'\]"):
        ft_experiment.Experiment(tmp_path / "w", settings=settings,
                                 dry_run=True)


def test_the_paper_pair_is_the_last_stage_of_each():
    teacher = models.get("resnet56", input_shape=CIFAR)
    student = models.get("resnet20", input_shape=CIFAR)
    assert taps.paper_pair(teacher, student) == ("stage3", "stage3")
    assert ("stage2", "stage2") in taps.fitting_pairs(teacher, student)
    assert ("stage2", "stage3") not in taps.fitting_pairs(teacher, student)


def test_the_command_lists_taps_pairs_and_the_papers_choice():
    result = run_taps("--teacher", "wrn16_2", "--student", "wrn10_1",
                      "--dataset", "fashion_mnist")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "teacher wrn16_2 (input 28x28x1): feature taps" in out
    assert "  stage3     7x7x128" in out
    assert ("factor_transfer.teacher_layer = 'stage3', student_layer = "
            "'stage3': 7x7, teacher 128 ch -> factor 64, student 64 ch"
            "   <- the paper's choice") in out
    every = run_taps("--network", "resnet20", "--all").stdout
    assert every.count("\n") > 20 and "stage3" in every


def test_the_command_refuses_an_unknown_network_in_one_line():
    result = run_taps("--network", "resnet21")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "ft_keras: error: Unknown network name: 'resnet21'.")


def listed_shapes(out, role):
    """`{tap: "HxWxC"}` of `role`'s list in the command's output."""
    block = out.split(f"{role} ", 1)[1].split("\n")[1:]
    rows = [line.split() for line in block if line.startswith("  ")
            and not line.startswith("  factor_transfer")]
    shapes = {}
    for row in rows:
        if len(row) != 2:
            break
        shapes[row[0]] = row[1]
    return shapes


def application_shapes(name, **kwargs):
    model = getattr(keras.applications, name)(weights=None, input_shape=CIFAR,
                                              **kwargs)
    return {tap: "x".join(str(d) for d in model.get_layer(tap).output.shape[1:])
            for tap in ("block_2_add", "block_12_add", "out_relu")}


def test_network_args_reach_the_network(capsys):
    assert listing.main(["--network", "keras.applications.MobileNetV2",
                      "--network_args", "alpha=0.35"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("network keras.applications.MobileNetV2(alpha=0.35) "
                          "(input 32x32x3): feature taps")
    listed = listed_shapes(out, "network")
    narrow = application_shapes("MobileNetV2", alpha=0.35)
    # The last map (`out_relu`) keeps 1280 channels at any alpha <= 1; the
    # last inverted-residual stage's (`block_12_add`) narrows with alpha.
    assert narrow["block_12_add"] != application_shapes(
        "MobileNetV2")["block_12_add"]
    assert {tap: listed[tap] for tap in narrow} == narrow


def test_a_gin_config_gives_the_networks_and_the_configured_pair(
        tmp_path, capsys):
    path = tmp_path / "mine.gin"
    path.write_text(
        "include 'gin/data/cifar10.gin'\n"
        "teacher/network.name = 'resnet20'\n"
        "student/network.name = 'keras.applications.MobileNetV2'\n"
        "student/network.alpha = 0.35\n"
        "factor_transfer.teacher_layer = 'stage3'\n"
        "factor_transfer.student_layer = 'block_2_add'\n"
        "factor_transfer.rate = 0.25\n")
    assert listing.main([f"--gin_file={path}"]) == 0
    out = capsys.readouterr().out
    narrow = application_shapes("MobileNetV2", alpha=0.35)
    assert ("student keras.applications.MobileNetV2(alpha=0.35) "
            "(input 32x32x3)") in out
    assert listed_shapes(out, "student")["block_12_add"] == narrow["block_12_add"]
    student_channels = narrow["block_2_add"].split("x")[-1]
    assert ("factor_transfer.teacher_layer = 'stage3', student_layer = "
            f"'block_2_add': 8x8, teacher 64 ch -> factor "
            f"{layers.factor_channels(64, 0.25)}, student {student_channels} "
            "ch   <- the configured pair") in out
    assert "factor channels at rate 0.25:" in out
    assert ("(the paper's pair, 'stage3' and 'out_relu', differ in height x "
            "width)") in out
    # Flags win: --student_args over student/network.alpha, --rate over
    # factor_transfer.rate.
    gin.clear_config()
    assert listing.main([f"--gin_file={path}", "--student_args", "alpha=0.5",
                      "--rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "student keras.applications.MobileNetV2(alpha=0.5) " in out
    assert listed_shapes(out, "student")["block_12_add"] == application_shapes(
        "MobileNetV2", alpha=0.5)["block_12_add"]
    assert "factor channels at rate 0.5:" in out


def test_a_gin_binding_sets_the_dataset_and_its_image_size(capsys):
    assert listing.main([
        "--gin_bindings=dataset.name = 'cifar100'",
        "--gin_bindings=dataset.options = {'image_size': 48}",
        "--teacher", "resnet20", "--student", "wrn10_1"]) == 0
    out = capsys.readouterr().out
    assert "teacher resnet20 (input 48x48x3): feature taps" in out
    assert "  stage3     12x12x64" in out
    assert "<- the configured pair" not in out


def test_a_bad_network_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        listing.main(["--network", "resnet20", "--network_args", "alpha"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m ft_keras.taps: error: argument --network_args: a network "
        "argument must be key=value with a Python name as the key, e.g. "
        "alpha=0.35 or weights=imagenet (repeat the flag for several). "
        "Received: 'alpha'")
    with pytest.raises(SystemExit):
        listing.main(["--network", "resnet20", "--student_args", "alpha=1"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m ft_keras.taps: error: --student_args needs --student (or "
        "student/network.name in the gin config)")
    assert listing.main(["--network", "keras.applications.MobileNetV2",
                      "--network_args", "alph=0.35"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ft_keras: error: ") and "alph=0.35" in last


def test_a_network_argument_is_a_python_literal_or_the_text():
    assert listing.key_value("alpha=0.35") == ("alpha", 0.35)
    assert listing.key_value("input_shape = (64, 64, 3)") == (
        "input_shape", (64, 64, 3))
    assert listing.key_value("weights=imagenet") == ("weights", "imagenet")
    assert listing.key_value("shortcut='zero_pad'") == ("shortcut", "zero_pad")
    for bad in ("alpha", "=0.35", "alpha=", "1x=2"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            listing.key_value(bad)
