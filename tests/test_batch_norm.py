"""ft_keras.layers.BatchNormalization: Keras's layer on TensorFlow's fused
kernel. Same outputs, moving statistics and gradients as
`keras.layers.BatchNormalization`, weights interchangeable."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras
from ft_keras import models
from ft_keras.layers import BatchNormalization


def _pair(policy, **kwargs):
    rng = np.random.default_rng(0)
    layers = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5, dtype=policy, **kwargs)
        layer.build((None, 5, 5, 7))
        layers.append(layer)
    gamma = rng.uniform(0.5, 2.0, 7).astype("float32")
    beta = rng.normal(size=7).astype("float32")
    stats = [rng.normal(size=7).astype("float32"),
             rng.uniform(0.5, 3.0, 7).astype("float32")]
    for layer in layers:
        if layer.scale:
            layer.gamma.assign(gamma)
        if layer.center:
            layer.beta.assign(beta)
        layer.moving_mean.assign(stats[0])
        layer.moving_variance.assign(stats[1])
    return layers


def _run(layer, x, weights, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    return y, [np.asarray(g, np.float32) for g in grads]


# (policy, tolerance on outputs and gradients relative to their scale):
# bfloat16 keeps 8 bits of mantissa, one unit in the last place is 2**-8.
@pytest.mark.parametrize(
    "policy, tol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2),
                    ("mixed_float16", 2e-3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_keras_batch_normalization(policy, tol, training, affine):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(16, 5, 5, 7)) * 3 + 1).astype("float32")
    weights = tf.constant(rng.normal(size=x.shape).astype("float32"))
    reference, fused = _pair(policy, center=affine, scale=affine)
    y_ref, g_ref = _run(reference, x, weights, training)
    y, g = _run(fused, x, weights, training)
    assert y.dtype == y_ref.dtype == keras.DTypePolicy(policy).compute_dtype
    y, y_ref = np.asarray(y, np.float32), np.asarray(y_ref, np.float32)
    np.testing.assert_allclose(y, y_ref, atol=tol * np.abs(y_ref).max())
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max() + 1e-7)
    # The moving averages use the biased batch variance, as Keras's do.
    np.testing.assert_allclose(fused.moving_mean.numpy(),
                               reference.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(),
                               reference.moving_variance.numpy(), rtol=1e-5)


def test_moving_statistics_follow_the_batch_with_keras_momentum():
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(64, 4, 4, 3)).astype("float32")
    layer = BatchNormalization(momentum=0.9)
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 + 0.1 * x.var(axis=(0, 1, 2)), rtol=1e-4)


def test_runs_the_fused_kernel_in_a_graph():
    layer = BatchNormalization()
    layer.build((None, 4, 4, 3))
    for training in (True, False):
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(
            tf.TensorSpec((2, 4, 4, 3))).graph
        ops = {op.type for op in graph.get_operations()}
        assert "FusedBatchNormV3" in ops, ops
        assert "Mean" not in ops and "SquaredDifference" not in ops


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
    # A 2-D input (dense features), and a mask: Keras's own computation.
    for shape in [(8, 3), (4, 6, 3)]:
        x = np.random.default_rng(3).normal(size=shape).astype("float32")
        reference, fused = (cls() for cls in (keras.layers.BatchNormalization,
                                              BatchNormalization))
        np.testing.assert_allclose(fused(x, training=True),
                                   reference(x, training=True), atol=1e-5)
    renorm = BatchNormalization(renorm=True)
    renorm(np.ones((2, 3, 3, 4), "float32"), training=True)


def test_weights_interchange_with_keras_batch_normalization(tmp_path):
    """A network saved with Keras's layer (before ft_keras used this one)
    loads into ours and gives the same outputs, and back."""
    keras.utils.set_random_seed(0)
    ours = models.get("resnet20", num_classes=3, input_shape=(8, 8, 3))
    assert isinstance(ours.get_layer("stem_bn"), BatchNormalization)
    theirs = keras.models.clone_model(
        ours, clone_function=lambda layer: (
            keras.layers.BatchNormalization.from_config(layer.get_config())
            if isinstance(layer, BatchNormalization)
            else layer.__class__.from_config(layer.get_config())))
    assert type(theirs.get_layer("stem_bn")) is keras.layers.BatchNormalization
    rng = np.random.default_rng(4)
    theirs.set_weights([rng.normal(size=w.shape).astype("float32") ** 2
                        for w in theirs.get_weights()])
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    ours.load_weights(tmp_path / "theirs.weights.h5")
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False),
                               rtol=1e-4, atol=1e-4)
    ours.save(tmp_path / "ours.keras")
    reloaded = keras.saving.load_model(tmp_path / "ours.keras")
    assert isinstance(reloaded.get_layer("stem_bn"), BatchNormalization)
    np.testing.assert_allclose(reloaded(x, training=False), ours(x, training=False),
                               rtol=1e-6, atol=1e-6)


def test_config_round_trip_and_connectors_use_it():
    layer = BatchNormalization(momentum=0.8, epsilon=1e-4, center=False)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is BatchNormalization
    assert clone.get_config() == layer.get_config()
    paraphraser = ft_keras.Paraphraser(0.5, use_bn=True)
    paraphraser.build((None, 4, 4, 8))
    assert any(isinstance(layer, BatchNormalization)
               for block in paraphraser.encoder_blocks for layer in block)


def test_docstring_example_runs():
    import inspect
    import re

    doc = inspect.getdoc(BatchNormalization)
    code = re.search(r"Example:\s*```python\n(.*?)```", doc, re.S).group(1)
    exec(compile(code, "<BatchNormalization example>", "exec"), {"ft_keras": ft_keras})
