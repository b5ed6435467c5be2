"""Paraphraser and Translator: shapes, parameter counts, config, saving."""

import os

import numpy as np
import pytest

import keras

import ft_keras
from ft_keras.layers import factor_channels


def conv_params(c_in, c_out, bn):
    # 3x3 kernel + bias, plus gamma/beta/moving mean/moving variance with BN.
    return 9 * c_in * c_out + c_out + (4 * c_out if bn else 0)


def paraphraser_params(c, m, bn):
    layers = [(c, c), (c, m), (m, m), (m, m), (m, c), (c, c)]
    return sum(conv_params(i, o, bn) for i, o in layers)


def translator_params(c_s, out, bn):
    layers = [(c_s, c_s), (c_s, out), (out, out)]
    return sum(conv_params(i, o, bn) for i, o in layers)


@pytest.mark.parametrize(
    "channels, rate, expected",
    [(64, 0.5, 32), (3, 0.5, 2), (5, 0.5, 2), (10, 0.25, 2), (7, 0.5, 4),
     (1, 0.1, 1), (64, 1.0, 64), (16, 2.0, 32)],
)
def test_factor_channels_default_rounds_halves_to_even_and_at_least_one(
        channels, rate, expected):
    # The paper's code: int(round(C * k)); 2.5 -> 2, 3.5 -> 4.
    assert factor_channels(channels, rate) == expected


@pytest.mark.parametrize(
    "rounding, expected",
    [("half_even", [2, 2, 4, 2, 6, 0, 29]),   # Python's round (the paper)
     ("floor", [1, 2, 3, 2, 5, 0, 28]),       # int(C * k): RepDistiller, torchdistill
     ("half_up", [2, 3, 4, 3, 6, 0, 29])],
)
def test_factor_channels_rounding_rules(rounding, expected):
    # C * k = 1.5, 2.5, 3.5, 2.5, 5.5, 0.3, and 28.999999999999996 (the
    # float the references compute for 100 * 0.29, which int() makes 28).
    cases = [(3, 0.5), (5, 0.5), (7, 0.5), (10, 0.25), (11, 0.5), (1, 0.3),
             (100, 0.29)]
    got = [factor_channels(c, k, rounding=rounding) for c, k in cases]
    assert got == [max(1, e) for e in expected]


def test_factor_channels_equal_the_reference_expressions():
    for channels in range(1, 130):
        for rate in (0.25, 0.3, 0.5, 0.7, 1.5):
            assert factor_channels(channels, rate) == max(
                1, int(round(channels * rate)))
            assert factor_channels(channels, rate, rounding="floor") == max(
                1, int(channels * rate))


def test_rounding_is_validated():
    with pytest.raises(ValueError, match="Received: rounding='up'"):
        factor_channels(5, 0.5, rounding="up")
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        ft_keras.Paraphraser(rounding="truncate")


@pytest.mark.parametrize("rounding, channels", [("half_even", 2), ("floor", 2),
                                                ("half_up", 3)])
def test_paraphraser_factor_channels_follow_rounding(rounding, channels):
    paraphraser = ft_keras.Paraphraser(rate=0.5, rounding=rounding)
    x = np.ones((1, 4, 4, 5), np.float32)
    assert paraphraser(x).shape[-1] == channels
    assert paraphraser.compute_output_shape((None, 4, 4, 5))[-1] == channels
    assert paraphraser.count_params() == paraphraser_params(5, channels, False)


@pytest.mark.parametrize("use_bn", [False, True])
def test_paraphraser_shapes_and_parameter_count(use_bn):
    paraphraser = ft_keras.Paraphraser(rate=0.5, use_bn=use_bn)
    x = np.random.default_rng(0).random((2, 8, 6, 64), dtype=np.float32)
    assert tuple(paraphraser(x).shape) == (2, 8, 6, 32)
    assert tuple(paraphraser.reconstruct(x).shape) == (2, 8, 6, 64)
    assert paraphraser.factor_channels == 32
    assert paraphraser.count_params() == paraphraser_params(64, 32, use_bn)
    assert paraphraser.compute_output_shape((None, 8, 6, 64)) == (None, 8, 6, 32)


def test_paraphraser_odd_channels_use_rounded_factor():
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    x = np.ones((1, 4, 4, 7), np.float32)
    assert paraphraser(x).shape[-1] == 4
    assert paraphraser.count_params() == paraphraser_params(7, 4, False)


@pytest.mark.parametrize("use_bn", [False, True])
def test_translator_shapes_and_parameter_count(use_bn):
    translator = ft_keras.Translator(out_channels=32, use_bn=use_bn)
    x = np.ones((3, 8, 8, 16), np.float32)
    assert tuple(translator(x).shape) == (3, 8, 8, 32)
    assert translator.count_params() == translator_params(16, 32, use_bn)


def test_leaky_relu_slope_is_applied_to_every_output():
    translator = ft_keras.Translator(out_channels=8, negative_slope=0.25)
    x = np.random.default_rng(1).normal(size=(4, 5, 5, 8)).astype(np.float32)
    out = np.asarray(translator(x))
    last_conv = translator.blocks[-1][0]
    pre = np.asarray(
        last_conv(translator.blocks[1][-1](translator.blocks[1][0](
            translator.blocks[0][-1](translator.blocks[0][0](x))))))
    expected = np.where(pre >= 0, pre, 0.25 * pre)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert (out < 0).any()


@pytest.mark.parametrize("rate", [0, -0.5, 5, "0.5", True, None])
def test_paraphraser_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match="`rate` must be a number in"):
        ft_keras.Paraphraser(rate=rate)


@pytest.mark.parametrize("out_channels", [0, -1, 2.5, "8", True])
def test_translator_rejects_bad_out_channels(out_channels):
    with pytest.raises(ValueError, match="`out_channels` must be a positive"):
        ft_keras.Translator(out_channels=out_channels)


def test_negative_slope_validated():
    with pytest.raises(ValueError, match="negative_slope=-1"):
        ft_keras.Translator(8, negative_slope=-1)


def test_connectors_reject_non_image_input():
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        ft_keras.Paraphraser()(np.ones((2, 16), np.float32))


def test_get_config_round_trip():
    paraphraser = ft_keras.Paraphraser(rate=0.25, use_bn=True, negative_slope=0.2,
                                       rounding="floor")
    clone = ft_keras.Paraphraser.from_config(paraphraser.get_config())
    assert (clone.rate, clone.use_bn, clone.negative_slope, clone.rounding) == (
        0.25, True, 0.2, "floor")
    translator = ft_keras.Translator(12, use_bn=True, negative_slope=0.05)
    clone = ft_keras.Translator.from_config(translator.get_config())
    assert (clone.out_channels, clone.use_bn, clone.negative_slope) == (
        12, True, 0.05)


def test_keras_file_round_trip_is_exact(tmp_path):
    inputs = keras.Input((8, 8, 16))
    factor = ft_keras.Paraphraser(rate=0.5, use_bn=True, name="para",
                                  rounding="floor")(inputs)
    student_factor = ft_keras.Translator(8, use_bn=True, name="trans")(inputs)
    model = keras.Model(inputs, [factor, student_factor])
    x = np.random.default_rng(2).random((2, 8, 8, 16), dtype=np.float32)
    # Move BN statistics away from their initial values.
    model(x, training=True)
    path = tmp_path / "connectors.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    for a, b in zip(model(x), restored(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    para = restored.get_layer("para")
    assert para.rounding == "floor"
    np.testing.assert_array_equal(
        np.asarray(para.reconstruct(x)),
        np.asarray(model.get_layer("para").reconstruct(x)),
    )


def test_kernel_regularizer_adds_losses_and_round_trips():
    translator = ft_keras.Translator(
        4, kernel_regularizer=keras.regularizers.L2(0.5))
    translator.build((None, 4, 4, 2))
    expected = 0.5 * sum(float(np.sum(np.square(np.array(block[0].kernel))))
                         for block in translator.blocks)
    np.testing.assert_allclose(
        float(sum(translator.losses)), expected, rtol=1e-6)
    clone = ft_keras.Translator.from_config(translator.get_config())
    assert clone.kernel_regularizer.get_config() == {"l2": 0.5}


def test_connectors_compute_in_float32_under_a_mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        paraphraser = ft_keras.Paraphraser(0.5)
        translator = ft_keras.Translator(4)
        explicit = ft_keras.Translator(4, dtype="mixed_bfloat16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = keras.ops.cast(np.ones((1, 4, 4, 8)), "bfloat16")
    assert paraphraser.compute_dtype == translator.compute_dtype == "float32"
    assert keras.backend.standardize_dtype(paraphraser(x).dtype) == "float32"
    assert keras.backend.standardize_dtype(translator(x).dtype) == "float32"
    assert explicit.compute_dtype == "bfloat16"


@pytest.mark.parametrize("forms", [
    ("Conv2D", "PatchConv2D"), ("Conv2DTranspose", "PatchConv2DTranspose")])
def test_patch_forms_equal_keras_convolutions_values_and_gradients(forms):
    import tensorflow as tf

    from ft_keras import layers as ft_layers

    base_cls, patch_cls = getattr(keras.layers, forms[0]), getattr(
        ft_layers, forms[1])
    x = tf.random.stateless_normal((3, 4, 5, 6), (2, 3))

    def pair(kernel_size):
        base = base_cls(5, kernel_size, padding="same",
                        bias_initializer="random_normal")
        patch = patch_cls(5, kernel_size, padding="same")
        base.build(x.shape)
        patch.build(x.shape)
        patch.set_weights(base.get_weights())
        assert [w.name for w in patch.weights] == [w.name for w in base.weights]
        return base, patch

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.range(5, dtype=tf.float32))
        return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]

    base, patch = pair(3)
    for got, expected in zip(gradients(patch), gradients(base)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Even and 5x5 kernels pad as "same" does, on each side.
    for kernel_size in (2, 5):
        base, patch = pair(kernel_size)
        np.testing.assert_allclose(patch(x), base(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="strides=.*Received: strides=\\(2, 2\\)"):
        patch_cls(5, 3, strides=2, padding="same")
    with pytest.raises(ValueError, match=f"use keras.layers.{forms[0]} for"):
        patch_cls(5, 3, padding="valid")


@pytest.mark.parametrize("path", ["this_machine", "float32_products"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["PatchConv2D", "PatchConv2DTranspose"])
def test_patch_forms_are_as_exact_as_keras_convolutions_in_16_bits(
        name, dtype, path, monkeypatch):
    import tensorflow as tf

    from ft_keras import _rounding
    from ft_keras import layers as ft_layers

    if path == "float32_products":  # the path of a CPU without 16-bit GEMM
        monkeypatch.setitem(_rounding._ANSWERS,
                            (keras.backend.backend(), dtype), False)
    # On the same 16-bit inputs and weights, against the float32 result of
    # those values: every output within half a 16-bit step (rounded once),
    # and never more outputs beyond it, nor a larger error, than Keras'
    # convolution on this machine. Eigen's bfloat16 matmul (TensorFlow's
    # kernels on a CPU without AVX-512, or TF_ENABLE_ONEDNN_OPTS=0) put 48%
    # of these outputs beyond half a step when the patch layer used it.
    keras_cls = getattr(keras.layers, name[len("Patch"):])
    x = tf.cast(tf.random.stateless_normal((4, 4, 4, 64), (5, 6)), dtype)
    patch = getattr(ft_layers, name)(32, 3, padding="same", dtype=dtype)
    patch.build(x.shape)
    weights = patch.get_weights()
    errors = {}
    for label, layer in (("patch", patch),
                         ("keras", keras_cls(32, 3, padding="same", dtype=dtype))):
        exact = keras_cls(32, 3, padding="same", dtype="float32")
        exact.build(x.shape)
        if not layer.built:
            layer.build(x.shape)
        layer.set_weights(weights)
        exact.set_weights([tf.cast(tf.cast(w, dtype), "float32")
                           for w in weights])
        reference = exact(tf.cast(x, "float32")).numpy().astype("float64")
        error = np.abs(tf.cast(layer(x), "float32").numpy() - reference)
        # In half steps, past float32's own summation error (about 1e-6
        # here), which matters only on outputs that cancel to near zero.
        errors[label] = (np.maximum(error - 1e-5, 0)
                         / _rounding.half_step(reference, dtype))
    beyond = {label: int(np.sum(e > 1.01)) for label, e in errors.items()}
    assert beyond["patch"] == 0, (beyond, errors["patch"].max())
    assert beyond["patch"] <= beyond["keras"]
    assert errors["patch"].max() <= max(errors["keras"].max(), 1.01)


def test_the_rounding_probe_tells_eigen_from_onednn_bfloat16_kernels():
    import subprocess
    import sys

    # TensorFlow's Eigen kernels (oneDNN off) round partial sums of a
    # bfloat16 matmul on every CPU; float32 products round once.
    # The probe answers eagerly inside a function's trace too.
    script = (
        "import tensorflow as tf\n"
        "from ft_keras import _rounding\n"
        "traced = tf.function(lambda: tf.constant("
        "_rounding.matmul_rounds_once('bfloat16')))\n"
        "print(bool(traced()), _rounding.matmul_rounds_once('float32'))\n"
    )
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    out = subprocess.run([sys.executable, "-c", script], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "True"]


def test_connectors_use_the_patch_conv_on_small_wide_maps_only():
    from ft_keras.layers import PatchConv2D

    def kinds(layer, shape):
        layer.build(shape)
        blocks = getattr(layer, "blocks", None) or layer.encoder_blocks
        return [type(block[0]) is PatchConv2D for block in blocks]

    # ResNet-50's tap at CIFAR shapes, and a translator from 1,024 channels.
    assert kinds(ft_keras.Translator(8), (None, 4, 4, 1024)) == [
        True, True, False]
    assert kinds(ft_keras.Translator(8), (None, 8, 8, 1024)) == [False] * 3
    assert kinds(ft_keras.Translator(8), (None, 4, 4, 512)) == [False] * 3
    assert kinds(ft_keras.Paraphraser(0.5), (None, 8, 8, 64)) == [False] * 3
    # The decoder's transposed convolutions follow the same rule.
    from ft_keras.layers import PatchConv2DTranspose

    def decoder(shape):
        paraphraser = ft_keras.Paraphraser(0.5)
        paraphraser.build(shape)
        return [type(block[0]) is PatchConv2DTranspose
                for block in paraphraser.decoder_blocks]

    assert decoder((None, 4, 4, 2048)) == [True] * 3
    assert decoder((None, 4, 4, 1024)) == [False, False, True]
    assert decoder((None, 8, 8, 2048)) == [False] * 3


def test_a_patch_conv_translator_round_trips_through_a_keras_file(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1024)), ft_keras.Translator(4)])
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 1024)).astype("float32")
    path = tmp_path / "translator.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.layers[-1].blocks[0][0]).__name__ == "PatchConv2D"
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  model.predict(x, verbose=0))
