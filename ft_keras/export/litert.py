"""The LiteRT (TFLite) files: float, int8 and full-integer int8, converted
from the SavedModel with the built-in op set only, and run with the LiteRT
runtime (`ai-edge-litert`).

Built-in ops only, so the LiteRT runtime runs them without TensorFlow's Flex
delegate; Keras' own `export(format="litert")` adds the Flex ops and writes
a second SavedModel, and it is used here for neither reason.
"""

import os

import numpy as np
import tensorflow as tf

from ft_keras import _console
from ft_keras.export.serving import SERVING


def convert(saved_model_dir, representative_images=None, full_integer=False):
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


def write_litert(directory, saved_model_dir, representative_images,
                 full_integer):
    """Writes the LiteRT files into `directory`; returns their paths."""
    paths = {"tflite_float": os.path.join(directory, "student_float.tflite")}
    with open(paths["tflite_float"], "wb") as f:
        f.write(convert(saved_model_dir))
    if representative_images is None:
        return paths
    images = np.asarray(representative_images, np.uint8)
    paths["tflite_int8"] = os.path.join(directory, "student_int8.tflite")
    with open(paths["tflite_int8"], "wb") as f:
        f.write(convert(saved_model_dir, images))
    if full_integer:
        paths["tflite_int8_full"] = os.path.join(
            directory, "student_int8_full.tflite"
        )
        with open(paths["tflite_int8_full"], "wb") as f:
            f.write(convert(saved_model_dir, images, full_integer=True))
        _check_integer_only(paths["tflite_int8_full"])
    return paths


def _check_integer_only(path):
    """Raises if the full-integer LiteRT file computes anything in float
    but the cast of its uint8 input: the converter keeps an op without an
    int8 kernel in float, between a DEQUANTIZE and a QUANTIZE, even with
    `TFLITE_BUILTINS_INT8` only."""
    floats = [
        detail["name"].split(";")[0].rsplit("/", 1)[-1]
        for detail in interpreter(path).get_tensor_details()
        if np.issubdtype(detail["dtype"], np.floating)
    ]
    kept = sorted(set(floats) - {"Cast", "tfl.dequantize"})
    if len(floats) > 1:
        raise ValueError(
            f"The student has ops without an int8 LiteRT kernel ("
            f"{', '.join(kept) or 'dequantized tensors'}), which would run "
            "in float; export with full_integer=False."
        )


def interpreter(path):
    """The LiteRT runtime's `Interpreter` of a `.tflite` file."""
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
    runner = interpreter(path).get_signature_runner(SERVING)
    logits = np.concatenate(
        [runner(images=image[None])["logits"] for image in np.asarray(images)]
    )
    scale, zero_point = runner.get_output_details()["logits"]["quantization"]
    if scale:
        return (logits.astype(np.float32) - zero_point) * scale
    return logits
