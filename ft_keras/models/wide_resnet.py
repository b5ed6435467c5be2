"""Wide Residual Networks WRN-d-w (Zagoruyko & Komodakis, BMVC 2016).

The CIFAR WRN of the paper's reference code (and of RepDistiller): a 3x3
conv stem with 16 filters, three stages of 16w/32w/64w channels with
`(depth - 4) / 6` pre-activation basic blocks each (stride 2 at the start of
stages 2 and 3), a final BN + ReLU, global average pooling and a dense
classifier.
"""

import keras

from ft_keras.models import blocks


def wide_block(x, filters, strides, name, weight_decay, dropout=0.0,
               tap_last_conv=False):
    """Pre-activation wide basic block.

    `bn1 -> relu1 -> conv1 3x3(stride) -> bn2 -> relu2 [-> dropout] ->
    conv2 3x3 -> add(shortcut)`. The shortcut is the identity when the shape
    is unchanged, else an unnormalised `1x1 conv(stride)` applied to the
    pre-activated input (`relu1`'s output), as in the reference code. With
    `tap_last_conv=True` the `last_conv` tap is placed on conv2's output.
    """
    in_channels = x.shape[-1]
    pre = blocks.batch_norm(x, f"{name}_bn1")
    pre = blocks.relu(pre, f"{name}_relu1")
    residual = blocks.conv2d(pre, filters, 3, strides, f"{name}_conv1",
                             weight_decay)
    residual = blocks.batch_norm(residual, f"{name}_bn2")
    residual = blocks.relu(residual, f"{name}_relu2")
    if dropout > 0:
        residual = keras.layers.Dropout(dropout, name=f"{name}_dropout")(
            residual
        )
    residual = blocks.conv2d(residual, filters, 3, 1, f"{name}_conv2",
                             weight_decay)
    if tap_last_conv:
        residual = blocks.tap(residual, "last_conv")
    if strides == 1 and in_channels == filters:
        skip = x
    else:
        skip = blocks.conv2d(pre, filters, 1, strides,
                             f"{name}_shortcut_conv", weight_decay)
    return keras.layers.Add(name=f"{name}_add")([skip, residual])


def wrn(depth, width, num_classes=10, input_shape=(32, 32, 3), dropout=0.0,
        weight_decay=0.0, name=None):
    """Builds the Wide ResNet WRN-`depth`-`width` for CIFAR.

    The network is `stem_conv (3x3, 16)`, three stages of `(depth - 4) // 6`
    pre-activation blocks (`wide_block`) with 16*width, 32*width and
    64*width filters (stride 2 at the start of stages 2 and 3), then
    `final_bn -> final_relu`, `avg_pool` and the `logits` Dense layer. The
    output is the logits (no softmax); under a `mixed_*` dtype policy they
    are float32.

    Feature taps (identity layers). The blocks are pre-activation, so a
    stage's raw output is the residual sum before any BN/ReLU:
        `stage1`, `stage2`: the output of the stage's last block, i.e. the
            residual sum, *before* BN and ReLU (32x32x16w and 16x16x32w on
            32x32 input).
        `stage3`: the last stage after the network's final BN + ReLU
            (`final_relu`, 8x8x64w), the map that is pooled into the
            classifier: the post-ReLU last-stage tap of the original Factor
            Transfer code.
        `last_conv`: the output of the last conv of the last block, before
            the residual sum and the final BN (8x8x64w), the counterpart of
            MMRazor's pre-BN tap.

    Arguments:
        depth: Number of weighted layers, `6 * n + 4` (10, 16, 22, 28, 40,
            ...).
        width: Positive integer widening factor `w`.
        num_classes: Number of output logits. Defaults to 10.
        input_shape: Channels-last input shape. Defaults to `(32, 32, 3)`.
        dropout: Dropout rate between the two convs of each block, in
            `[0, 1)`. Defaults to 0 (no dropout layers).
        weight_decay: PyTorch-style weight decay coefficient. It is applied
            as `keras.regularizers.L2(weight_decay / 2)` on every conv and
            dense kernel, so its gradient equals the `weight_decay * w` that
            PyTorch's SGD adds (BatchNorm and bias parameters are not
            decayed). Defaults to 0.
        name: Model name. Defaults to `"wrn{depth}_{width}"`.

    Returns:
        A functional `keras.Model`.

    Example:

    ```python
    import numpy as np
    model = wrn(16, 2, num_classes=100)
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 100)
    assert model.get_layer("stage3").output.shape == (None, 8, 8, 128)
    ```
    """
    _check_arguments(depth, width, dropout)
    blocks.validate_common(num_classes, input_shape, weight_decay)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = blocks.conv2d(inputs, 16, 3, 1, "stem_conv", weight_decay)
    x = _stages(x, (depth - 4) // 6, width, weight_decay, dropout)
    outputs = blocks.classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=name or f"wrn{depth}_{width}")


def _check_arguments(depth, width, dropout):
    """Raises `ValueError` for a `depth`, `width` or `dropout` that no WRN
    has."""
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 10
        or (depth - 4) % 6
    ):
        raise ValueError(
            "`depth` must be 6 * n + 4 for an integer n >= 1, i.e. "
            "(depth - 4) % 6 == 0 (e.g. 10, 16, 22, 28, 40). "
            f"Received: depth={depth!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(
            f"`width` must be a positive integer. Received: width={width!r}"
        )
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0 <= dropout < 1
    ):
        raise ValueError(
            "`dropout` must be a number in [0, 1). "
            f"Received: dropout={dropout!r}"
        )


def _stages(x, blocks_per_stage, width, weight_decay, dropout=0.0):
    """The three stages of a WRN and its final `final_bn -> final_relu`.

    Stage `i` is `blocks_per_stage` `wide_block`s named `stage{i}_block{j}`
    with 16*width, 32*width and 64*width filters (stride 2 in the first
    block of stages 2 and 3), followed by its `stage{i}` tap; the final BN +
    ReLU come before the `stage3` tap, and the last block carries the
    `last_conv` tap. Returns the `stage3` tap's output.
    """
    stage_filters = (16 * width, 32 * width, 64 * width)
    stage_strides = (1, 2, 2)
    n = blocks_per_stage
    for i, (filters, strides) in enumerate(
        zip(stage_filters, stage_strides), start=1
    ):
        for j in range(1, n + 1):
            x = wide_block(
                x,
                filters,
                strides if j == 1 else 1,
                name=f"stage{i}_block{j}",
                weight_decay=weight_decay,
                dropout=dropout,
                tap_last_conv=(i == len(stage_filters) and j == n),
            )
        if i == len(stage_filters):
            x = blocks.batch_norm(x, "final_bn")
            x = blocks.relu(x, "final_relu")
        x = blocks.tap(x, f"stage{i}")
    return x
