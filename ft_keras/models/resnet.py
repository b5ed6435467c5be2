"""ResNet-18/34/50: CIFAR variants (MMPretrain's `ResNet_CIFAR`) and the
standard ImageNet networks (torchvision's `resnet18/34/50`).

Both share the four residual stages of 64/128/256/512 filters (x4 output
channels for bottleneck blocks, ResNet v1.5 with the stride on the 3x3 conv)
with projection shortcuts; they differ in the stem:

- CIFAR (`resnet18`, `resnet34`, `resnet50`): 3x3 stride-1 conv with 64
  filters, BN, ReLU and no max-pool, so a 32x32 input gives stage maps of
  32, 16, 8 and 4 pixels.
- ImageNet (`imagenet_resnet18`, ...): 7x7 stride-2 conv, BN, ReLU and a 3x3
  stride-2 max-pool, so a 224x224 input gives stage maps of 56, 28, 14 and 7
  pixels. The trainable parameters equal torchvision's exactly.
"""

import keras

from ft_keras.models import blocks

_ARCHS = {
    18: (blocks.basic_block, (2, 2, 2, 2), 1),
    34: (blocks.basic_block, (3, 4, 6, 3), 1),
    50: (blocks.bottleneck_block, (3, 4, 6, 3), 4),
}
_STAGE_FILTERS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)

_TAPS_DOC = """Feature taps (identity layers):
        `stage1` ... `stage4`: each stage's output, after its last block's
            final ReLU ({c1}, {c2}, {c3} and {c4} channels). `stage4` is the
            Factor Transfer tap of the original code and of torchdistill
            (`layer4`).
        `last_conv`: the pre-BN output of the last conv of the last block
            ({c4} channels, at `stage4`'s resolution), MMRazor's tap
            (`backbone.layer4.{last}.{conv}`)."""

_ARGS_DOC = """Arguments:
        num_classes: Number of output logits. Defaults to {classes}.
        input_shape: Channels-last input shape. Defaults to {shape}.
        weight_decay: PyTorch-style weight decay coefficient. It is applied
            as `keras.regularizers.L2(weight_decay / 2)` on every conv and
            dense kernel, so its gradient equals the `weight_decay * w` that
            PyTorch's SGD adds (BatchNorm and bias parameters are not
            decayed). Defaults to 0.
        name: Model name. Defaults to `"{default_name}"`.

    Returns:
        A functional `keras.Model` whose output is the logits (no softmax;
        float32 under a `mixed_*` dtype policy)."""


def _build(depth, imagenet, num_classes, input_shape, weight_decay, name):
    blocks.validate_common(num_classes, input_shape, weight_decay)
    block, stage_blocks, _ = _ARCHS[depth]

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    if imagenet:
        x = blocks.conv2d(inputs, 64, 7, 2, "stem_conv", weight_decay)
        x = blocks.batch_norm(x, "stem_bn")
        x = blocks.relu(x, "stem_relu")
        # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf; the input is
        # post-ReLU (>= 0), so zero padding gives the same result.
        x = keras.layers.ZeroPadding2D(
            1, data_format="channels_last", name="stem_pool_pad"
        )(x)
        x = keras.layers.MaxPooling2D(
            3, strides=2, data_format="channels_last", name="stem_pool"
        )(x)
    else:
        x = blocks.conv2d(inputs, 64, 3, 1, "stem_conv", weight_decay)
        x = blocks.batch_norm(x, "stem_bn")
        x = blocks.relu(x, "stem_relu")
    x = blocks.residual_stages(
        x,
        block,
        stage_filters=_STAGE_FILTERS,
        stage_blocks=stage_blocks,
        stage_strides=_STAGE_STRIDES,
        weight_decay=weight_decay,
    )
    outputs = blocks.classifier(x, num_classes, weight_decay)
    default_name = f"imagenet_resnet{depth}" if imagenet else f"resnet{depth}"
    return keras.Model(inputs, outputs, name=name or default_name)


def resnet18(num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
             name=None):
    return _build(18, False, num_classes, input_shape, weight_decay, name)


def resnet34(num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
             name=None):
    return _build(34, False, num_classes, input_shape, weight_decay, name)


def resnet50(num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
             name=None):
    return _build(50, False, num_classes, input_shape, weight_decay, name)


def imagenet_resnet18(num_classes=1000, input_shape=(224, 224, 3),
                      weight_decay=0.0, name=None):
    return _build(18, True, num_classes, input_shape, weight_decay, name)


def imagenet_resnet34(num_classes=1000, input_shape=(224, 224, 3),
                      weight_decay=0.0, name=None):
    return _build(34, True, num_classes, input_shape, weight_decay, name)


def imagenet_resnet50(num_classes=1000, input_shape=(224, 224, 3),
                      weight_decay=0.0, name=None):
    return _build(50, True, num_classes, input_shape, weight_decay, name)


_CIFAR_DOC = """Builds the CIFAR ResNet-{depth} of MMPretrain's `ResNet_CIFAR`.

    3x3 stride-1 stem conv (64 filters), BN, ReLU (no max-pool), then four
    stages of {stage_blocks} {kind} blocks with projection shortcuts, global
    average pool and the `logits` Dense layer. A 32x32 input gives stage maps
    of 32, 16, 8 and 4 pixels.

    {taps}

    {args}

    Example:

    ```python
    import numpy as np
    model = resnet{depth}(num_classes=10)
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 10)
    assert model.get_layer("stage4").output.shape == (None, 4, 4, {c4})
    ```
    """

_IMAGENET_DOC = """Builds the standard ImageNet ResNet-{depth}, torchvision's.

    7x7 stride-2 stem conv (64 filters), BN, ReLU, 3x3 stride-2 max-pool,
    then four stages of {stage_blocks} {kind} blocks with projection
    shortcuts, global average pool and the `logits` Dense layer. A 224x224
    input gives stage maps of 56, 28, 14 and 7 pixels. With 1000 classes the
    trainable parameters are exactly torchvision's.

    {taps}

    {args}

    Example:

    ```python
    import numpy as np
    model = imagenet_resnet{depth}(num_classes=10, input_shape=(64, 64, 3))
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 10)
    assert model.get_layer("stage4").output.shape == (None, 2, 2, {c4})
    ```
    """


def _document(fn, depth, imagenet):
    _, stage_blocks, expansion = _ARCHS[depth]
    c = [f * expansion for f in _STAGE_FILTERS]
    taps = _TAPS_DOC.format(
        c1=c[0], c2=c[1], c3=c[2], c4=c[3], last=stage_blocks[-1] - 1,
        conv="conv3" if expansion > 1 else "conv2",
    )
    args = _ARGS_DOC.format(
        classes=1000 if imagenet else 10,
        shape=(224, 224, 3) if imagenet else (32, 32, 3),
        default_name=fn.__name__,
    )
    template = _IMAGENET_DOC if imagenet else _CIFAR_DOC
    fn.__doc__ = template.format(
        depth=depth, stage_blocks=list(stage_blocks),
        kind="bottleneck" if expansion > 1 else "basic", taps=taps, args=args,
        c4=c[3],
    )


for _fn, _depth, _imagenet in (
    (resnet18, 18, False),
    (resnet34, 34, False),
    (resnet50, 50, False),
    (imagenet_resnet18, 18, True),
    (imagenet_resnet34, 34, True),
    (imagenet_resnet50, 50, True),
):
    _document(_fn, _depth, _imagenet)
del _fn, _depth, _imagenet
