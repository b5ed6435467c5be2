"""Exports a trained student for deployment.

`export_student` writes, into one directory:

- `saved_model/`: a SavedModel whose `serving_default` signature takes raw
  uint8 images `(N, H, W, C)` (the dataset's pixel scale) and returns
  `logits` and `probabilities`; the normalisation runs inside the graph.
- `student_float.tflite`: the same signature as a float LiteRT (TFLite)
  model.
- `student_int8.tflite`: int8 post-training quantization, calibrated on a
  representative sample of training images (float fallback where an op has
  no int8 kernel; input stays raw uint8).
- `student.onnx`: the same model in ONNX (input `images`, outputs `logits`
  and `probabilities`), when `tf2onnx` is installed (`pip install
  "ft_keras[export]"`).
- `student.keras`: the Keras student (expects normalised float images).

All of them are one Keras model, `serving_model`: the student behind a
`Rescaling` layer that turns raw images into the normalised ones it was
trained on. The LiteRT files are converted from the SavedModel with the
built-in op set only, so the LiteRT runtime (`ai-edge-litert`) runs them
without TensorFlow's Flex delegate; Keras' own `export(format="litert")`
adds the Flex ops and writes a second SavedModel, and it is used here for
neither reason.

From Python, `export_for_dataset(student, "image_folder:<root>", "export")`
writes these files for a student trained on a dataset of
`ft_keras.data.build_dataset`: its normalisation, and int8 calibration on
its training images (`normalization`, `representative_images`). Run as a stage of an
experiment, the same call: `python -m ft_keras.export --gin_file=...
--workdir=...` (`ft_keras/export/__main__.py`).
"""

import importlib.util
import os
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from ft_keras import _console
from ft_keras import data
from ft_keras import models

SERVING = "serving_default"


def serving_model(student, pixel_max, mean, std):
    """`uint8 images -> {"logits", "probabilities"}`: `student` behind the
    normalisation `(x / pixel_max - mean) / std`, as one Keras model.

    Example:

    ```python
    from ft_keras import models
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    served = serving_model(student, 16, mean=(0.3,), std=(0.4,))
    served(np.zeros((2, 8, 8, 1), np.uint8))["probabilities"].shape  # (2, 10)
    ```
    """
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    # Trained under a mixed policy, served in float32.
    student = models.with_dtype_policy(student, "float32")
    images = keras.Input(tuple(student.input_shape[1:]), dtype="uint8", name="images")
    x = keras.layers.Rescaling(
        scale=(1.0 / (pixel_max * std)).tolist(),
        offset=(-mean / std).tolist(),
        dtype="float32",
        name="normalize",
    )(keras.ops.cast(images, "float32"))
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
        student(x)
    )
    probabilities = keras.layers.Activation(
        "softmax", dtype="float32", name="probabilities"
    )(logits)
    return keras.Model(
        images, {"logits": logits, "probabilities": probabilities}, name="serving"
    )


def _write_saved_model(served, path):
    archive = keras.export.ExportArchive()
    archive.track(served)
    archive.add_endpoint(
        name=SERVING,
        fn=lambda images: served(images, training=False),
        input_signature=[
            tf.TensorSpec(
                (None,) + tuple(served.input_shape[1:]), tf.uint8, name="images"
            )
        ],
    )
    archive.write_out(path, verbose=False)


def _tflite(saved_model_dir, representative_images=None, full_integer=False):
    """The LiteRT file: float; int8 with float fallback when given
    `representative_images`; int8 kernels only (`TFLITE_BUILTINS_INT8`)
    when also `full_integer`. The full-integer file takes the raw uint8
    images and returns int8 `logits` and `probabilities`, to dequantize with
    each output's `(scale, zero_point)` (`tflite_predict` does): int8, not
    uint8, because the tensors inside are int8, so no requantize op is
    added at the end. The one float op left is the cast of the uint8 input
    before it is quantized."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SERVING]
    )
    if representative_images is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative_dataset():
            for image in representative_images:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
    if full_integer:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
    try:
        with _console.native_output_silenced():
            return converter.convert()
    except Exception as error:  # The converter's errors are many lines.
        if not full_integer:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            "The student has ops without an int8 LiteRT kernel, so it cannot "
            f"be fully integer-quantized ({type(error).__name__}: {first}); "
            "export with full_integer=False."
        ) from None


def onnx_available():
    """Whether the ONNX exporter (`tf2onnx`, `onnx`) is installed."""
    return all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx"))


def export_student(
    student,
    export_dir,
    pixel_max,
    mean,
    std,
    representative_images=None,
    onnx=None,
    full_integer=False,
):
    """Writes the student's SavedModel, LiteRT, ONNX and `.keras` files.

    Args:
        student: The trained Keras student (input: normalised float images).
        export_dir: Directory to (re)create.
        pixel_max: The raw images' maximum value (255; 16 for digits).
        mean, std: Per-channel normalisation on the [0, 1] scale.
        representative_images: uint8 array `(N, H, W, C)` of training images
            to calibrate the int8 LiteRT model; no int8 model without it.
        onnx: Write `student.onnx`: True, False, or None (the default) for
            "if `tf2onnx` is installed".
        full_integer: Also write `student_int8_full.tflite`, int8 kernels
            only, calibrated on `representative_images`: raw uint8 images
            in, int8 `logits` and `probabilities` out (`_tflite` says why).

    Returns:
        A dict of the written paths.

    Raises:
        ValueError: `full_integer` without `representative_images`, or a
            student with an op that has no int8 kernel (one line each).

    Example:

    ```python
    paths = export_student(distiller.student, "export", 255,
                           mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                           representative_images=uint8_train_images[:256])
    ```
    """
    if full_integer and representative_images is None:
        raise ValueError(
            "full_integer=True calibrates on representative_images: pass "
            "uint8 training images (export_for_dataset: representative > 0)."
        )
    if onnx is None:
        onnx = onnx_available()
    elif onnx and not onnx_available():
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install "
            "'ft_keras[export]' (or pass onnx=False)."
        )
    tmp_dir = f"{os.fspath(export_dir).rstrip(os.sep)}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    try:
        served = serving_model(student, pixel_max, mean, std)
        paths = _write_files(student, served, tmp_dir, representative_images,
                             full_integer, onnx)
    except BaseException:
        # A refused or failed export leaves the old one as it was.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp_dir, export_dir)
    return {
        key: os.path.join(export_dir, os.path.basename(path))
        for key, path in paths.items()
    }


def _write_files(student, served, directory, representative_images,
                 full_integer, onnx):
    """Writes every exported file into `directory`; returns their paths."""
    paths = {
        "saved_model": os.path.join(directory, "saved_model"),
        "keras": os.path.join(directory, "student.keras"),
    }
    student.save(paths["keras"])
    _write_saved_model(served, paths["saved_model"])
    paths.update(_write_litert(
        directory, paths["saved_model"], representative_images, full_integer
    ))
    if onnx:
        paths["onnx"] = os.path.join(directory, "student.onnx")
        # Keras traces a model that has run once.
        served(np.zeros((1,) + tuple(served.input_shape[1:]), np.uint8))
        with _console.native_output_silenced(), warnings.catch_warnings():
            # Keras' tf2onnx patch probes `np.object`, which NumPy 2 warns of.
            warnings.filterwarnings("ignore", category=FutureWarning)
            served.export(paths["onnx"], format="onnx", verbose=False)
    return paths


def _write_litert(directory, saved_model_dir, representative_images,
                  full_integer):
    """Writes the LiteRT files into `directory`; returns their paths."""
    paths = {"tflite_float": os.path.join(directory, "student_float.tflite")}
    with open(paths["tflite_float"], "wb") as f:
        f.write(_tflite(saved_model_dir))
    if representative_images is None:
        return paths
    images = np.asarray(representative_images, np.uint8)
    paths["tflite_int8"] = os.path.join(directory, "student_int8.tflite")
    with open(paths["tflite_int8"], "wb") as f:
        f.write(_tflite(saved_model_dir, images))
    if full_integer:
        paths["tflite_int8_full"] = os.path.join(
            directory, "student_int8_full.tflite"
        )
        with open(paths["tflite_int8_full"], "wb") as f:
            f.write(_tflite(saved_model_dir, images, full_integer=True))
        _check_integer_only(paths["tflite_int8_full"])
    return paths


def _check_integer_only(path):
    """Raises if the full-integer LiteRT file computes anything in float
    but the cast of its uint8 input: the converter keeps an op without an
    int8 kernel in float, between a DEQUANTIZE and a QUANTIZE, even with
    `TFLITE_BUILTINS_INT8` only."""
    floats = [
        detail["name"].split(";")[0].rsplit("/", 1)[-1]
        for detail in _litert_interpreter(path).get_tensor_details()
        if np.issubdtype(detail["dtype"], np.floating)
    ]
    kept = sorted(set(floats) - {"Cast", "tfl.dequantize"})
    if len(floats) > 1:
        raise ValueError(
            f"The student has ops without an int8 LiteRT kernel ("
            f"{', '.join(kept) or 'dequantized tensors'}), which would run "
            "in float; export with full_integer=False."
        )


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # The LiteRT runtime is the `export` extra.
        raise ImportError(
            "Running a .tflite file needs the LiteRT runtime: pip install "
            "'ft_keras[export]' (ai-edge-litert)."
        ) from None
    return Interpreter(model_path=os.fspath(path))


def tflite_predict(path, images):
    """Runs a LiteRT (`.tflite`) file's serving signature on uint8 images,
    one at a time, with the LiteRT runtime (`ai-edge-litert`); returns the
    logits as a float array (a quantized output, as in
    `student_int8_full.tflite`, dequantized with its scale and zero
    point)."""
    runner = _litert_interpreter(path).get_signature_runner(SERVING)
    logits = np.concatenate(
        [runner(images=image[None])["logits"] for image in np.asarray(images)]
    )
    scale, zero_point = runner.get_output_details()["logits"]["quantization"]
    if scale:
        return (logits.astype(np.float32) - zero_point) * scale
    return logits


def onnx_predict(path, images):
    """Runs `student.onnx` on uint8 images with ONNX Runtime; returns the
    logits as a float array."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.fspath(path), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"images": np.asarray(images, np.uint8)})
    return logits


# How many training images calibrate the int8 file when only a dataset is
# given.
DEFAULT_CALIBRATION_IMAGES = 256


def representative_images(
    dataset, count=DEFAULT_CALIBRATION_IMAGES, split="train", batch_size=None,
    data_dir=None, **options
):
    """The first `count` images of `split` as the test pipeline yields them
    (resized, no augmentation), back at the raw pixel scale as uint8: what
    int8 calibration feeds the exported model.

    Arguments:
        dataset: A `build_dataset` name (`"image_folder:<root>"` too).
        count: How many images.
        split: The split to read (the training split by default).
        batch_size: The pipeline's batch (None: `count`); the images are
            the same for any batch.
        data_dir: TFDS's data directory.
        **options: `build_dataset` options of the test pipeline
            (`image_size`, `mean`, `std`, `seed`, ...).

    Example:

    ```python
    images = representative_images("digits", count=64)
    images.shape, images.dtype   # (64, 8, 8, 1), uint8
    ```
    """
    pixel_max, mean, std = normalization(dataset, options)
    batches = data.build_dataset(
        dataset,
        split,
        batch_size=batch_size or count,
        training=False,
        data_dir=data_dir,
        # Not cached: a cache read in part warns and is thrown away.
        cache=False,
        **options,
    )
    batch_size = batch_size or count
    return raw_images(
        batches.take(-(-count // batch_size)), pixel_max, mean, std, count
    )


def raw_images(batches, pixel_max, mean, std, count=None):
    """The images of `(images, labels)` batches of a pipeline that
    normalised them, back at the raw pixel scale as uint8 (at most
    `count`)."""
    images = np.concatenate([np.asarray(x) for x, _ in batches])[:count]
    return to_raw(images, pixel_max, mean, std)


def export_for_dataset(
    student,
    dataset,
    export_dir,
    representative=DEFAULT_CALIBRATION_IMAGES,
    data_dir=None,
    eval_options=None,
    onnx=None,
    full_integer=False,
):
    """Writes what the runner's export stage writes, for `student` trained on
    `dataset`: `saved_model/` (raw uint8 images in, `logits` and
    `probabilities` out), `student_float.tflite`, `student_int8.tflite`
    (calibrated on training images), `student.onnx` (with the `export`
    extra) and `student.keras`.

    Arguments:
        student: The trained Keras student (normalised float input), e.g.
            `distiller.student`.
        dataset: The `build_dataset` name it was trained on.
        export_dir: Directory to (re)create.
        representative: How many training images calibrate the int8 file,
            or the uint8 images themselves; 0 or None: no int8 file.
        data_dir: TFDS's data directory.
        eval_options: The test split's `build_dataset` options, if any
            (`image_size`, `mean`, `std`).
        onnx: Write `student.onnx`: True, False, or None for "if `tf2onnx`
            is installed".
        full_integer: Also write `student_int8_full.tflite`, int8 kernels
            only, calibrated on the same images (`export_student`).

    Returns:
        `{"saved_model", "tflite_float", "tflite_int8", "onnx", "keras"}`
        (and `"tflite_int8_full"`): the written paths.

    Example:

    ```python
    from ft_keras import export
    paths = export.export_for_dataset(distiller.student, "digits", "export")
    logits = export.tflite_predict(paths["tflite_int8"], uint8_images)
    ```
    """
    eval_options = dict(eval_options or {})
    if representative is not None and np.ndim(representative) == 0:
        representative = (
            representative_images(
                dataset, int(representative), data_dir=data_dir, **eval_options
            )
            if representative
            else None
        )
    pixel_max, mean, std = normalization(dataset, eval_options)
    return export_student(
        student,
        export_dir,
        pixel_max,
        mean,
        std,
        representative_images=representative,
        onnx=onnx,
        full_integer=full_integer,
    )


from ft_keras.export.measure import FILES  # noqa: E402
from ft_keras.export.measure import count_macs  # noqa: E402
from ft_keras.export.measure import machine  # noqa: E402
from ft_keras.export.measure import measure_export  # noqa: E402
from ft_keras.export.measure import normalization  # noqa: E402
from ft_keras.export.measure import read_test_split  # noqa: E402
from ft_keras.export.measure import runtime_versions  # noqa: E402
from ft_keras.export.measure import size_bytes  # noqa: E402
from ft_keras.export.measure import to_raw  # noqa: E402
