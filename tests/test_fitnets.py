"""FitNets: its regressor against RepDistiller's ConvReg (shape rules and
forward pass in PyTorch), its loss and gradient against `HintLoss`, and
the term inside a Distiller on real data."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras

from _digits import digits
from _digits import digits_net
from _digits import snapshot
from _digits import trained_teacher

# (student map, teacher map) as (height, width, channels), and ConvReg's
# case for them.
CASES = [
    ((8, 8, 6), (4, 4, 10), "stride2"),
    ((6, 10, 6), (3, 5, 10), "stride2"),
    ((4, 4, 6), (8, 8, 10), "transpose"),
    ((3, 5, 6), (6, 10, 10), "transpose"),
    ((8, 8, 6), (8, 8, 10), "valid"),
    ((7, 9, 6), (4, 5, 10), "valid"),
]


def torch_convreg(s_shape, t_shape, use_relu=True):
    """RepDistiller's `ConvReg` (`models/util.py` at commit b84f547, the
    same as mdistiller's `mdistiller/distillers/_common.py`), as it is
    written there; the shapes are NCHW."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class ConvReg(nn.Module):
        """Convolutional regression for FitNet"""
        def __init__(self, s_shape, t_shape, use_relu=True):
            super(ConvReg, self).__init__()
            self.use_relu = use_relu
            s_N, s_C, s_H, s_W = s_shape
            t_N, t_C, t_H, t_W = t_shape
            if s_H == 2 * t_H:
                self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
            elif s_H * 2 == t_H:
                self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
            elif s_H >= t_H:
                self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1+s_H-t_H, 1+s_W-t_W))
            else:
                raise NotImplemented('student size {}, teacher size {}'.format(s_H, t_H))
            self.bn = nn.BatchNorm2d(t_C)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.conv(x)
            if self.use_relu:
                return self.relu(self.bn(x))
            else:
                return self.bn(x)

    return ConvReg(s_shape, t_shape, use_relu)


def nchw(shape, n=2):
    height, width, channels = shape
    return (n, channels, height, width)


def randomized(module, seed=0):
    """`module` with random weights and BatchNorm statistics."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (module.conv.weight, module.conv.bias, module.bn.weight,
                       module.bn.bias, module.bn.running_mean):
            tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
        module.bn.running_var.copy_(
            0.5 + torch.rand(module.bn.running_var.shape, generator=generator))
    return module


def load_convreg(regressor, module):
    """Copies a ConvReg's weights into a built HintRegressor: the
    convolution kernels from PyTorch's `(out, in, kh, kw)` (transposed:
    `(in, out, kh, kw)`) to Keras' `(kh, kw, in, out)` (transposed: `(kh,
    kw, out, in)`), the same permutation for both."""
    conv = next(l for l in regressor.stack if l.name == "conv")
    bn = next(l for l in regressor.stack if l.name == "bn")
    as_numpy = lambda t: t.detach().numpy()
    conv.kernel.assign(as_numpy(module.conv.weight).transpose(2, 3, 1, 0))
    conv.bias.assign(as_numpy(module.conv.bias))
    bn.gamma.assign(as_numpy(module.bn.weight))
    bn.beta.assign(as_numpy(module.bn.bias))
    bn.moving_mean.assign(as_numpy(module.bn.running_mean))
    bn.moving_variance.assign(as_numpy(module.bn.running_var))


def to_nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("student, teacher, case", CASES)
def test_regressor_shapes_follow_convregs_three_cases(student, teacher, case):
    import torch

    module = torch_convreg(nchw(student), nchw(teacher))
    regressor = ft_keras.HintRegressor(teacher)
    regressor.build((None,) + student)
    assert regressor.case == case
    conv = next(l for l in regressor.stack if l.name == "conv")
    assert isinstance(module.conv, torch.nn.ConvTranspose2d) == (case == "transpose")
    assert tuple(conv.kernel_size) == tuple(module.conv.kernel_size)
    assert tuple(conv.strides) == tuple(module.conv.stride)
    expected = tuple(module(torch.zeros(nchw(student))).shape)
    got = regressor(np.zeros((2,) + student, "float32")).shape
    assert (got[0], got[3], got[1], got[2]) == expected
    assert regressor.compute_output_shape((2,) + student) == tuple(got)
    assert tuple(got[1:]) == teacher


def test_a_student_map_convreg_cannot_take_is_rejected_naming_both():
    with pytest.raises(TypeError):  # ConvReg's `raise NotImplemented(...)`
        torch_convreg(nchw((4, 4, 6)), nchw((16, 16, 10)))
    regressor = ft_keras.HintRegressor((16, 16, 10))
    with pytest.raises(ValueError, match=r"student map \(4, 4\), teacher map "
                                         r"\(16, 16\)"):
        regressor.build((None, 4, 4, 6))


@pytest.mark.parametrize("use_relu", [True, False])
@pytest.mark.parametrize("student, teacher, case", CASES)
def test_regressor_forward_matches_convreg_in_pytorch(student, teacher, case,
                                                      use_relu):
    import torch

    module = randomized(torch_convreg(nchw(student), nchw(teacher), use_relu))
    regressor = ft_keras.HintRegressor(teacher, use_relu=use_relu)
    regressor.build((None,) + student)
    load_convreg(regressor, module)
    x = np.random.default_rng(1).normal(size=nchw(student, 4)).astype("float32")
    for training in (False, True):  # eval: running statistics; train: batch's
        module.train(training)
        with torch.no_grad():
            expected = to_nhwc(module(torch.tensor(x)))
        got = np.asarray(regressor(x.transpose(0, 2, 3, 1), training=training))
        # Measured: <= 1.5e-7 of the largest output, either mode.
        np.testing.assert_allclose(got, expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("student, teacher, case", CASES[::2])
def test_hint_loss_and_gradient_match_repdistillers_hint_loss(student, teacher,
                                                              case):
    import torch

    module = randomized(torch_convreg(nchw(student), nchw(teacher)), seed=2)
    rng = np.random.default_rng(3)
    s = rng.normal(size=nchw(student, 4)).astype("float32")
    t = np.maximum(rng.normal(size=nchw(teacher, 4)), 0).astype("float32")
    # RepDistiller's training step: ConvReg in training mode, then
    # `HintLoss` (`distiller_zoo/FitNet.py`: `nn.MSELoss()(f_s, f_t)`).
    module.train()
    s_torch = torch.tensor(s, requires_grad=True)
    loss_torch = torch.nn.MSELoss()(module(s_torch), torch.tensor(t))
    loss_torch.backward()

    term = ft_keras.FitNets("t", "s")
    term.connect([(None,) + teacher], [(None,) + student])
    load_convreg(term.regressor, module)
    s_keras = tf.Variable(s.transpose(0, 2, 3, 1))
    with tf.GradientTape() as tape:
        maps = term([tf.constant(t.transpose(0, 2, 3, 1))], [s_keras],
                    training=True)
        loss = tf.reduce_mean(term.compute_loss(*maps))
    kernel = next(l for l in term.regressor.stack if l.name == "conv").kernel
    grad_s, grad_kernel = tape.gradient(loss, [s_keras, kernel])
    # Measured: <= 1.2e-7 relative (loss), 3.9e-7 of the largest gradient
    # element (student map and kernel).
    np.testing.assert_allclose(float(loss), float(loss_torch.detach()), rtol=1e-5)
    expected = to_nhwc(s_torch.grad)
    np.testing.assert_allclose(np.asarray(grad_s), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    expected = module.conv.weight.grad.numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(np.asarray(grad_kernel), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_hint_loss_is_the_mean_over_all_elements():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 3, 4, 4, 5)).astype("float32")
    values = np.asarray(ft_keras.losses.hint_loss(t, s))
    assert values.shape == (3,)
    np.testing.assert_allclose(values.mean(), np.mean((s - t) ** 2), rtol=1e-6)


# ----------------------------------------------------------------------
# Inside a Distiller, on digits.


def fitnets_distiller(student_layer="stage2", weight=100.0, **kwargs):
    teacher = trained_teacher()
    student = digits_net("student", 8, seed=2)
    term = ft_keras.FitNets("stage2", student_layer, weight=weight, **kwargs)
    return ft_keras.Distiller(teacher, student, [term]), term


def tap(distiller, x, training=False):
    """The teacher's hint and the regressed student map, as the Distiller
    hands them to the term."""
    maps = distiller(x, training=training)["terms"]["fitnets"]
    return np.asarray(maps["teacher"][0]), np.asarray(maps["student"][0])


@pytest.mark.parametrize("student_layer, case", [("stage2", "valid"),
                                                 ("stage1", "stride2")])
def test_fitnets_trains_student_and_regressor_on_digits(student_layer, case):
    distiller, term = fitnets_distiller(student_layer)
    assert term.regressor.case == case
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in distiller.student.trainable_variables
        + term.regressor.trainable_variables}
    teacher_before = snapshot(distiller.teacher)
    regressor_before = [np.array(v) for v in term.regressor.trainable_weights]
    moving_mean = np.array(term.regressor.stack[-1].moving_mean)
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
    x, y = digits(256)
    history = distiller.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "fitnets_loss", "accuracy"}
    assert history["fitnets_loss"][-1] < history["fitnets_loss"][0]
    for a, b in zip(teacher_before, snapshot(distiller.teacher)):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, np.array(v)) for a, v in
               zip(regressor_before, term.regressor.trainable_weights))
    assert not np.array_equal(moving_mean, term.regressor.stack[-1].moving_mean)
    # Evaluation: CE + 100 * the mean squared difference, as in NumPy.
    x_test, y_test = digits(64, start=1000)
    result = distiller.evaluate(x_test, y_test, batch_size=64, verbose=0,
                                return_dict=True)
    hint, regressed = tap(distiller, x_test)
    assert hint.shape == regressed.shape == (64, 4, 4, 32)
    np.testing.assert_allclose(result["fitnets_loss"],
                               np.mean((regressed - hint) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"], result["ce_loss"] + 100.0 * result["fitnets_loss"],
        rtol=1e-5)


def test_fitnets_distiller_keras_file_round_trip(tmp_path):
    distiller, term = fitnets_distiller(
        "stage1", weight=50.0, use_relu=False,
        kernel_regularizer=keras.regularizers.L2(1e-4))
    distiller.compile(keras.optimizers.SGD(0.01))
    x, y = digits(64)
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    distiller.save(tmp_path / "fitnets.keras")
    restored = keras.models.load_model(tmp_path / "fitnets.keras",
                                       compile=False)
    (loaded,) = restored.terms
    assert isinstance(loaded, ft_keras.FitNets)
    assert isinstance(loaded.regressor, ft_keras.HintRegressor)
    assert (loaded.weight, loaded.use_relu, loaded.teacher_layer,
            loaded.student_layer, loaded.regressor.case) == (
        50.0, False, "stage2", "stage1", "stride2")
    assert loaded.regressor.kernel_regularizer.get_config() == {"l2": 1e-4}
    assert restored.epoch is None
    for a, b in zip(tap(restored, x), tap(distiller, x)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  distiller.predict(x, verbose=0))


def test_hint_regressor_config_round_trips():
    regressor = ft_keras.HintRegressor((4, 4, 10), use_relu=False)
    clone = ft_keras.HintRegressor.from_config(regressor.get_config())
    assert (clone.target_shape, clone.use_relu, clone.dtype) == (
        (4, 4, 10), False, "float32")


def test_fitnets_taps_are_validated():
    teacher = trained_teacher()
    student = digits_net("student", 8, seed=2)
    with pytest.raises(ValueError, match=r"'logits' gives a tensor of shape "
                                         r"\(None, 10\)"):
        ft_keras.Distiller(teacher, student,
                           [ft_keras.FitNets("stage2", "logits")])
    with pytest.raises(ValueError, match=r"`student_layer`='nope'"):
        ft_keras.Distiller(teacher, student,
                           [ft_keras.FitNets("stage2", "nope")])


def test_a_width_convreg_would_not_match_is_rejected():
    term = ft_keras.FitNets("t", "s")
    with pytest.raises(ValueError, match=r"\(None, 8, 8, 6\) to \(None, 4, 4, "
                                         r"10\).*\(None, 4, 8, 10\)"):
        term.connect([(None, 4, 8, 10)], [(None, 8, 8, 6)])


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": -1.0}, "Received: weight=-1.0"),
    ({"teacher_layer": 2}, r"'stage2' \(RepDistiller's `--hint_layer 2`\). "
                           "Received: teacher_layer=2"),
    ({"student_layer": None}, "Received: student_layer=None"),
])
def test_bad_fitnets_arguments_are_rejected(kwargs, match):
    arguments = {"teacher_layer": "stage2", "student_layer": "stage2", **kwargs}
    with pytest.raises(ValueError, match=match):
        ft_keras.FitNets(**arguments)


@pytest.mark.parametrize("target_shape", [(4, 4), (4, 4, 0), (4.0, 4, 8)])
def test_bad_target_shape_is_rejected(target_shape):
    with pytest.raises(ValueError, match=r"three positive integers. Received: "
                                         r"target_shape="):
        ft_keras.HintRegressor(target_shape)


# ----------------------------------------------------------------------
# The paper's first stage.


def test_hint_trainer_trains_the_students_lower_layers_and_the_regressor():
    teacher = trained_teacher()
    student = digits_net("student", 8, seed=2)
    term = ft_keras.FitNets("stage2", "stage1")
    trainer = term.hint_trainer(teacher, student)
    lower = ["conv1", "bn1"]
    assert {id(v) for v in trainer.trainable_variables} == {
        id(v) for name in lower
        for v in student.get_layer(name).trainable_variables} | {
        id(v) for v in term.regressor.trainable_variables}
    teacher_before = snapshot(teacher)
    upper_before = [np.array(v) for name in ("conv2", "logits")
                    for v in student.get_layer(name).weights]
    lower_before = [np.array(v) for v in student.get_layer("conv1").weights]
    trainer.compile(keras.optimizers.SGD(0.01, momentum=0.9))
    x, y = digits(256)
    history = trainer.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert list(history) == ["loss"]
    assert history["loss"][-1] < history["loss"][0]
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(upper_before, [v for name in ("conv2", "logits")
                                   for v in student.get_layer(name).weights]):
        np.testing.assert_array_equal(a, np.array(v))
    assert all(not np.array_equal(a, np.array(v)) for a, v in
               zip(lower_before, student.get_layer("conv1").weights))
    # The loss: the mean squared difference of hint and regressed map.
    result = trainer.evaluate(x[:64], batch_size=64, verbose=0)
    hint = keras.Model(teacher.input, teacher.get_layer("stage2").output)(x[:64])
    student_map = keras.Model(student.input,
                              student.get_layer("stage1").output)(x[:64])
    regressed = term.regressor(student_map, training=False)
    np.testing.assert_allclose(
        result, np.mean((np.asarray(regressed) - np.asarray(hint)) ** 2),
        rtol=1e-5)
    # The second stage keeps the pre-trained regressor.
    regressor, weights = term.regressor, term.regressor.get_weights()
    ft_keras.Distiller(teacher, student, [ft_keras.KnowledgeDistillation(),
                                          term])
    assert term.regressor is regressor
    for a, b in zip(weights, term.regressor.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_hint_trainer_keras_round_trip(tmp_path):
    term = ft_keras.FitNets("stage2", "stage2")
    trainer = term.hint_trainer(trained_teacher(),
                                digits_net("student", 8, seed=2))
    trainer.compile(keras.optimizers.SGD(0.01))
    x, _ = digits(64)
    trainer.fit(x, batch_size=32, epochs=1, verbose=0)
    trainer.save(tmp_path / "hint.keras")
    restored = keras.models.load_model(tmp_path / "hint.keras", compile=False)
    assert isinstance(restored, ft_keras.pretraining.HintTrainer)
    assert (restored.teacher_layer, restored.student_layer,
            restored.regressor.case) == ("stage2", "stage2", "valid")
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  trainer.predict(x, verbose=0))


def test_hint_trainer_rejects_a_regressor_for_other_taps():
    regressor = ft_keras.HintRegressor((8, 8, 16))
    with pytest.raises(ValueError, match=r"student layer 'stage2' \(None, 4, 4, "
                                         r"16\) to \(None, 8, 8, 16\).*'stage2' "
                                         r"\(None, 4, 4, 32\)"):
        ft_keras.pretraining.HintTrainer(
            trained_teacher(), digits_net("student", 8, seed=2), regressor,
            "stage2", "stage2")
