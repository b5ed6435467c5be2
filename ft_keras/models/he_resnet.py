"""The CIFAR ResNets of He et al. 2016 (ResNet-20/32/44/56/110).

"Deep Residual Learning for Image Recognition", section 4.2: a 3x3 conv stem
with 16 filters, three stages of 16/32/64 channels with `(depth - 2) / 6`
basic blocks each (stride 2 at the start of stages 2 and 3), global average
pooling and a dense classifier. On a 32x32 input the stage maps are 32x32,
16x16 and 8x8.
"""

import keras

from ft_keras.models import blocks

SHORTCUTS = ("projection", "zero_pad")


def cifar_resnet(
    depth,
    num_classes=10,
    input_shape=(32, 32, 3),
    shortcut="projection",
    weight_decay=0.0,
    name=None,
):
    """Builds a CIFAR ResNet of He et al. 2016 with `depth` layers.

    The network is `stem_conv (3x3, 16) -> stem_bn -> stem_relu`, three stages
    of `(depth - 2) // 6` basic blocks with 16, 32 and 64 filters (stride 2
    at the start of stages 2 and 3), `avg_pool` and the `logits` Dense layer.
    The output is the logits (no softmax); under a `mixed_*` dtype policy
    they are float32.

    Feature taps (identity layers):
        `stage1`, `stage2`, `stage3`: each stage's output, after its last
            block's final ReLU (32x32x16, 16x16x32 and 8x8x64 on 32x32
            input). `stage3` is the original Factor Transfer tap.
        `last_conv`: the pre-BN output of the last conv of the last block
            (8x8x64 on 32x32 input), MMRazor's tap.

    Arguments:
        depth: Number of weighted layers, `6 * n + 2` (20, 32, 44, 56, 110,
            ...).
        num_classes: Number of output logits. Defaults to 10.
        input_shape: Channels-last input shape. Defaults to `(32, 32, 3)`.
        shortcut: `"projection"` (default, the original Factor Transfer
            code's choice: `1x1 conv(stride) + BN` where the shape changes)
            or `"zero_pad"` (option A of the paper: subsample and zero-pad
            the channels, no parameters).
        weight_decay: PyTorch-style weight decay coefficient. It is applied
            as `keras.regularizers.L2(weight_decay / 2)` on every conv and
            dense kernel, so its gradient equals the `weight_decay * w` that
            PyTorch's SGD adds (BatchNorm and bias parameters are not
            decayed). Defaults to 0.
        name: Model name. Defaults to `"resnet{depth}"`.

    Returns:
        A functional `keras.Model`.

    Example:

    ```python
    import numpy as np
    model = cifar_resnet(20, num_classes=10)
    logits = model(np.zeros((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 10)
    assert model.get_layer("stage3").output.shape == (None, 8, 8, 64)
    ```
    """
    _check_arguments(depth, shortcut)
    blocks.validate_common(num_classes, input_shape, weight_decay)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = _stages(_stem(inputs, weight_decay), depth, shortcut, weight_decay)
    outputs = blocks.classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def _check_arguments(depth, shortcut):
    """Raises `ValueError` for a `depth` or `shortcut` that no CIFAR ResNet
    has."""
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 8
        or (depth - 2) % 6
    ):
        raise ValueError(
            "`depth` must be 6 * n + 2 for an integer n >= 1 "
            "(e.g. 20, 32, 44, 56, 110). "
            f"Received: depth={depth!r}"
        )
    if shortcut not in SHORTCUTS:
        raise ValueError(
            f"`shortcut` must be one of {SHORTCUTS}. "
            f"Received: shortcut={shortcut!r}"
        )


def _stem(inputs, weight_decay):
    """`stem_conv (3x3, 16) -> stem_bn -> stem_relu`."""
    x = blocks.conv2d(inputs, 16, 3, 1, "stem_conv", weight_decay)
    x = blocks.batch_norm(x, "stem_bn")
    return blocks.relu(x, "stem_relu")


def _stages(x, depth, shortcut, weight_decay):
    """The three stages of `(depth - 2) // 6` basic blocks with 16, 32 and
    64 filters, stride 2 at the start of stages 2 and 3."""
    n = (depth - 2) // 6
    return blocks.residual_stages(
        x,
        blocks.basic_block,
        stage_filters=(16, 32, 64),
        stage_blocks=(n, n, n),
        stage_strides=(1, 2, 2),
        weight_decay=weight_decay,
        shortcut=shortcut,
    )


def resnet20(num_classes=10, input_shape=(32, 32, 3), shortcut="projection",
             weight_decay=0.0, name=None):
    return cifar_resnet(20, num_classes, input_shape, shortcut, weight_decay,
                        name)


def resnet32(num_classes=10, input_shape=(32, 32, 3), shortcut="projection",
             weight_decay=0.0, name=None):
    return cifar_resnet(32, num_classes, input_shape, shortcut, weight_decay,
                        name)


def resnet44(num_classes=10, input_shape=(32, 32, 3), shortcut="projection",
             weight_decay=0.0, name=None):
    return cifar_resnet(44, num_classes, input_shape, shortcut, weight_decay,
                        name)


def resnet56(num_classes=10, input_shape=(32, 32, 3), shortcut="projection",
             weight_decay=0.0, name=None):
    return cifar_resnet(56, num_classes, input_shape, shortcut, weight_decay,
                        name)


def resnet110(num_classes=10, input_shape=(32, 32, 3), shortcut="projection",
              weight_decay=0.0, name=None):
    return cifar_resnet(110, num_classes, input_shape, shortcut, weight_decay,
                        name)


_DOC = """Builds the CIFAR ResNet-{depth} of He et al. 2016.

    `cifar_resnet({depth}, ...)`: {n} basic blocks per stage. See
    `cifar_resnet` for the layers, the feature taps and the arguments
    (`num_classes`, `input_shape`, `shortcut`, `weight_decay`, `name`).

    Example:

    ```python
    import numpy as np
    model = resnet{depth}(num_classes=100)
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 100)
    ```
    """

for _fn, _depth in ((resnet20, 20), (resnet32, 32), (resnet44, 44),
                    (resnet56, 56), (resnet110, 110)):
    _fn.__doc__ = _DOC.format(depth=_depth, n=(_depth - 2) // 6)
del _fn, _depth
