"""Export: a SavedModel, LiteRT (TFLite) and ONNX files that take raw uint8
images, checked with TensorFlow, the LiteRT runtime and ONNX Runtime."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ft_keras import export as ft_export
from ft_keras.export import litert
from ft_keras.export import onnx as ft_onnx
from ft_keras import models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 17, size=(32, 8, 8, 1)).astype(np.uint8)
    export_dir = tmp_path_factory.mktemp("export") / "out"
    paths = ft_export.export_student(student, export_dir, 16, (0.3,), (0.4,),
                                     representative_images=raw)
    return student, raw, export_dir, paths


def normalised(raw):
    return (raw.astype(np.float32) / 16 - 0.3) / 0.4


def test_export_writes_every_artifact_and_no_temporary_dir(exported):
    _, _, export_dir, paths = exported
    assert sorted(os.listdir(export_dir)) == [
        "saved_model", "student.keras", "student.onnx", "student_float.tflite",
        "student_int8.tflite"]
    assert set(paths) == {"saved_model", "tflite_float", "tflite_int8",
                          "keras", "onnx"}
    assert not os.path.exists(f"{export_dir}.tmp")


def test_saved_model_normalises_raw_images_inside_the_graph(exported):
    student, raw, export_dir, _ = exported
    served = tf.saved_model.load(str(export_dir / "saved_model"))
    out = served.signatures["serving_default"](images=tf.constant(raw))
    expected = student(normalised(raw), training=False).numpy()
    np.testing.assert_allclose(out["logits"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               tf.nn.softmax(expected).numpy(), atol=1e-6)


def test_tflite_float_matches_and_int8_stays_close(exported):
    student, raw, export_dir, _ = exported
    expected = student(normalised(raw), training=False).numpy()
    float_logits = ft_export.tflite_predict(
        export_dir / "student_float.tflite", raw)
    np.testing.assert_allclose(float_logits, expected, atol=1e-4)
    int8_logits = ft_export.tflite_predict(
        export_dir / "student_int8.tflite", raw)
    # Quantised: the same argmax on most images of this untrained network.
    agree = np.mean(int8_logits.argmax(1) == expected.argmax(1))
    assert agree >= 0.75


def test_onnx_matches_keras_in_onnx_runtime(exported):
    student, raw, export_dir, _ = exported
    expected = student(normalised(raw), training=False).numpy()
    np.testing.assert_allclose(
        ft_export.onnx_predict(export_dir / "student.onnx", raw), expected,
        atol=1e-5)


def test_the_litert_runtime_runs_the_files_not_tensorflow(exported):
    from ai_edge_litert.interpreter import Interpreter

    _, _, export_dir, _ = exported
    for name in ("student_float.tflite", "student_int8.tflite"):
        interpreter = litert.interpreter(export_dir / name)
        assert isinstance(interpreter, Interpreter)
        signature = interpreter.get_signature_list()[ft_export.SERVING]
        assert signature == {"inputs": ["images"],
                             "outputs": ["logits", "probabilities"]}


def test_serving_model_is_the_student_behind_the_normalisation(exported):
    student, raw, _, _ = exported
    served = ft_export.serving_model(student, 16, (0.3,), (0.4,))
    out = served(raw)
    expected = student(normalised(raw), training=False).numpy()
    np.testing.assert_allclose(np.asarray(out["logits"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["probabilities"]).sum(1), 1.0,
                               atol=1e-5)


def test_export_without_calibration_images_writes_no_int8_file(tmp_path):
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    paths = ft_export.export_student(student, tmp_path / "e", 16, (0.3,), (0.4,),
                                     onnx=False)
    assert "tflite_int8" not in paths and "onnx" not in paths
    assert not (tmp_path / "e" / "student_int8.tflite").exists()


def test_onnx_without_its_exporter_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ft_onnx, "onnx_available", lambda: False)
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    with pytest.raises(ImportError, match=r"pip install 'ft_keras\[export\]'"):
        ft_export.export_student(student, tmp_path / "e", 16, (0.3,), (0.4,),
                                 onnx=True)
    # By default it is left out, the rest written.
    paths = ft_export.export_student(student, tmp_path / "e", 16, (0.3,), (0.4,))
    assert "onnx" not in paths and os.path.exists(paths["tflite_float"])


def test_reexport_replaces_the_previous_directory(tmp_path):
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "stale.txt").write_text("old")
    ft_export.export_student(student, tmp_path / "e", 16, (0.3,), (0.4,),
                             onnx=False)
    assert not (tmp_path / "e" / "stale.txt").exists()
