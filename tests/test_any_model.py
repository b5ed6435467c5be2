"""Any Keras model as teacher or student, as `keras.distillation.Distiller`
takes them: terms on the logits train subclassed and unbuilt Sequential
pairs; terms that tap layers, and wrong arguments, fail in the constructor
with one ValueError naming what is wrong."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import keras

import ft_keras

from _counting import count_calls
from _digits import digits
from _digits import digits_net
from _digits import snapshot

REPO = pathlib.Path(__file__).resolve().parent.parent


@keras.saving.register_keras_serializable(package="test_any_model")
class DigitsConvNet(keras.Model):
    """Keras core's `SimpleTeacher` / `SimpleStudent` made for 8x8x1 digits:
    a conv, BatchNormalization, pooling and 10 logits, in a `call`.
    Records the `training` argument of each call in `trainings`."""

    def __init__(self, width, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.width, self.seed = width, seed
        init = keras.initializers.GlorotUniform(seed=seed)
        self.conv = keras.layers.Conv2D(width, 3, padding="same",
                                        kernel_initializer=init)
        self.bn = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.logits = keras.layers.Dense(10, kernel_initializer=init)
        self.trainings = []

    def call(self, x, training=None):
        self.trainings.append(training)
        x = keras.ops.relu(self.bn(self.conv(x), training=training))
        return self.logits(self.pool(x))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "seed": self.seed}


def trained_subclassed_teacher():
    teacher = DigitsConvNet(16, seed=1, name="teacher")
    x, y = digits(256)
    teacher.compile(keras.optimizers.Adam(0.01),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return teacher


def unbuilt_sequential(width, seed):
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([
        keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu", kernel_initializer=init),
        keras.layers.Dense(10, kernel_initializer=init),
    ])


LOGIT_TERMS = {
    "kd": lambda: [ft_keras.KnowledgeDistillation(4.0, weight=0.9)],
    "dkd": lambda: [ft_keras.DecoupledKD(warmup_epochs=2)],
    "dist": lambda: [ft_keras.DIST()],
}


@pytest.mark.parametrize("method", sorted(LOGIT_TERMS))
def test_subclassed_pair_trains_evaluates_and_predicts(method):
    teacher = trained_subclassed_teacher()
    teacher_before = snapshot(teacher)
    student = DigitsConvNet(8, seed=2, name="student")
    distiller = ft_keras.Distiller(teacher, student, LOGIT_TERMS[method]())
    distiller.compile(keras.optimizers.Adam(0.01), metrics=["accuracy"])
    x, y = digits(128)
    history = distiller.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    assert set(history) == {"loss", "ce_loss", f"{method}_loss", "accuracy"}
    assert history[f"{method}_loss"][-1] > 0
    assert history["loss"][-1] < history["loss"][0]
    result = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == set(history)
    np.testing.assert_allclose(distiller.predict(x, verbose=0),
                               student(x, training=False), atol=1e-5)
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables}


def test_a_subclassed_teacher_runs_in_inference_mode_the_student_not():
    teacher = trained_subclassed_teacher()
    teacher.trainings.clear()
    student = DigitsConvNet(8, seed=2)
    distiller = ft_keras.Distiller(teacher, student,
                                   [ft_keras.KnowledgeDistillation()])
    distiller.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
    x, y = digits(16)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert set(teacher.trainings) == {False}
    assert True in student.trainings


def test_each_network_runs_once_per_step_as_it_is():
    teacher = trained_subclassed_teacher()
    student = DigitsConvNet(8, seed=2)
    distiller = ft_keras.Distiller(
        teacher, student,
        [ft_keras.KnowledgeDistillation(), ft_keras.DecoupledKD()])
    counter = {"teacher": 0, "student": 0}
    count_calls(teacher.conv, counter, "teacher")
    count_calls(student.conv, counter, "student")
    distiller.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
    x, y = digits(24)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # Builds the student.
    counter.update(teacher=0, student=0)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert counter == {"teacher": 3, "student": 3}
    distiller.evaluate(x, y, batch_size=8, verbose=0)
    assert counter == {"teacher": 6, "student": 6}


def test_subclassed_distiller_keras_round_trip(tmp_path):
    distiller = ft_keras.Distiller(
        trained_subclassed_teacher(), DigitsConvNet(8, seed=2),
        [ft_keras.KnowledgeDistillation(2.0, weight=0.5)],
        student_loss_weight=0.5)
    distiller.compile(keras.optimizers.Adam(0.01))
    x, y = digits(64)
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    distiller.save(tmp_path / "kd.keras")
    restored = keras.models.load_model(tmp_path / "kd.keras")
    assert isinstance(restored.teacher, DigitsConvNet)
    assert isinstance(restored.student, DigitsConvNet)
    assert {id(v) for v in restored.trainable_variables} == {
        id(v) for v in restored.student.trainable_variables}
    assert int(restored.optimizer.iterations) == 2
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  distiller.predict(x, verbose=0))
    np.testing.assert_allclose(
        restored.evaluate(x, y, verbose=0), distiller.evaluate(x, y, verbose=0),
        rtol=1e-6)


def test_unbuilt_sequential_pair_is_built_on_the_first_batch(tmp_path):
    teacher, student = unbuilt_sequential(32, 1), unbuilt_sequential(16, 2)
    distiller = ft_keras.Distiller(teacher, student,
                                   [ft_keras.KnowledgeDistillation()])
    distiller.compile(keras.optimizers.Adam(0.01), metrics=["accuracy"])
    x, y = digits(100)  # A last batch of 4: the batch size is not fixed.
    history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "kd_loss", "accuracy"}
    assert teacher.built and student.built and not teacher.trainable_weights
    teacher_before = snapshot(teacher)
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables}
    distiller.save(tmp_path / "sequential.keras")
    restored = keras.models.load_model(tmp_path / "sequential.keras")
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  distiller.predict(x, verbose=0))


def test_a_built_sequential_serves_a_tapping_term():
    teacher = keras.Sequential([keras.Input((8, 8, 1)),
                                keras.layers.Conv2D(8, 3, name="map"),
                                keras.layers.Flatten(), keras.layers.Dense(10)])
    student = keras.Sequential([keras.layers.Conv2D(4, 3, name="map"),
                                keras.layers.Flatten(), keras.layers.Dense(10)])
    x, y = digits(16)
    student(x[:2])  # Called once on data: built, its layers tappable.
    distiller = ft_keras.Distiller(teacher, student, [
        ft_keras.AttentionTransfer(["map"], ["map"]),
        ft_keras.KnowledgeDistillation()])
    distiller.compile(keras.optimizers.SGD(0.01))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["at_loss"][0] > 0 and history["kd_loss"][0] > 0


def _functional(outputs_of, input_shape=(8, 8, 1)):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, outputs_of(keras.layers.Flatten()(inputs)))


WRONG_ARGUMENTS = {
    "teacher_not_a_model": (
        lambda: ("not_a_model", digits_net("student", 8)),
        r"`teacher` must be a `keras.Model`.*Received: teacher='not_a_model'"),
    "student_not_a_model": (
        lambda: (digits_net("teacher", 8), "student.keras"),
        r"`student` must be a `keras.Model`.*Received: student='student.keras'"),
    "student_with_two_outputs": (
        lambda: (digits_net("teacher", 8), _functional(
            lambda x: [keras.layers.Dense(10)(x), keras.layers.Dense(3)(x)])),
        r"student must return its logits.*\[\(None, 10\), \(None, 3\)\]"),
    "student_output_not_2d": (
        lambda: (digits_net("teacher", 8), _functional(
            lambda x: keras.layers.Reshape((2, 5))(keras.layers.Dense(10)(x)))),
        r"student must return its logits.*\[\(None, 2, 5\)\]"),
    "different_class_counts": (
        lambda: (digits_net("teacher", 8),
                 _functional(keras.layers.Dense(5))),
        r"`teacher` and `student` must have the same number of classes.*"
        r"\(None, 10\).*\(None, 5\)"),
    "different_input_shapes": (
        lambda: (digits_net("teacher", 8),
                 _functional(keras.layers.Dense(10), (16, 16, 1))),
        r"`teacher` and `student` get the same batches.*"
        r"\(None, 8, 8, 1\).*\(None, 16, 16, 1\)"),
}


@pytest.mark.parametrize("case", sorted(WRONG_ARGUMENTS))
def test_a_wrong_argument_raises_one_value_error_naming_it(case):
    models, message = WRONG_ARGUMENTS[case]
    teacher, student = models()
    before = teacher.trainable if isinstance(teacher, keras.Model) else None
    with pytest.raises(ValueError, match=message):
        ft_keras.Distiller(teacher, student, [ft_keras.KnowledgeDistillation()])
    if before is not None:  # Refused before any work: not even frozen.
        assert teacher.trainable == before


def test_a_teacher_of_other_classes_serves_a_term_on_its_maps_only():
    inputs = keras.Input((8, 8, 1))
    tap = keras.layers.Conv2D(4, 3, padding="same", name="map")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(100)(
        keras.layers.Flatten()(tap)))
    student = digits_net("student", 4)
    ft_keras.Distiller(teacher, student,
                       [ft_keras.AttentionTransfer(["map"], ["stage1"])])


class Hint(ft_keras.Term):
    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]),
                              axis=(1, 2, 3))


TAPPING_TERMS = {
    "factor_transfer_on_a_subclassed_teacher": (
        lambda: (DigitsConvNet(8), digits_net("student", 8), [
            ft_keras.FactorTransfer(ft_keras.Paraphraser(0.5), None,
                                    "stage2", "stage2")]),
        r"term 'ft' \(FactorTransfer\) taps the teacher's layers \['stage2'\]"
        r".*subclassed `keras.Model` \(DigitsConvNet\).*keras.Input"),
    "attention_transfer_on_a_subclassed_student": (
        lambda: (digits_net("teacher", 8), DigitsConvNet(8), [
            ft_keras.KnowledgeDistillation(),
            ft_keras.AttentionTransfer(["stage1", "stage2"],
                                       ["stage1", "stage2"])]),
        r"term 'at' \(AttentionTransfer\) taps the student's layers "
        r"\['stage1', 'stage2'\].*subclassed"),
    "fitnets_on_an_unbuilt_sequential": (
        lambda: (digits_net("teacher", 8), unbuilt_sequential(8, 0), [
            ft_keras.FitNets("stage2", "stage2")]),
        r"term 'fitnets' \(FitNets\) taps the student's layers \['stage2'\]"
        r".*`keras.Sequential` that is not built yet.*keras.Input\(shape\)"
        r".*call it once on data"),
    "a_users_term_on_a_subclassed_student": (
        lambda: (digits_net("teacher", 8), DigitsConvNet(8), [
            Hint(["stage1"], ["conv"], name="hint")]),
        r"term 'hint' \(Hint\) taps the student's layers \['conv'\]"),
}


class LogitShapes(ft_keras.Term):
    """A user's term on the logits that records the shapes `connect` got."""

    def connect(self, teacher_shapes, student_shapes):
        self.shapes = (teacher_shapes, student_shapes)
        self.built = True

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]), axis=-1)


def test_a_users_logit_term_connects_with_unknown_logit_shapes_and_trains():
    term = LogitShapes([None], [None], name="l2")
    distiller = ft_keras.Distiller(digits_net("teacher", 8), DigitsConvNet(8),
                                   [term])
    assert term.shapes == ([(None, 10)], [(None, None)])
    distiller.compile(keras.optimizers.SGD(0.01))
    x, y = digits(16)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["l2_loss"][0] > 0


@pytest.mark.parametrize("case", sorted(TAPPING_TERMS))
def test_a_tapping_term_on_an_untappable_model_names_term_and_tap(case):
    models, message = TAPPING_TERMS[case]
    teacher, student, terms = models()
    with pytest.raises(ValueError, match=message):
        ft_keras.Distiller(teacher, student, terms)
    assert teacher.trainable  # Refused before any work.


@keras.saving.register_keras_serializable(package="test_any_model")
class DictNet(DigitsConvNet):
    def call(self, x, training=None):
        return {"logits": super().call(x, training=training)}


def test_a_subclassed_model_returning_a_dict_is_refused_as_student():
    distiller = ft_keras.Distiller(digits_net("teacher", 8), DictNet(8),
                                   [ft_keras.KnowledgeDistillation()])
    with pytest.raises(ValueError, match=r"student must return its logits.*"
                                         r"returning a dict"):
        distiller(digits(2)[0])


def readme_block():
    """The Python block of README.md's "Your Keras models"."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Your Keras models", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_your_keras_models_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_block(), "README.md", "exec"), namespace)
    distiller, x, y = (namespace[k] for k in ("distiller", "x", "y"))
    history = distiller.history.history
    assert set(history) == {"loss", "ce_loss", "kd_loss", "accuracy"}
    assert history["accuracy"][-1] > 0.8  # chance: 0.1
    restored = keras.models.load_model(tmp_path / "mlp_kd.keras")
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  distiller.predict(x, verbose=0))


JAX_SCRIPT = """
import numpy as np, keras, ft_keras
from sklearn.datasets import load_digits

class MLP(keras.Model):
    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.logits = keras.layers.Dense(10)

    def call(self, x):
        return self.logits(self.hidden(x))

x, y = load_digits(return_X_y=True)
x = (x[:256] / 16.0).astype("float32")
y = y[:256]
teacher = MLP(32)
teacher(x[:1])
before = [np.array(v) for v in teacher.weights]
distiller = ft_keras.Distiller(teacher, MLP(8), [ft_keras.KnowledgeDistillation(),
                                                 ft_keras.DecoupledKD()])
distiller.compile(keras.optimizers.Adam(0.01))
history = distiller.fit(x, y, batch_size=64, epochs=2, verbose=0).history
assert keras.config.backend() == "jax"
assert history["loss"][1] < history["loss"][0], history
assert all(np.array_equal(a, np.array(v)) for a, v in zip(before, teacher.weights))
assert distiller.predict(x, verbose=0).shape == (256, 10)
print("ok")
"""


def test_jax_trains_a_subclassed_pair():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], cwd=REPO,
                            env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")
