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
its training images (`ft_keras.export.dataset`). Run as a stage of an
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


def _tflite(saved_model_dir, representative_images=None):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SERVING]
    )
    if representative_images is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative_dataset():
            for image in representative_images:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
    with _console.native_output_silenced():
        return converter.convert()


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

    Returns:
        A dict of the written paths.

    Example:

    ```python
    paths = export_student(distiller.student, "export", 255,
                           mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                           representative_images=uint8_train_images[:256])
    ```
    """
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
    paths = {
        "saved_model": os.path.join(tmp_dir, "saved_model"),
        "tflite_float": os.path.join(tmp_dir, "student_float.tflite"),
        "keras": os.path.join(tmp_dir, "student.keras"),
    }
    student.save(paths["keras"])
    served = serving_model(student, pixel_max, mean, std)
    _write_saved_model(served, paths["saved_model"])
    with open(paths["tflite_float"], "wb") as f:
        f.write(_tflite(paths["saved_model"]))
    if representative_images is not None:
        paths["tflite_int8"] = os.path.join(tmp_dir, "student_int8.tflite")
        images = np.asarray(representative_images, np.uint8)
        with open(paths["tflite_int8"], "wb") as f:
            f.write(_tflite(paths["saved_model"], images))
    if onnx:
        paths["onnx"] = os.path.join(tmp_dir, "student.onnx")
        # Keras traces a model that has run once.
        served(np.zeros((1,) + tuple(served.input_shape[1:]), np.uint8))
        with _console.native_output_silenced(), warnings.catch_warnings():
            # Keras' tf2onnx patch probes `np.object`, which NumPy 2 warns of.
            warnings.filterwarnings("ignore", category=FutureWarning)
            served.export(paths["onnx"], format="onnx", verbose=False)
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp_dir, export_dir)
    return {
        key: os.path.join(export_dir, os.path.basename(path))
        for key, path in paths.items()
    }


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
    logits as a float array."""
    runner = _litert_interpreter(path).get_signature_runner(SERVING)
    return np.concatenate(
        [runner(images=image[None])["logits"] for image in np.asarray(images)]
    )


def onnx_predict(path, images):
    """Runs `student.onnx` on uint8 images with ONNX Runtime; returns the
    logits as a float array."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.fspath(path), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"images": np.asarray(images, np.uint8)})
    return logits


# The export stage as one call from a student and its dataset; below the
# functions it uses (`ft_keras.export.dataset` calls `export_student`).
from ft_keras.export.dataset import export_for_dataset  # noqa: E402
from ft_keras.export.dataset import representative_images  # noqa: E402
