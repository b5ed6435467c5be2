"""The README's commands and example are the ones that work."""

import pathlib
import re

import numpy as np
import tensorflow as tf

from ft_keras import data
from ft_keras import export

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def blocks_this_test_runs():
    """The Python blocks marked `<!-- run: tests/test_readme.py -->`, in
    order (tests/test_docs_blocks.py checks every block is run or marked)."""
    return re.findall(r"<!-- run: tests/test_readme.py -->\n```python\n(.*?)```",
                      README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    command = [l for l in ci_lines if "pytest" in l]
    assert len(command) == 1
    assert command[0] in "".join(code_blocks("bash"))


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example, from a folder of PNGs to the shipped files: the
    keras.applications student learns (well above chance), and every
    exported file gives its logits on raw images."""
    monkeypatch.chdir(tmp_path)
    blocks = blocks_this_test_runs()
    assert len(blocks) == 3  # the PNG folder, the example, a user's term
    namespace = {}
    for block in blocks[:2]:
        exec(compile(block, "README.md", "exec"), namespace)
    student, name = namespace["distiller"].student, namespace["name"]
    assert student.count_params() < 500_000  # MobileNetV2 at alpha 0.35
    labels, predictions = [], []
    for x, y in namespace["test"]:
        labels.append(y.numpy())
        predictions.append(np.argmax(student(x, training=False), axis=1))
    accuracy = np.mean(np.concatenate(predictions) == np.concatenate(labels))
    assert accuracy > 0.6  # chance: 0.1
    paths = namespace["paths"]
    assert set(paths) == {"saved_model", "tflite_float", "tflite_int8", "onnx",
                          "keras"}
    raw = export.representative_images(name, count=40, split="test",
                                               image_size=32)
    pixel_max, mean, std = data.pixel_normalization(name)
    x = (raw / np.float32(pixel_max) - np.float32(mean)) / np.float32(std)
    expected = np.asarray(student(x.astype(np.float32), training=False))
    served = tf.saved_model.load(paths["saved_model"])
    logits = served.signatures["serving_default"](images=tf.constant(raw))
    np.testing.assert_allclose(logits["logits"], expected, atol=1e-4, rtol=1e-4)
    for run, path in ((export.tflite_predict, paths["tflite_float"]),
                      (export.onnx_predict, paths["onnx"])):
        np.testing.assert_allclose(run(path, raw), expected, atol=1e-3,
                                   rtol=1e-3)

    # The user's term trains beside FT, its loss logged and weighed.
    exec(compile(blocks[2], "README.md", "exec"), namespace)
    history = namespace["distiller"].history.history
    assert set(history) == {"loss", "ce_loss", "ft_loss", "l2_loss", "accuracy"}
    assert history["l2_loss"][0] > 0
