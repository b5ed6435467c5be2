"""The ONNX file, `student.onnx`: written by Keras' ONNX export (`tf2onnx`,
the `export` extra) and run with ONNX Runtime."""

import importlib.util
import os
import warnings

import numpy as np

from ft_keras import _console


def onnx_available():
    """Whether the ONNX exporter (`tf2onnx`, `onnx`) is installed."""
    return all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx"))


def write_onnx(served, path):
    """Writes `served` (`ft_keras.export.serving_model`) as an ONNX file:
    input `images`, outputs `logits` and `probabilities`."""
    # Keras traces a model that has run once.
    served(np.zeros((1,) + tuple(served.input_shape[1:]), np.uint8))
    with _console.native_output_silenced(), warnings.catch_warnings():
        # Keras' tf2onnx patch probes `np.object`, which NumPy 2 warns of.
        warnings.filterwarnings("ignore", category=FutureWarning)
        served.export(path, format="onnx", verbose=False)


def onnx_predict(path, images):
    """Runs `student.onnx` on uint8 images with ONNX Runtime; returns the
    logits as a float array."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.fspath(path), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"images": np.asarray(images, np.uint8)})
    return logits
