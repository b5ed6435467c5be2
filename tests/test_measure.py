"""Measuring the exported files (`ft_keras.export.measure`): a digits
student trained for 2 epochs, exported with every file (full-integer int8
too), run in TensorFlow, LiteRT and ONNX Runtime on the real test split."""

import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import pytest

from ft_keras import data
from ft_keras import export as ft_export
from ft_keras.export import measure as ft_measure
from ft_keras import models

# The float files run the same float32 graph: the same argmax on all but a
# rare near-tie image.
FLOAT_AGREEMENT = 0.99
# int8 quantization moves the top-1 accuracy by at most this much.
INT8_TOLERANCE = 0.03


class _RecordingClock:
    """`time` for `ft_keras.export.measure`: the real clock, whose
    `perf_counter` readings are kept (`_seconds` reads it before and after
    each timed run)."""

    def __init__(self):
        self.readings = []

    def perf_counter(self):
        self.readings.append(time.perf_counter())
        return self.readings[-1]

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(scope="module")
def measurement(tmp_path_factory):
    keras.utils.set_random_seed(0)
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    student.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = data.build_dataset("digits", "train", batch_size=64, training=True,
                               seed=0)
    student.fit(train, epochs=2, verbose=0, shuffle=False)  # shuffled above
    export_dir = tmp_path_factory.mktemp("measure") / "export"
    ft_export.export_for_dataset(student, "digits", export_dir, onnx=True,
                                 full_integer=True)
    clock = _RecordingClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ft_measure, "time", clock)
        report = ft_export.measure_export(export_dir, "digits",
                                          latency_runs=10, batch=32, threads=2)
    images, labels = ft_export.read_test_split("digits")
    pixel_max, mean, std = ft_export.normalization("digits")
    normalised = (images / pixel_max - np.asarray(mean)) / np.asarray(std)
    keras_predictions = np.asarray(
        student.predict(normalised.astype(np.float32), verbose=0)
    ).argmax(-1)
    return ((student, export_dir, report, images, labels, keras_predictions),
            clock.readings)


@pytest.fixture(scope="module")
def measured(measurement):
    return measurement[0]


@pytest.fixture(scope="module")
def clock_readings(measurement):
    return measurement[1]



def test_count_macs_of_a_conv_and_a_dense_is_the_hand_count():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    assert ft_export.count_macs(model) == 8 * 8 * 3 * 3 * 1 * 4 + 4 * 10


def test_count_macs_of_depthwise_and_transposed_convs_is_the_hand_count():
    inputs = keras.Input((8, 8, 2))
    # Strided depthwise: 4x4 outputs, each 3*3 * 2 channels * multiplier 2.
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same",
                                     depth_multiplier=2)(inputs)
    # Transposed: each of the 4x4 input pixels scatters 3*3 * 4 in * 3 out.
    x = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same")(x)
    model = keras.Model(inputs, x)
    assert ft_export.count_macs(model) == 16 * 9 * 2 * 2 + 16 * 9 * 4 * 3


def test_count_macs_counts_a_folded_conv_as_the_conv_it_folds():
    network = models.get("resnet20", input_shape=(8, 8, 3))
    folded = models.fold_batch_norm(network)
    assert ft_export.count_macs(folded) == ft_export.count_macs(network) > 0


def test_test_split_is_representative_images_in_the_same_order(measured):
    *_, images, labels, _ = measured
    assert len(labels) == data.DIGITS_TEST_SIZE == len(images)
    same = ft_export.representative_images("digits", count=len(labels),
                                           split="test")
    np.testing.assert_array_equal(images, same)
    labels_again = np.concatenate([
        np.asarray(y) for _, y in data.build_dataset(
            "digits", "test", batch_size=100, training=False)
    ])
    np.testing.assert_array_equal(labels, labels_again)


def test_every_file_is_measured_on_the_whole_test_split(measured):
    _, _, report, _, labels, _ = measured
    assert list(report["files"]) == list(ft_export.FILES)
    assert report["test_images"] == len(labels)
    json.loads(json.dumps(report))  # JSON-serialisable as it is


def _predictions(export_dir, key, images):
    path = os.path.join(export_dir, ft_export.FILES[key])
    if key == "onnx":
        return ft_export.onnx_predict(path, images).argmax(-1)
    if key == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures[ft_export.SERVING]
        return serve(images=tf.constant(images))["logits"].numpy().argmax(-1)
    return ft_export.tflite_predict(path, images).argmax(-1)


def test_float_files_predict_as_the_keras_student(measured):
    _, export_dir, report, images, labels, keras_predictions = measured
    keras_top1 = np.mean(keras_predictions == labels)
    assert keras_top1 > 0.5  # trained: the comparison means something
    for key in ("saved_model", "tflite_float", "onnx"):
        agree = np.mean(_predictions(export_dir, key, images) == keras_predictions)
        assert agree >= FLOAT_AGREEMENT, (key, agree)
        top1 = report["files"][key]["top1"]
        assert abs(top1 - keras_top1) <= 1 - FLOAT_AGREEMENT, (key, top1)


def test_int8_files_stay_within_three_points_of_the_keras_student(measured):
    _, export_dir, report, images, labels, keras_predictions = measured
    keras_top1 = np.mean(keras_predictions == labels)
    for key in ("tflite_int8", "tflite_int8_full"):
        top1 = report["files"][key]["top1"]
        assert abs(top1 - keras_top1) <= INT8_TOLERANCE, (key, top1, keras_top1)
        # The batched measurement is the image-by-image `tflite_predict`.
        single = np.mean(_predictions(export_dir, key, images) == labels)
        assert abs(single - top1) <= 1 / len(labels), (key, single, top1)


def test_sizes_are_the_files_sizes(measured):
    _, export_dir, report, *_ = measured
    for key, entry in report["files"].items():
        path = os.path.join(export_dir, entry["file"])
        if key == "saved_model":
            expected = sum(
                os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(path) for name in names)
        else:
            expected = os.path.getsize(path)
        assert entry["size_bytes"] == expected > 0, key
    assert report["student"]["size_bytes"] == os.path.getsize(
        os.path.join(export_dir, "student.keras"))


def test_latency_and_throughput_are_the_timed_runs(measured, clock_readings):
    """Each file, in the report's order, is timed on 10 batch-1 runs (the
    latency) then max(3, 10 // 5) = 3 runs of a batch of 32 (the throughput),
    each run between two clock readings: the report's numbers are exactly
    those of these readings."""
    report = measured[2]
    assert report["batch"] == 32 and report["latency_runs"] == 10
    files = report["files"]
    per_file = 2 * (10 + 3)
    assert len(clock_readings) == per_file * len(files)
    for i, (key, entry) in enumerate(files.items()):
        readings = np.asarray(clock_readings[i * per_file:(i + 1) * per_file])
        seconds = readings[1::2] - readings[0::2]
        assert np.all(seconds > 0), key
        latency_ms = seconds[:10] * 1000
        latency = entry["latency_ms"]
        assert latency["median"] == pytest.approx(np.median(latency_ms),
                                                  rel=1e-12), key
        assert latency["p90"] == pytest.approx(np.percentile(latency_ms, 90),
                                               rel=1e-12), key
        assert latency["p90"] >= latency["median"] > 0, key
        assert entry["images_per_second"] == pytest.approx(
            32 / np.median(seconds[10:]), rel=1e-12), key


def test_report_names_the_student_machine_runtimes_and_threads(measured):
    student, _, report, *_ = measured
    assert report["student"]["params"] == student.count_params()
    assert report["student"]["macs"] == ft_export.count_macs(student) > 0
    assert set(report["machine"]["flags"]) >= {"amx", "avx512_bf16", "avx2"}
    assert report["machine"]["cores"] == os.cpu_count()
    assert all(report["runtimes"][name] for name in
               ("tensorflow", "ai_edge_litert", "onnxruntime"))
    assert report["threads"] == 2
    assert report["files"]["tflite_int8_full"]["threads"] == 2


def test_full_integer_file_takes_uint8_and_returns_int8(measured):
    from ai_edge_litert.interpreter import Interpreter

    path = os.path.join(measured[1], "student_int8_full.tflite")
    runner = Interpreter(model_path=path).get_signature_runner(ft_export.SERVING)
    assert runner.get_input_details()["images"]["dtype"] == np.uint8
    outputs = runner.get_output_details()
    assert {outputs[name]["dtype"] for name in ("logits", "probabilities")} == {
        np.int8}
    # Dequantized by tflite_predict: float logits.
    assert ft_export.tflite_predict(path, measured[3][:2]).dtype == np.float32


def test_full_integer_needs_representative_images(tmp_path):
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="representative_images"):
        ft_export.export_student(student, tmp_path / "e", 16, (0.3,), (0.4,),
                                 onnx=False, full_integer=True)


def test_an_op_without_an_int8_kernel_is_one_clear_line_and_changes_nothing(
        tmp_path):
    previous = tmp_path / "e"
    previous.mkdir()
    (previous / "student.keras").write_text("the last export")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(keras.ops.floor)(x)  # no int8 FLOOR kernel
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    raw = np.random.default_rng(0).integers(0, 17, (8, 8, 8, 1)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"^[^\n]*Floor[^\n]*full_integer=False"):
        ft_export.export_student(model, tmp_path / "e", 16, (0.3,), (0.4,),
                                 representative_images=raw, onnx=False,
                                 full_integer=True)
    # The last export is kept, and no half-written one is left.
    assert (previous / "student.keras").read_text() == "the last export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_missing_runtime_names_the_extra_to_install(measured, tmp_path,
                                                      monkeypatch):
    shutil.copy(os.path.join(measured[1], "student.onnx"), tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError,
                       match=r"^[^\n]*pip install 'ft_keras\[export\]'\.$"):
        ft_export.measure_export(tmp_path, "digits")


def test_an_empty_directory_says_how_to_write_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_for_dataset"):
        ft_export.measure_export(tmp_path, "digits")
