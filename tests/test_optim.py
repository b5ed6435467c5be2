"""Optimizers: TorchSGD against torch.optim.SGD's update rule written out in
NumPy, what it decays, and the weight-decay modes of build_optimizer."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from ft_keras import optim


def torch_sgd(params, grads_per_step, lrs, momentum, weight_decay, nesterov):
    """torch.optim.SGD (dampening 0) step by step, in float64, as its
    documentation writes it."""
    params = [p.astype(np.float64) for p in params]
    buffers = [None] * len(params)
    for grads, lr in zip(grads_per_step, lrs):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.astype(np.float64) + weight_decay * p
            if momentum:
                buffers[i] = g if buffers[i] is None else momentum * buffers[i] + g
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            params[i] = p - lr * g
    return params


def random_problem(steps=6, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 2), (2,), (4,)]  # a kernel, a bias, a BN gamma
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("momentum, nesterov", [(0.9, False), (0.9, True),
                                                (0.0, False)])
def test_torch_sgd_matches_pytorch_update_rule(momentum, nesterov):
    params, grads = random_problem()
    # The rate drops x0.1 after 3 steps: PyTorch's buffer holds gradients,
    # so the drop acts at once.
    schedule = optim.EpochSchedule(0.1, "step", boundaries=[3], decay=0.1)
    lrs = [0.1] * 3 + [0.01] * 3
    weight_decay = 0.05
    optimizer = optim.TorchSGD(schedule, momentum=momentum, nesterov=nesterov,
                               coupled_weight_decay=weight_decay)
    variables = [keras.Variable(p) for p in params]
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)
    expected = torch_sgd(params, grads, lrs, momentum, weight_decay, nesterov)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(np.asarray(variable), want, rtol=1e-5,
                                   atol=1e-7)


def test_keras_sgd_is_not_pytorch_sgd_when_the_rate_changes():
    # Why TorchSGD exists: Keras' SGD keeps the rate inside its velocity and
    # decays outside the gradient; the same settings give other weights.
    params, grads = random_problem()
    schedule = optim.EpochSchedule(0.1, "step", boundaries=[3], decay=0.1)
    keras_sgd = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=0.05)
    variables = [keras.Variable(p) for p in params]
    for step_grads in grads:
        keras_sgd.apply([tf.constant(g) for g in step_grads], variables)
    expected = torch_sgd(params, grads, [0.1] * 3 + [0.01] * 3, 0.9, 0.05,
                         False)
    assert not np.allclose(np.asarray(variables[0]), expected[0], rtol=1e-3)


def test_coupled_decay_reaches_biases_and_batchnorm_but_not_statistics():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, x)
    for v in model.weights:  # non-zero everywhere, statistics included
        v.assign(np.full(v.shape, 2.0, np.float32))
    lr, weight_decay = 0.1, 0.5
    optimizer = optim.TorchSGD(lr, momentum=0.9,
                               coupled_weight_decay=weight_decay)
    zeros = [tf.zeros(v.shape) for v in model.trainable_variables]
    optimizer.apply(zeros, model.trainable_variables)
    # First step, zero loss gradient: buffer = wd * w, w -= lr * wd * w.
    names = set()
    for v in model.trainable_variables:
        np.testing.assert_allclose(np.asarray(v), 2.0 * (1 - lr * weight_decay),
                                   rtol=1e-6)
        names.add(v.path.split("/")[-1])
    assert names == {"kernel", "bias", "gamma", "beta"}
    for v in model.non_trainable_variables:  # moving mean and variance
        np.testing.assert_array_equal(np.asarray(v), 2.0)


def test_exclude_from_weight_decay_is_respected():
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    optimizer = optim.TorchSGD(0.1, coupled_weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.apply([tf.zeros((2, 2)), tf.zeros((2,))], [kernel, bias])
    np.testing.assert_allclose(np.asarray(kernel), 0.95, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(bias), 1.0)


def test_torch_sgd_validates_its_decay():
    with pytest.raises(ValueError, match="coupled_weight_decay=-0.1"):
        optim.TorchSGD(0.1, coupled_weight_decay=-0.1)
    with pytest.raises(ValueError, match="not Keras' decoupled `weight_decay`"):
        optim.TorchSGD(0.1, weight_decay=1e-4)


def test_torch_sgd_round_trips_in_a_keras_file(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    schedule = optim.EpochSchedule(0.1, "step", boundaries=[5], decay=0.1)
    model.compile(optim.TorchSGD(schedule, momentum=0.9, nesterov=True,
                                 coupled_weight_decay=5e-4), loss="mse")
    x = np.ones((4, 3), np.float32)
    model.fit(x, np.zeros((4, 2), np.float32), verbose=0)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    config = restored.optimizer.get_config()
    assert isinstance(restored.optimizer, optim.TorchSGD)
    assert (config["coupled_weight_decay"], config["momentum"],
            config["nesterov"], config["weight_decay"]) == (5e-4, 0.9, True, None)
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_torch_sgd_under_mirrored_strategy_matches_one_device():
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)

    def step(strategy):
        with strategy.scope():
            inputs = keras.Input((3,))
            outputs = keras.layers.Dense(
                2, kernel_initializer=keras.initializers.Constant(0.5),
                bias_initializer=keras.initializers.Constant(1.0))(inputs)
            model = keras.Model(inputs, outputs)
            model.compile(optim.TorchSGD(0.1, momentum=0.9,
                                         coupled_weight_decay=0.1), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        return [np.asarray(v) for v in model.weights]

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    mirrored = step(tf.distribute.MirroredStrategy(devices))
    single = step(tf.distribute.get_strategy())
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_build_optimizer_weight_decay_modes():
    coupled = optim.build_optimizer(10, 4, weight_decay=5e-4,
                                    weight_decay_mode="coupled")
    assert isinstance(coupled, optim.TorchSGD)
    assert coupled.coupled_weight_decay == 5e-4 and coupled.weight_decay is None
    decoupled = optim.build_optimizer(10, 4, weight_decay=5e-4)
    assert type(decoupled) is keras.optimizers.SGD
    assert decoupled.weight_decay == 5e-4
    assert optim.build_optimizer(10, 4, weight_decay_mode="coupled") \
        .coupled_weight_decay == 0.0


def test_build_optimizer_rejects_bad_modes():
    with pytest.raises(ValueError, match="Received: weight_decay_mode='l2'"):
        optim.build_optimizer(10, 4, weight_decay_mode="l2")
    with pytest.raises(ValueError, match="needs `optimizer='sgd'`"):
        optim.build_optimizer(10, 4, optimizer="adam",
                              weight_decay_mode="coupled")


def test_epoch_schedule_decays_at_the_boundary_where_keras_decays_one_step_late():
    ours = optim.EpochSchedule(0.1, "step", total_steps=100, boundaries=[50],
                               decay=0.1)
    keras_rate = keras.optimizers.schedules.PiecewiseConstantDecay([50],
                                                                   [0.1, 0.01])
    # PyTorch's MultiStepLR: the rate of boundary step 50 is already 0.01.
    assert float(ours(50)) == pytest.approx(0.01)
    assert float(keras_rate(50)) == pytest.approx(0.1)
    assert float(ours(49)) == float(keras_rate(49)) == pytest.approx(0.1)


def test_epoch_schedule_cosine_includes_the_warm_up_in_its_timeline():
    ours = optim.EpochSchedule(0.1, "cosine", total_steps=100, warmup_steps=10)
    keras_rate = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    # Step 55: halfway through the 100 steps here; Keras is 45 steps into a
    # decay that starts after its warm-up.
    assert float(ours(55)) == pytest.approx(0.05 * (1 + np.cos(np.pi * 0.55)))
    assert float(keras_rate(55)) == pytest.approx(
        0.05 * (1 + np.cos(np.pi * 0.45)), rel=1e-5)
