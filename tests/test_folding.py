"""fold_batch_norm: a frozen network's Conv2D -> BatchNormalization pairs as
one convolution, the same function in inference."""

import keras
import ml_dtypes
import numpy as np
import pytest

import ft_keras
from ft_keras import models


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def randomize_batch_norms(model, seed=0):
    """Statistics and affine weights far from their initial 0/1, so that a
    wrong fold cannot pass."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=shape) * 0.3)
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, size=shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size=shape))
            layer.beta.assign(rng.normal(size=shape) * 0.3)
    return model


def images(shape, n=4, seed=1):
    return np.random.default_rng(seed).uniform(size=(n,) + shape).astype("float32")


def count(model, cls):
    return sum(isinstance(layer, cls) for layer in model.layers)


@pytest.mark.parametrize("name, folds", [
    ("resnet20", 20),  # every conv but the last, whose pre-BN map is `last_conv`
    ("wrn16_2", 7),  # pre-activation: only a conv followed by the next BN
    ("mobilenetv2_half", 35),  # the depthwise convs are not Conv2D
])
def test_folded_network_computes_the_same_inference(name, folds):
    model = randomize_batch_norms(models.get(name, num_classes=10))
    folded = models.fold_batch_norm(model)
    assert count(folded, models.FoldedConv2D) == folds
    assert count(folded, models.FoldedAway) == folds
    x = images((32, 32, 3))
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x)), expected,
                               atol=1e-5 * np.abs(expected).max())
    # Same variables, nothing copied; taps keep their names.
    assert {id(v) for v in folded.weights} == {id(v) for v in model.weights}
    assert folded.get_layer("stage2").name == "stage2"


def test_folding_changes_no_layer_of_the_model():
    model = models.get("wrn16_2", num_classes=10, weight_decay=5e-4)
    model.trainable = False
    model.get_layer("stem_conv").trainable = True  # a user's choice, kept
    flags = {layer.name: layer.trainable for layer in model.layers}
    folded = models.fold_batch_norm(model)
    assert {layer.name: layer.trainable for layer in model.layers} == flags
    trainable = {id(v) for v in model.get_layer("stem_conv").trainable_weights}
    assert {id(v) for v in folded.trainable_weights} == trainable


def test_the_fold_follows_the_weights_it_shares():
    model = randomize_batch_norms(models.get("resnet20", num_classes=10))
    folded = models.fold_batch_norm(model)
    x = images((32, 32, 3))
    before = np.asarray(folded(x))
    # A teacher restored after it was folded: the folded model follows.
    randomize_batch_norms(model, seed=7)
    expected = np.asarray(model(x, training=False))
    after = np.asarray(folded(x))
    assert np.abs(after - before).max() > 0.1 * np.abs(expected).max()
    np.testing.assert_allclose(after, expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_folded_network_under_a_mixed_policy(policy):
    """The fold is float32 arithmetic on the float32 variables; the conv
    runs in the compute dtype like the layers it replaces."""
    keras.utils.set_random_seed(0)
    float32 = randomize_batch_norms(models.get("resnet20", num_classes=10))
    keras.mixed_precision.set_global_policy(policy)
    model = models.get("resnet20", num_classes=10)
    model.set_weights(float32.get_weights())
    folded = models.fold_batch_norm(model)
    layer = folded.get_layer("stem_conv")
    assert isinstance(layer, models.FoldedConv2D)
    assert layer.compute_dtype == policy.split("_")[1]
    assert layer.conv.kernel.dtype == "float32"
    x = images((32, 32, 3), n=16)
    expected = np.asarray(float32(x, training=False))
    out = np.asarray(folded(x), "float32")
    # Off float32 by the compute dtype's rounding, as the unfolded network
    # is (under 1 eps in mean relative error over seeds; a wrong fold is
    # off by O(1)). A ratio to the unfolded network's error is not a sound
    # bound: both are rounding noise, and their ratio ranged 0.6-2.6.
    eps = float(ml_dtypes.finfo(layer.compute_dtype).eps)
    relative = np.abs(out - expected).mean() / np.abs(expected).mean()
    assert relative <= 4 * eps, (relative, eps)


def tiny(conv_activation=None, tap_conv=False, bn_axis=-1):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=True,
                            activation=conv_activation, name="conv")(inputs)
    y = keras.layers.BatchNormalization(axis=bn_axis, name="bn")(x)
    outputs = [keras.layers.ReLU(name="relu")(y)]
    if tap_conv:
        outputs.append(keras.layers.Identity(name="pre_bn")(x))
    return randomize_batch_norms(keras.Model(inputs, outputs))


def test_a_conv_bias_is_folded_too_and_the_folded_model_saves(tmp_path):
    model = tiny()
    folded = models.fold_batch_norm(model)
    assert isinstance(folded.get_layer("conv"), models.FoldedConv2D)
    model.get_layer("conv").bias.assign(np.arange(4, dtype="float32"))
    x = images((6, 6, 3))
    np.testing.assert_allclose(folded(x), model(x, training=False), atol=1e-5)
    folded.save(tmp_path / "folded.keras")
    restored = keras.models.load_model(tmp_path / "folded.keras")
    np.testing.assert_allclose(restored(x), folded(x), atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(conv_activation="relu"),  # BN(relu(conv)) is not a conv
    dict(tap_conv=True),  # the pre-BN map is needed as it is
    dict(bn_axis=1),  # not over the channels
])
def test_what_cannot_be_folded_is_left_alone(kwargs):
    model = tiny(**kwargs)
    assert models.fold_batch_norm(model) is model


def test_folding_a_pair_that_is_not_one_conv_names_why():
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="c")
    bn = keras.layers.BatchNormalization(name="b")
    with pytest.raises(ValueError, match="Cannot fold 'b' into 'c': the conv "
                       "has an activation"):
        models.FoldedConv2D(conv, bn)
    with pytest.raises(ValueError, match="Dense is not a Conv2D"):
        models.FoldedConv2D(keras.layers.Dense(3), bn)


def test_the_distillers_run_their_frozen_teacher_folded():
    teacher = randomize_batch_norms(models.get("resnet20", num_classes=10))
    student = models.get("resnet20", num_classes=10, model_name="student")
    distiller = ft_keras.Distiller(teacher, student, terms=[
        ft_keras.FactorTransfer(ft_keras.Paraphraser(rate=0.5),
                                ft_keras.Translator(32), "stage3", "stage3")])
    trainer = ft_keras.ParaphraserTrainer(
        teacher, ft_keras.Paraphraser(rate=0.5), "stage3")
    for features in (distiller._teacher_features, trainer._teacher_features):
        assert count(features, models.FoldedConv2D) > 0
    x = images((32, 32, 3))
    tap = keras.Model(teacher.input, teacher.get_layer("stage3").output)
    expected = np.asarray(tap(x, training=False))
    got = np.asarray(trainer(x)["teacher_map"])
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
