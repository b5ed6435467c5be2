"""Tests for `ft_keras.models`: architectures, feature taps, the registry,
serialization and mixed precision. Build and forward passes only."""

import functools
import inspect
import re

import keras
import numpy as np
import pytest

from ft_keras import models


@functools.lru_cache(maxsize=None)
def _built(name, **kwargs):
    """Each (name, kwargs) network is built once per test session."""
    return models.get(name, **kwargs)


def _built_kw(name, kwargs):
    return _built(name, **dict(kwargs))


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _producer(tensor):
    return tensor._keras_history.operation


def _consumers(model, layer):
    out = layer.output
    return [
        other
        for other in model.layers
        if any(t is out for t in keras.tree.flatten(other.input))
    ]


@pytest.fixture
def float32_policy_after():
    """Restores the global dtype policy even if the test fails."""
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- Parameter counts --------------------------------------------------------

# (name, kwargs, count_params() incl. BN moving stats, trainable, published
# ballpark of the trainable count, relative tolerance for the ballpark).
PARAM_COUNTS = [
    # He et al. 2016 / akamaster: ResNet-20 0.27M (option A: 269,722).
    ("resnet20", (), 274_042, 272_474, 0.27e6, 0.02),
    ("resnet20", (("shortcut", "zero_pad"),), 271_098, 269_722, 269_722, 0),
    # He et al. 2016: ResNet-56 0.85M (option A: 853,018).
    ("resnet56", (), 860_026, 855_770, 0.85e6, 0.02),
    # He et al. 2016: ResNet-110 1.7M (option A: 1,727,962).
    ("resnet110", (), 1_739_002, 1_730_714, 1.7e6, 0.03),
    ("resnet110", (("shortcut", "zero_pad"),), 1_736_058, 1_727_962,
     1_727_962, 0),
    # Zagoruyko & Komodakis: WRN-40-2 2.2M; RepDistiller CIFAR-100: 2.26M.
    ("wrn40_2", (), 2_248_954, 2_243_546, 2.2e6, 0.03),
    ("wrn40_2", (("num_classes", 100),), 2_260_564, 2_255_156, 2.26e6, 0.01),
    # WRN-16-2 0.7M.
    ("wrn16_2", (), 693_498, 691_674, 0.7e6, 0.02),
    # MMPretrain resnet18_8xb16_cifar10: 11.17M.
    ("resnet18", (), 11_183_562, 11_173_962, 11.17e6, 0.01),
    ("resnet34", (), 21_299_146, 21_282_122, 21.28e6, 0.01),
    # MMPretrain resnet50_8xb16_cifar10: 23.52M.
    ("resnet50", (), 23_573_962, 23_520_842, 23.52e6, 0.01),
    # torchvision (BN running stats are buffers there): trainable must match
    # exactly.
    ("imagenet_resnet18", (), 11_699_112, 11_689_512, 11_689_512, 0),
    ("imagenet_resnet34", (), 21_814_696, 21_797_672, 21_797_672, 0),
    ("imagenet_resnet50", (), 25_610_152, 25_557_032, 25_557_032, 0),
]


@pytest.mark.parametrize(
    "name, kwargs, total, trainable, published, rtol",
    PARAM_COUNTS,
    ids=[f"{p[0]}{dict(p[1]) or ''}" for p in PARAM_COUNTS],
)
def test_parameter_counts(name, kwargs, total, trainable, published, rtol):
    model = _built_kw(name, kwargs)
    assert model.count_params() == total
    assert _trainable_params(model) == trainable
    assert trainable == pytest.approx(published, rel=rtol)


def test_zero_pad_shortcut_has_fewer_params_than_projection():
    projection = _built("resnet20")
    zero_pad = _built("resnet20", shortcut="zero_pad")
    assert zero_pad.count_params() < projection.count_params()
    shortcuts = [
        layer for layer in zero_pad.layers
        if isinstance(layer, models.ZeroPadShortcut)
    ]
    assert [layer.name for layer in shortcuts] == [
        "stage2_block1_shortcut", "stage3_block1_shortcut"]
    assert all(layer.count_params() == 0 for layer in shortcuts)


# --- Feature taps ------------------------------------------------------------

TAP_SHAPES = {
    "resnet20": [(32, 32, 16), (16, 16, 32), (8, 8, 64), (8, 8, 64)],
    "resnet110": [(32, 32, 16), (16, 16, 32), (8, 8, 64), (8, 8, 64)],
    "wrn16_2": [(32, 32, 32), (16, 16, 64), (8, 8, 128), (8, 8, 128)],
    "wrn40_2": [(32, 32, 32), (16, 16, 64), (8, 8, 128), (8, 8, 128)],
    "resnet18": [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512),
                 (4, 4, 512)],
    "resnet34": [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512),
                 (4, 4, 512)],
    "resnet50": [(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048),
                 (4, 4, 2048)],
    "imagenet_resnet18": [(56, 56, 64), (28, 28, 128), (14, 14, 256),
                          (7, 7, 512), (7, 7, 512)],
    "imagenet_resnet50": [(56, 56, 256), (28, 28, 512), (14, 14, 1024),
                          (7, 7, 2048), (7, 7, 2048)],
}


@pytest.mark.parametrize("name", sorted(TAP_SHAPES))
def test_feature_taps_and_shapes(name):
    model = _built(name)
    expected = TAP_SHAPES[name]
    stages = [f"stage{i}" for i in range(1, len(expected))]
    assert models.feature_taps(model) == stages + ["last_conv"]
    shapes = [
        tuple(model.get_layer(tap).output.shape[1:])
        for tap in models.feature_taps(model)
    ]
    assert shapes == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50",
                                  "imagenet_resnet18"])
def test_last_conv_is_pre_bn_output_of_last_block_conv(name):
    model = _built(name)
    tap = model.get_layer("last_conv")
    conv = _producer(tap.input)
    assert isinstance(conv, keras.layers.Conv2D)
    last_stage = models.feature_taps(model)[-2]
    assert re.fullmatch(rf"{last_stage}_block\d+_conv[23]", conv.name)
    (consumer,) = _consumers(model, tap)
    assert isinstance(consumer, keras.layers.BatchNormalization)


def test_wrn_last_conv_feeds_the_final_residual_sum():
    model = _built("wrn16_2")
    tap = model.get_layer("last_conv")
    assert _producer(tap.input).name == "stage3_block2_conv2"
    assert [c.name for c in _consumers(model, tap)] == ["stage3_block2_add"]


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "imagenet_resnet34"])
def test_stage_taps_of_post_activation_resnets_follow_a_relu(name):
    model = _built(name)
    for tap in models.feature_taps(model)[:-1]:
        producer = _producer(model.get_layer(tap).input)
        assert isinstance(producer, keras.layers.ReLU), (tap, producer.name)
        assert producer.name.startswith(f"{tap}_block")


def test_wrn_stage_taps_are_residual_sums_then_final_relu():
    model = _built("wrn16_2")
    producers = [
        _producer(model.get_layer(tap).input).name
        for tap in ("stage1", "stage2", "stage3")
    ]
    assert producers == ["stage1_block2_add", "stage2_block2_add",
                         "final_relu"]


def test_feature_taps_of_a_model_without_taps_is_empty():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert models.feature_taps(model) == []


# --- Layers and conventions --------------------------------------------------


def test_batchnorm_and_conv_follow_pytorch_conventions():
    model = _built("resnet20")
    bns = [l for l in model.layers
           if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(bns) == len(convs) == 19 + 2  # 19 convs + 2 projections.
    for bn in bns:
        assert bn.momentum == 0.9 and bn.epsilon == 1e-5
    for conv in convs:
        assert not conv.use_bias
        init = conv.kernel_initializer.get_config()
        assert (init["scale"], init["mode"], init["distribution"]) == (
            2.0, "fan_out", "untruncated_normal")
    logits = model.get_layer("logits")
    assert model.layers[-1] is logits
    assert logits.activation is keras.activations.linear


def test_conv_kernels_are_not_identical():
    model = _built("resnet20")
    a = model.get_layer("stage1_block1_conv2").kernel.numpy()
    b = model.get_layer("stage1_block2_conv2").kernel.numpy()
    assert not np.allclose(a, b)
    # He-normal fan-out: std = sqrt(2 / (3 * 3 * 16)).
    assert a.std() == pytest.approx(np.sqrt(2 / 144), rel=0.2)


def test_strided_convs_pad_symmetrically_like_pytorch():
    model = _built("imagenet_resnet18")
    assert model.get_layer("stem_conv_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("stem_conv").padding == "valid"
    assert model.get_layer("stem_pool_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("stage2_block1_conv1_pad").padding == (
        (1, 1), (1, 1))
    assert tuple(model.get_layer("stem_conv").output.shape[1:]) == (
        112, 112, 64)
    assert tuple(model.get_layer("stem_pool").output.shape[1:]) == (
        56, 56, 64)


def test_weight_decay_is_half_l2_on_conv_and_dense_kernels():
    model = models.resnet20(weight_decay=5e-4)
    kernels = [
        l.kernel for l in model.layers
        if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(model.losses) == len(kernels) == 22
    expected = sum(5e-4 / 2 * np.sum(k.numpy() ** 2) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_no_regularization_losses_without_weight_decay():
    assert _built("resnet20").losses == []


def test_wrn_dropout_adds_one_dropout_layer_per_block():
    model = models.get("wrn16_2", dropout=0.3)
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(dropouts) == 6 and all(d.rate == 0.3 for d in dropouts)
    assert not any(isinstance(l, keras.layers.Dropout)
                   for l in _built("wrn16_2").layers)


def test_zero_pad_shortcut_subsamples_and_pads_channels_evenly():
    x = np.arange(2 * 4 * 4 * 2, dtype="float32").reshape(2, 4, 4, 2)
    y = keras.ops.convert_to_numpy(
        models.ZeroPadShortcut(filters=6, strides=2)(x))
    assert y.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., :2], 0)
    np.testing.assert_array_equal(y[..., 4:], 0)


# --- Forward passes ----------------------------------------------------------


@pytest.mark.parametrize("name", models.available())
def test_every_available_network_runs_forward(name):
    imagenet = name.startswith("imagenet")
    kwargs = {"input_shape": (64, 64, 3)} if imagenet else {}
    model = _built(name, **kwargs)
    x = np.random.default_rng(0).normal(size=(2,) + model.input_shape[1:])
    logits = model(x.astype("float32"), training=False)
    num_classes = 1000 if imagenet else 10
    assert logits.shape == (2, num_classes)
    logits = keras.ops.convert_to_numpy(logits)
    assert np.all(np.isfinite(logits))
    # The logits are the classifier on the spatial mean of the last feature
    # map, by hand in float64 (measured: at most 6e-7 of the largest logit).
    assert [type(layer).__name__ for layer in model.layers[-2:]] == [
        "GlobalAveragePooling2D", "Dense"]
    features = keras.ops.convert_to_numpy(keras.Model(
        model.input, model.layers[-2].input)(x.astype("float32"),
                                             training=False))
    kernel, bias = (np.asarray(w, np.float64)
                    for w in model.layers[-1].get_weights())
    expected = features.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(logits, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    # Two different images, two different outputs.
    assert not np.allclose(logits[0], logits[1])
    assert model.name == name


def test_dynamic_spatial_input_shape():
    model = _built("resnet20", input_shape=(None, None, 3))
    assert model(np.zeros((1, 40, 24, 3), "float32")).shape == (1, 10)


# mixed_float16 against float32 logits of the same weights, relative to the
# largest logit: measured at most 7e-4 (three random initialisations).
MIXED_ATOL = 1e-2


def test_mixed_float16_forward_pass(float32_policy_after):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.resnet20(shortcut="zero_pad")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    logits = model(x, training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.get_layer("stage3").output.dtype == "float16"
    assert model.get_layer("stem_conv").kernel.dtype == "float32"
    assert model.get_layer("logits").dtype_policy.name == "float32"
    # The same network in float32, with the same weights, computes the same
    # logits to float16 rounding.
    keras.mixed_precision.set_global_policy("float32")
    reference = models.resnet20(shortcut="zero_pad")
    reference.set_weights(model.get_weights())
    expected = keras.ops.convert_to_numpy(reference(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected,
                               rtol=0, atol=MIXED_ATOL * np.abs(expected).max())


def test_logits_follow_the_policy_when_not_mixed():
    assert _built("resnet20").get_layer("logits").dtype_policy.name == (
        "float32")


# --- Registry and validation -------------------------------------------------


def test_get_parses_any_wrn_name():
    model = models.get("wrn10_1", num_classes=5)
    assert model.name == "wrn10_1"
    assert tuple(model.get_layer("stage3").output.shape[1:]) == (8, 8, 64)
    assert model.output_shape == (None, 5)


def test_get_forwards_keyword_arguments():
    model = models.get("resnet20", num_classes=100, model_name="teacher")
    assert model.name == "teacher" and model.output_shape == (None, 100)


@pytest.mark.parametrize("name", ["resnet19", "wrn40-2", "vgg16", "", None])
def test_get_unknown_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="Unknown network name") as info:
        models.get(name)
    message = str(info.value)
    for valid in ("resnet20", "resnet110", "resnet50", "imagenet_resnet50",
                  "wrn40_2", "wrn{depth}_{width}"):
        assert valid in message
    assert repr(name) in message


def test_available_lists_every_builder_and_wrn_presets():
    names = models.available()
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                 "resnet18", "resnet34", "resnet50", "imagenet_resnet18",
                 "imagenet_resnet34", "imagenet_resnet50", "wrn16_2",
                 "wrn40_2"):
        assert name in names


def test_bad_shortcut_is_rejected_with_allowed_values():
    with pytest.raises(ValueError, match=r"shortcut.*'projection'.*'zero_pad'"
                                         r".*Received: shortcut='option_b'"):
        models.resnet20(shortcut="option_b")


@pytest.mark.parametrize("depth", [15, 20, 4, "40"])
def test_bad_wrn_depth_is_rejected(depth):
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6 == 0.*Received: "
                                         rf"depth={re.escape(repr(depth))}"):
        models.wrn(depth, 2)


def test_bad_wrn_name_depth_is_rejected():
    with pytest.raises(ValueError, match="Received: depth=41"):
        models.get("wrn41_2")


@pytest.mark.parametrize("depth", [21, 2, 18.0])
def test_bad_cifar_resnet_depth_is_rejected(depth):
    with pytest.raises(ValueError, match=rf"6 \* n \+ 2.*Received: "
                                         rf"depth={re.escape(repr(depth))}"):
        models.cifar_resnet(depth)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"input_shape": (32, 32)}, r"Received: input_shape=\(32, 32\)"),
        ({"weight_decay": -1e-4}, "Received: weight_decay=-0.0001"),
    ],
)
def test_bad_common_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.resnet18(**kwargs)


def test_bad_wrn_width_and_dropout_are_rejected():
    with pytest.raises(ValueError, match="Received: width=0"):
        models.wrn(16, 0)
    with pytest.raises(ValueError, match="Received: dropout=1.0"):
        models.wrn(16, 2, dropout=1.0)


# --- Serialization -----------------------------------------------------------


def test_keras_file_round_trip_gives_identical_predictions(tmp_path):
    model = models.resnet20(shortcut="zero_pad", num_classes=7,
                            weight_decay=1e-4)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    path = tmp_path / "resnet20.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(restored(x, training=False)),
    )
    assert models.feature_taps(restored) == models.feature_taps(model)
    assert isinstance(restored.get_layer("stage2_block1_shortcut"),
                      models.ZeroPadShortcut)
    assert len(restored.losses) == len(model.losses)


def test_zero_pad_shortcut_config_round_trip():
    layer = models.ZeroPadShortcut(filters=32, strides=2, name="s")
    clone = models.ZeroPadShortcut.from_config(layer.get_config())
    assert (clone.filters, clone.strides, clone.name) == (32, 2, "s")


# --- Docstrings --------------------------------------------------------------


def _public_objects():
    return [getattr(models, name) for name in models.__all__]


@pytest.mark.parametrize(
    "obj", _public_objects(), ids=[n for n in models.__all__])
def test_docstring_example_runs(obj):
    doc = inspect.getdoc(obj)
    assert doc and "Example:" in doc, f"{obj.__name__} has no Example block"
    code = re.search(r"Example:\s*```python\n(.*?)```", doc, re.S).group(1)
    namespace = {name: getattr(models, name) for name in models.__all__}
    exec(compile(code, f"<{obj.__name__} example>", "exec"), namespace)


def test_mobilenetv2_half_is_repdistillers_mobile_half():
    # RepDistiller models/mobilenetv2.py, mobile_half(100), measured with
    # torch: 812,836 parameters; feat[1:5] of a 32x32 batch are
    # (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2) (NCHW).
    model = models.get("mobilenetv2_half", num_classes=100)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 812_836
    shapes = [tuple(model.get_layer(f"stage{i}").output.shape[1:])
              for i in range(1, 5)]
    assert shapes == [(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)]
    assert models.feature_taps(model)[-1] == "last_conv"
    # A linear bottleneck: the tapped group output is not rectified.
    out = keras.Model(model.input, model.get_layer("stage4").output)(
        np.random.default_rng(0).normal(size=(2, 32, 32, 3)))
    assert np.min(np.asarray(out)) < 0


def test_with_dtype_policy_keeps_weights_and_float32_outputs():
    model = models.get("wrn10_1", num_classes=5, input_shape=(8, 8, 1))
    assert models.with_dtype_policy(model, "float32") is model
    fast = models.with_dtype_policy(model, "mixed_bfloat16")
    assert fast.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert fast.get_layer("logits").compute_dtype == "float32"
    assert models.with_dtype_policy(fast, "mixed_bfloat16") is fast
    back = models.with_dtype_policy(fast, "float32")
    assert {layer.dtype_policy.name for layer in back.layers[1:]} == {"float32"}
    for a, b in zip(model.weights, back.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(back(x), model(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast(x), model(x), atol=0.05 * np.abs(model(x)).max())


def test_other_networks_give_float32_logits_under_a_mixed_policy():
    """keras.applications networks build their classifier under the global
    policy; `get` makes their logits float32, as ours are, so the losses and
    top-k metrics read them (top-k rejects bfloat16)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.get("keras.applications.MobileNetV2", num_classes=10,
                           input_shape=(32, 32, 3), alpha=0.35)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[2].compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
    metric = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
    metric.update_state(np.zeros((2,)), model(np.zeros((2, 32, 32, 3), "float32")))
