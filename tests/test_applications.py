"""A keras.applications student learns on the user's own images: BatchNorm
momentum suited to the run, a guard against results at chance, and the
exported files agree with the Keras student."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from ft_keras import callbacks
from ft_keras import config
from ft_keras import experiment as ft_experiment
from ft_keras import export
from ft_keras import models

MOBILENET = "keras.applications.MobileNetV2"
SIZE = {"image_size": 32}  # MobileNetV2 takes 32x32 at least


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory):
    """scikit-learn's digits as a folder of PNGs, every fifth image to
    test/: 1,437 train / 360 test, 10 classes (the README's folder)."""
    root = tmp_path_factory.mktemp("digits_png")
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / ("test" if i % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image[..., None] * 255 / 16).round().astype(np.uint8)
        tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(pixels))
    return f"image_folder:{root}"


def test_suited_momentum_forgets_the_start_within_the_run():
    for steps in (110, 1_000, 63_960):
        momentum = models.suited_bn_momentum(steps)
        assert momentum ** steps <= math.exp(-10) * 1.0001
    assert models.suited_bn_momentum(110) == pytest.approx(1 - 10 / 110)
    # Never below our networks' 0.9, which so stay as they are.
    assert models.suited_bn_momentum(30) == 0.9
    with pytest.raises(ValueError, match=r"Received: steps=0"):
        models.suited_bn_momentum(0)


def test_get_sets_every_batch_norm_momentum_and_it_is_saved(tmp_path):
    model = models.get(MOBILENET, num_classes=3, input_shape=(32, 32, 3),
                       alpha=0.35, bn_momentum=0.95)
    norms = models.bn_momentum.batch_norm_layers(model)
    assert len(norms) == 52 and {n.momentum for n in norms} == {0.95}
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert {n.momentum for n in models.bn_momentum.batch_norm_layers(again)} \
        == {0.95}
    with pytest.raises(ValueError, match=r"Received: bn_momentum=1.5"):
        models.get("resnet20", bn_momentum=1.5)


def test_a_cap_lowers_only_momenta_above_it():
    model = models.get(MOBILENET, num_classes=3, input_shape=(32, 32, 3),
                       alpha=0.35)
    assert models.set_bn_momentum(model, 0.97, at_most=True) == {0.999: 52}
    ours = models.get("resnet20", num_classes=3)
    assert models.set_bn_momentum(ours, 0.97, at_most=True) == {}


def test_chance_warning_names_the_causes_only_for_a_trained_network():
    line = callbacks.chance_warning("student alone", 0.1056, 0.8658, 10)
    assert line.startswith("[ft_keras] warning: the student alone scores "
                           "10.56% top-1 on the test split")
    assert "network.bn_momentum" in line and "normalised" in line
    assert callbacks.chance_warning("s", 0.8250, 0.8729, 10) is None
    assert callbacks.chance_warning("s", 0.11, 0.30, 10) is None  # not trained
    assert callbacks.chance_warning("s", 0.11, None, 10) is None


def application_settings(root, stages, student=None, student_epochs=5,
                         **experiment):
    """A ResNet-20 teacher (3 epochs) and a MobileNetV2 (alpha 0.35)
    student (5 epochs, 110 steps) on the digits PNGs at 32x32."""
    training = dict(learning_rate=0.05, schedule="cosine")
    return config.Settings(
        experiment=config.ExperimentConfig(
            stages=stages, seed=0, representative_batches=2, **experiment),
        cluster=config.ClusterConfig(),
        dataset=config.DataConfig(root, batch_size=64, eval_batch_size=120,
                                  options=dict(SIZE)),
        distillation=config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", "block_2_add")]),
        training={
            "teacher": config.TrainingConfig(epochs=3, **training),
            "paraphraser": config.TrainingConfig(epochs=1, schedule="constant",
                                                 learning_rate=0.05),
            "student": config.TrainingConfig(epochs=student_epochs,
                                             **training),
        },
        network={
            "teacher": config.NetworkConfig("resnet20", {}),
            "student": config.NetworkConfig(
                MOBILENET, {"alpha": 0.35, **(student or {})}),
        },
    )


def test_an_application_student_distils_well_above_chance_and_exports(
        digits_png, tmp_path, capsys):
    workdir = tmp_path / "w"
    settings = application_settings(
        digits_png,
        ("teacher", "paraphraser", "student", "evaluate", "export"))
    results = ft_experiment.Experiment(workdir, settings=settings).run()
    out = capsys.readouterr().out
    assert ("[ft_keras] student: BatchNormalization momentum 0.9091 (52 at "
            "0.999 before), so that its moving statistics follow a 110-step "
            "stage") in out
    assert results["evaluation"]["student"]["top1"] > 0.6  # chance: 0.1
    assert results["warnings"] == {}
    # The shipped files agree with the Keras student on raw test images.
    student = keras.models.load_model(workdir / "student" / "model.keras")
    raw = export.representative_images(digits_png, count=40,
                                               split="test", **SIZE)
    pixel_max, mean, std = export.normalization(digits_png)
    x = (raw / np.float32(pixel_max) - np.float32(mean)) / np.float32(std)
    expected = student.predict(x.astype(np.float32), verbose=0)
    served = tf.saved_model.load(str(workdir / "export" / "saved_model"))
    logits = served.signatures["serving_default"](images=tf.constant(raw))
    np.testing.assert_allclose(logits["logits"], expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        export.tflite_predict(workdir / "export" / "student_float.tflite", raw),
        expected, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(
        export.onnx_predict(workdir / "export" / "student.onnx", raw),
        expected, atol=1e-3, rtol=1e-3)
    int8 = export.tflite_predict(workdir / "export" / "student_int8.tflite", raw)
    assert np.mean(int8.argmax(1) == expected.argmax(1)) >= 0.9

    # The same student alone with keras.applications' momentum, set on
    # purpose: it tests at chance, and the run says so instead of reporting
    # a normal result (2 epochs: its statistics move less still).
    alone = ft_experiment.Experiment(
        tmp_path / "alone",
        settings=application_settings(
            digits_png, ("baseline", "evaluate"), {"bn_momentum": 0.999},
            student_epochs=2,
            teacher_checkpoint=str(workdir / "teacher" / "model.keras"),
            validate=True))
    results = alone.run()
    out = capsys.readouterr().out
    # While it trains, on the validation split (ChanceAccuracyWarning) ...
    assert ("[ft_keras] warning: the baseline stage's network scores "
            in out and "on the validation split, chance for 10 classes" in out)
    # ... and when evaluated, on the test split.
    assert set(results["warnings"]) == {"baseline"}
    assert "student alone:" in out and "<- at chance: see the warning" in out
    assert results["warnings"]["baseline"] in out
    assert "on the test split, chance for 10 classes" in out
