"""The measuring tools under benchmarks/ measure what they say."""

import pathlib
import statistics
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import ft_keras
from ft_keras import models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent
                       / "benchmarks"))
import _timing  # noqa: E402
import iterator_stall  # noqa: E402
import profile_summary  # noqa: E402


def small_distiller():
    kwargs = dict(num_classes=10, input_shape=(8, 8, 1))
    teacher = models.get("wrn16_2", model_name="teacher", **kwargs)
    student = models.get("wrn10_1", model_name="student", **kwargs)
    distiller = ft_keras.Distiller(
        teacher, student, ft_keras.Paraphraser(0.5), ft_keras.Translator(64),
        "stage3", "stage3")
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=(16,)).astype("int32")
    return distiller, tf.data.Dataset.from_tensors((x, y)).repeat()


def test_fit_step_seconds_times_blocks_of_steps_inside_one_fit():
    distiller, data = small_distiller()
    step, blocks = _timing.fit_step_seconds(distiller, data, steps=3,
                                            repeats=4, warmup=2)
    assert len(blocks) == 4 and all(b > 0 for b in blocks)
    assert step == statistics.median(blocks)
    # One fit call of warm-up + 3 x 4 steps.
    assert int(distiller.optimizer.iterations) == 2 + 12


def test_profile_attributes_ops_to_parts_and_frozen_parts_get_no_gradient(
    tmp_path,
):
    distiller, data = small_distiller()
    distiller.fit(data, epochs=1, steps_per_epoch=2, verbose=0)  # trace
    tf.profiler.experimental.start(str(tmp_path))
    distiller.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    tf.profiler.experimental.stop()
    parts, total, wall = profile_summary.summarize(str(tmp_path), steps=2)
    for part in ("teacher forward", "paraphraser forward", "student forward",
                 "student backward", "translator forward",
                 "translator backward"):
        assert parts[part] > 0, part
    # Frozen teacher and paraphraser: inference only, no gradient ops.
    assert "teacher backward" not in parts
    assert "paraphraser backward" not in parts
    assert total > 0 and wall > 0


@pytest.mark.parametrize("name, part", [
    ("distiller_1/teacher_1/stage1_block0_conv1_1/convolution", "teacher forward"),
    ("gradient_tape/distiller_1/student_1/conv_1/convolution/Conv2DBackpropInput",
     "student backward"),
    ("distiller_1/translator_1/conv2d_3_1/convolution", "translator forward"),
    ("distiller_1/paraphraser_1/conv2d_1/convolution", "paraphraser forward"),
    ("SGD/AssignAddVariableOp", "optimizer"),
    ("distiller_1/factor_transfer_loss/Mean", "losses, metrics, other"),
])
def test_part_of_op_names(name, part):
    assert profile_summary.part_of(name) == part


def test_iterator_stall_measures_a_deletion():
    assert 0 <= iterator_stall.stall(False, 0.05) < 5


def test_reproduce_runs_each_method_with_its_stages():
    import reproduce

    assert reproduce.stages("teacher") == ["teacher", "evaluate"]
    assert reproduce.stages("student alone") == ["baseline", "evaluate"]
    assert reproduce.stages("KD") == ["teacher", "student", "evaluate"]
    assert reproduce.stages("AT") == ["teacher", "student", "evaluate"]
    assert reproduce.stages("FT") == [
        "teacher", "paraphraser", "student", "evaluate"]
