"""The CIFAR MobileNetV2 of RepDistiller (`models/mobilenetv2.py`).

RepDistiller's student "MobileNetV2" (`mobile_half`: expansion T = 6, width
0.5), from "Knowledge Distillation via Route Constrained Optimization": a
3x3 stride-2 conv stem, seven groups of inverted residual blocks, a 1x1 conv
to 1280 channels, average pooling and a dense classifier. Unlike
`keras.applications.MobileNetV2` it downsamples 16x, not 32x, so a 32x32
image still has a 2x2 map in its last group.
"""

import keras

from ft_keras.models import blocks

# (expansion t, channels c, blocks n, first stride s) of each group, with
# the expansion of groups 2-7 set by `expansion` (RepDistiller's T).
_GROUPS = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# RepDistiller's feature list: f1..f4 are the outputs of groups 2, 3, 5, 7.
_TAPPED_GROUPS = {2: "stage1", 3: "stage2", 5: "stage3", 7: "stage4"}


def _depthwise(x, strides, name):
    """A bias-free 3x3 depthwise conv padded like PyTorch's `padding=1`."""
    if strides > 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=False,
        depthwise_initializer=blocks.conv_initializer(),
        name=name,
    )(x)


def inverted_residual(
    x, filters, strides, expansion, name, weight_decay, tap_last_conv=False
):
    """`1x1 expand -> BN -> ReLU -> 3x3 depthwise(stride) -> BN -> ReLU ->
    1x1 project -> BN`, plus the input when the shape is unchanged (no ReLU
    after the sum: a linear bottleneck). With `tap_last_conv` the
    `last_conv` tap is placed on the projection's output, before its BN."""
    in_channels = x.shape[-1]
    y = blocks.conv2d(x, in_channels * expansion, 1, 1, f"{name}_expand", weight_decay)
    y = blocks.batch_norm(y, f"{name}_expand_bn")
    y = blocks.relu(y, f"{name}_expand_relu")
    y = _depthwise(y, strides, f"{name}_depthwise")
    y = blocks.batch_norm(y, f"{name}_depthwise_bn")
    y = blocks.relu(y, f"{name}_depthwise_relu")
    y = blocks.conv2d(y, filters, 1, 1, f"{name}_project", weight_decay)
    if tap_last_conv:
        y = blocks.tap(y, "last_conv")
    y = blocks.batch_norm(y, f"{name}_project_bn")
    if strides == 1 and in_channels == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenetv2_cifar(
    expansion=6,
    width_mult=0.5,
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name=None,
):
    """RepDistiller's CIFAR MobileNetV2 (`mobilenetv2_T_w(T, W)`).

    Feature taps (identity layers), RepDistiller's `feat[1:5]`:
        `stage1`: the output of group 2 (16x16 on 32x32 input),
        `stage2`: group 3 (8x8), `stage3`: group 5 (4x4),
        `stage4`: group 7 (2x2), the last block's linear output before the
            1x1 conv to 1280 channels: RepDistiller's `feat[-2]`, the
            Factor Transfer tap;
        `last_conv`: the last block's projection conv before its BN.

    Arguments:
        expansion: The inverted residuals' expansion T (6).
        width_mult: Channel multiplier W (0.5: `mobile_half`); the last
            conv keeps 1280 channels unless W > 1.
        num_classes, input_shape, weight_decay, name: As for every network
            of `ft_keras.models` (`name` defaults to `"mobilenetv2_half"`
            at W = 0.5).

    Returns:
        A functional `keras.Model` whose output is the logits.

    Example:

    ```python
    import numpy as np
    model = mobilenetv2_cifar(num_classes=100)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 812_836  # RepDistiller's mobile_half(100)
    assert model.get_layer("stage4").output.shape == (None, 2, 2, 160)
    ```
    """
    blocks.validate_common(num_classes, input_shape, weight_decay)
    _check_multipliers(expansion, width_mult)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = _stem(inputs, width_mult, weight_decay)
    x = _groups(x, expansion, width_mult, weight_decay)
    x = _head(x, width_mult, weight_decay)
    outputs = blocks.classifier(x, num_classes, weight_decay)
    default = (
        "mobilenetv2_half"
        if width_mult == 0.5 and expansion == 6
        else f"mobilenetv2_t{expansion}_w{width_mult:g}"
    )
    return keras.Model(inputs, outputs, name=name or default)


def _check_multipliers(expansion, width_mult):
    """Raises `ValueError` unless `expansion` and `width_mult` are positive
    numbers."""
    for arg, value in (("expansion", expansion), ("width_mult", width_mult)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(
                f"`{arg}` must be a positive number. Received: {arg}={value!r}"
            )


def _stem(inputs, width_mult, weight_decay):
    """`stem_conv (3x3, stride 2, 32 * W) -> stem_bn -> stem_relu`."""
    x = blocks.conv2d(inputs, int(32 * width_mult), 3, 2, "stem_conv", weight_decay)
    x = blocks.batch_norm(x, "stem_bn")
    return blocks.relu(x, "stem_relu")


def _groups(x, expansion, width_mult, weight_decay):
    """The seven groups of inverted residual blocks (`_GROUPS`), the stage
    taps after groups 2, 3, 5 and 7, and `last_conv` in the last block."""
    for g, (t, c, n, s) in enumerate(_GROUPS, start=1):
        for j in range(1, n + 1):
            last = g == len(_GROUPS) and j == n
            x = inverted_residual(
                x,
                int(c * width_mult),
                s if j == 1 else 1,
                t or expansion,
                f"group{g}_block{j}",
                weight_decay,
                tap_last_conv=last,
            )
        if g in _TAPPED_GROUPS:
            x = blocks.tap(x, _TAPPED_GROUPS[g])
    return x


def _head(x, width_mult, weight_decay):
    """`head_conv (1x1 to 1280 channels, 1280 * W if W > 1) -> head_bn ->
    head_relu`."""
    last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
    x = blocks.conv2d(x, last_channels, 1, 1, "head_conv", weight_decay)
    x = blocks.batch_norm(x, "head_bn")
    return blocks.relu(x, "head_relu")


def mobilenetv2_half(
    num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0, name=None
):
    """RepDistiller's `mobile_half` (T = 6, W = 0.5): its "MobileNetV2".

    Example:

    ```python
    model = mobilenetv2_half(num_classes=100)
    assert model.name == "mobilenetv2_half"
    assert model.get_layer("stage3").output.shape == (None, 4, 4, 48)
    ```
    """
    return mobilenetv2_cifar(
        6, 0.5, num_classes, input_shape, weight_decay, name=name or "mobilenetv2_half"
    )
