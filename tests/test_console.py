"""The quiet console in Python: `import ft_keras` and a script's own lines."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from ft_keras import _console

REPO = pathlib.Path(__file__).resolve().parent.parent

# A user's script: an image folder, a teacher, its paraphraser, an export.
# Its fits pass `shuffle=False` as ft_keras' runner does: Keras 3.15 warns
# of `fit(dataset)` with its default `shuffle=True`, a warning the caller's
# own call causes (the pipeline shuffles).
SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import numpy as np

    import ft_keras
    import keras
    import tensorflow as tf
    from ft_keras import data
    from ft_keras import export
    from ft_keras import models

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 8)):
        for label in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, label))
            for i in range(count):
                image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                path = os.path.join(root, split, label, f"{i}.png")
                tf.io.write_file(path, tf.io.encode_png(image))
    name = data.image_folder.dataset_name(root)
    train = data.build_dataset(name, "train", batch_size=8, training=True)
    test = data.build_dataset(name, "test", batch_size=8, training=False)
    teacher = models.get("resnet20", num_classes=2, input_shape=(8, 8, 3))
    teacher.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(train, epochs=1, shuffle=False, verbose=0)
    trainer = ft_keras.ParaphraserTrainer(
        teacher, ft_keras.Paraphraser(rate=0.5), teacher_layer="stage3"
    )
    trainer.compile(optimizer="sgd")
    trainer.fit(train, epochs=1, shuffle=False, verbose=0)
    print("script: trained", flush=True)
    paths = export.export_student(
        teacher,
        os.path.join(root, "export"),
        255,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        representative_images=np.zeros((4, 8, 8, 3), np.uint8),
        onnx=False,
    )
    print("script: exported", " ".join(sorted(paths)), flush=True)
    """
)

# What the script may print: its own lines and ft_keras' `[ft_keras]` ones.
OWN_LINE = r"^(script: .*|\[ft_keras\] .*)$"


def user_env(**variables):
    """The environment of a user's shell: none of the test-wide settings
    (`tests/conftest.py`), no GPU hidden."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "TF_CPP_MIN_LOG_LEVEL",
            "PYTHONWARNINGS",
            "CUDA_VISIBLE_DEVICES",
            "FT_KERAS_VERBOSE",
        )
    }
    env["KERAS_BACKEND"] = "tensorflow"
    env.update(variables)
    return env


def run_python(args, env, cwd):
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_a_script_prints_only_its_own_lines(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    result = run_python([str(script), str(tmp_path / "images")], user_env(),
                         tmp_path)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if not re.match(OWN_LINE, line)] == []
    assert "script: trained" in lines
    assert "script: exported keras saved_model tflite_float tflite_int8" in lines


def test_ft_keras_verbose_brings_tensorflow_output_back(tmp_path):
    code = "import ft_keras, os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    loud = run_python(["-c", code], user_env(FT_KERAS_VERBOSE="1"), tmp_path)
    assert loud.stdout != "3\n"  # (JAX, if Keras imports it, sets 1)
    # TensorFlow's C++ start-up lines (oneDNN, CPU features or CUDA).
    assert "I0000" in loud.stderr


@pytest.fixture
def console_state(monkeypatch):
    """Restores `_console`'s state and `TF_CPP_MIN_LOG_LEVEL` after a test."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(_console, "quiet", _console.quiet)
    monkeypatch.setattr(_console, "_level_set_here", False)


def test_quiet_console_sets_the_log_level_and_false_takes_it_back(
    console_state,
):
    _console.quiet_console()
    assert _console.quiet and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    _console.quiet_console(False)
    assert not _console.quiet and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_quiet_console_keeps_the_users_log_level(console_state, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    _console.quiet_console()
    _console.quiet_console(False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_quiet_console_takes_a_bool(console_state):
    with pytest.raises(ValueError, match="Received: enabled='no'"):
        _console.quiet_console("no")


@pytest.mark.parametrize("level, shown", [("3", "W"), ("0", "IW")])
def test_tensorflows_import_lines_show_as_the_log_level_says(
    console_state, monkeypatch, capfd, level, shown
):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    _console.quiet_console()
    lines = {"I": "I0000 00:00 port.cc:153] oneDNN", "W": "W0000 a warning"}
    with _console.tensorflow_import_quieted():  # what TensorFlow's load writes
        os.write(2, "".join(f"{line}\n" for line in lines.values()).encode())
    assert capfd.readouterr().err.splitlines() == [lines[k] for k in shown]
