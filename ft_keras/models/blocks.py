"""Building blocks shared by the ResNet and WRN builders.

Every block follows the PyTorch reference implementations layer for layer, so
that the Keras networks have the same parameters, the same feature-map sizes
and (given ported weights) the same outputs:

- `BatchNormalization(momentum=0.9, epsilon=1e-5)`: PyTorch's defaults
  (PyTorch's `momentum=0.1` is Keras's `1 - momentum`).
- Conv kernels drawn He-normal over fan-out
  (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`), no bias when a
  BatchNorm follows.
- Strided convolutions and the ImageNet max-pool pad symmetrically with
  explicit `ZeroPadding2D` and then run `"valid"`, as PyTorch's `padding=k//2`
  does; Keras's `"same"` would pad only bottom/right on even inputs.
- `weight_decay` is PyTorch-style: it is applied as
  `keras.regularizers.L2(weight_decay / 2)` on conv and dense kernels, so the
  regularisation gradient equals the `weight_decay * w` that PyTorch's SGD
  adds.

Layer names inside a network are `stem_*`, `stage{i}_block{j}_*`, `avg_pool`
and `logits`; feature taps are identity layers named `stage{i}` and
`last_conv` (see `tap`).
"""

import keras
from keras import ops

from ft_keras import layers as ft_layers

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
_DATA_FORMAT = "channels_last"


def conv_initializer():
    """He-normal over fan-out: PyTorch's `kaiming_normal_(mode="fan_out")`.

    A new instance per layer: an unseeded Keras initializer returns the same
    values on every call.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def dense_initializer():
    """PyTorch's default `nn.Linear` kernel init, U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def kernel_regularizer(weight_decay):
    """`L2(weight_decay / 2)`, or `None` when `weight_decay == 0`.

    Keras's `L2(l)` adds `l * sum(w**2)` to the loss, whose gradient is
    `2 * l * w`; halving the coefficient gives PyTorch SGD's
    `weight_decay * w`.
    """
    if not weight_decay:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


def _is_positive_int(value):
    return (
        isinstance(value, int) and not isinstance(value, bool) and value > 0
    )


def validate_common(num_classes, input_shape, weight_decay):
    """Check the arguments every network builder takes."""
    if not _is_positive_int(num_classes):
        raise ValueError(
            "`num_classes` must be a positive integer. "
            f"Received: num_classes={num_classes!r}"
        )
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(d is None or _is_positive_int(d) for d in input_shape)
        or input_shape[-1] is None
    ):
        raise ValueError(
            "`input_shape` must be a channels-last (height, width, channels) "
            "tuple of positive integers (height and width may be None). "
            f"Received: input_shape={input_shape!r}"
        )
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or weight_decay < 0
    ):
        raise ValueError(
            "`weight_decay` must be a non-negative number. "
            f"Received: weight_decay={weight_decay!r}"
        )


def conv2d(x, filters, kernel_size, strides, name, weight_decay):
    """A bias-free conv padded like PyTorch's `padding=kernel_size // 2`.

    `"same"` at stride 1; when strided, an explicit symmetric
    `ZeroPadding2D` named `{name}_pad` and then `"valid"`.
    """
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(
            kernel_size // 2, data_format=_DATA_FORMAT, name=f"{name}_pad"
        )(x)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=False,
        kernel_initializer=conv_initializer(),
        kernel_regularizer=kernel_regularizer(weight_decay),
        data_format=_DATA_FORMAT,
        name=name,
    )(x)


def batch_norm(x, name):
    """BatchNorm with PyTorch's defaults over the channels-last axis."""
    return ft_layers.BatchNormalization(
        axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )(x)


def relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def tap(x, name):
    """Mark a feature tap: an identity layer named `name`.

    Identity layers keep the block layers regularly named and make each tap a
    layer of its own, so `model.get_layer(name).output` is the tapped tensor.
    """
    return keras.layers.Activation("linear", name=name)(x)


def classifier(x, num_classes, weight_decay):
    """Global average pool + the `logits` Dense layer (no softmax).

    Under a `mixed_*` dtype policy the `logits` layer runs in float32, so
    the model's output is float32 (Keras's mixed-precision recommendation);
    under any other policy it follows the policy.
    """
    x = keras.layers.GlobalAveragePooling2D(
        data_format=_DATA_FORMAT, name="avg_pool"
    )(x)
    policy = keras.config.dtype_policy().name
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=dense_initializer(),
        kernel_regularizer=kernel_regularizer(weight_decay),
        dtype="float32" if policy.startswith("mixed_") else None,
        name="logits",
    )(x)


@keras.saving.register_keras_serializable(package="ft_keras")
class ZeroPadShortcut(keras.layers.Layer):
    """Parameter-free ResNet shortcut ("option A" of He et al. 2016).

    Subsamples the input spatially by `strides` (keeping every `strides`-th
    pixel from the first) and zero-pads the channel axis up to `filters`,
    split evenly before and after the existing channels, as in the reference
    CIFAR ResNet code (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`).

    Arguments:
        filters: Number of output channels, at least the number of input
            channels.
        strides: Positive integer spatial subsampling factor.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    import numpy as np
    layer = ZeroPadShortcut(filters=32, strides=2)
    y = layer(np.ones((1, 8, 8, 16), "float32"))
    assert y.shape == (1, 4, 4, 32)
    ```
    """

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("filters", filters), ("strides", strides)):
            if not _is_positive_int(value):
                raise ValueError(
                    f"`{arg}` must be a positive integer. "
                    f"Received: {arg}={value!r}"
                )
        self.filters = filters
        self.strides = strides

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels > self.filters:
            raise ValueError(
                "`ZeroPadShortcut` cannot reduce channels: the input has "
                f"{channels} channels but filters={self.filters}."
            )

    def call(self, inputs):
        s = self.strides
        x = inputs[:, ::s, ::s, :] if s > 1 else inputs
        extra = self.filters - inputs.shape[-1]
        if extra:
            before = extra // 2
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [before, extra - before]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(d):
            return None if d is None else -(-d // self.strides)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides})
        return config


def basic_block(x, filters, strides, name, weight_decay,
                shortcut="projection", tap_last_conv=False):
    """Post-activation basic block (He et al. 2016): two 3x3 convs.

    `conv1(stride) -> bn1 -> relu1 -> conv2 -> bn2 -> add(shortcut) -> out`.
    When the shape changes the shortcut is `1x1 conv(stride) + BN`
    (`shortcut="projection"`) or a `ZeroPadShortcut` (`"zero_pad"`);
    otherwise it is the identity. With `tap_last_conv=True` the `last_conv`
    tap is placed on conv2's (pre-BN) output.
    """
    in_channels = x.shape[-1]
    residual = conv2d(x, filters, 3, strides, f"{name}_conv1", weight_decay)
    residual = batch_norm(residual, f"{name}_bn1")
    residual = relu(residual, f"{name}_relu1")
    residual = conv2d(residual, filters, 3, 1, f"{name}_conv2", weight_decay)
    if tap_last_conv:
        residual = tap(residual, "last_conv")
    residual = batch_norm(residual, f"{name}_bn2")
    skip = _shortcut(x, in_channels, filters, strides, name, weight_decay,
                     shortcut)
    out = keras.layers.Add(name=f"{name}_add")([skip, residual])
    return relu(out, f"{name}_out")


def bottleneck_block(x, filters, strides, name, weight_decay,
                     shortcut="projection", tap_last_conv=False, expansion=4):
    """Post-activation bottleneck block (ResNet v1.5: stride on the 3x3).

    `conv1 1x1 -> bn1 -> relu1 -> conv2 3x3(stride) -> bn2 -> relu2 ->
    conv3 1x1 (filters * expansion) -> bn3 -> add(shortcut) -> out`; the
    shortcut is as in `basic_block`. With `tap_last_conv=True` the
    `last_conv` tap is placed on conv3's (pre-BN) output.
    """
    in_channels = x.shape[-1]
    out_channels = filters * expansion
    residual = conv2d(x, filters, 1, 1, f"{name}_conv1", weight_decay)
    residual = batch_norm(residual, f"{name}_bn1")
    residual = relu(residual, f"{name}_relu1")
    residual = conv2d(residual, filters, 3, strides, f"{name}_conv2",
                      weight_decay)
    residual = batch_norm(residual, f"{name}_bn2")
    residual = relu(residual, f"{name}_relu2")
    residual = conv2d(residual, out_channels, 1, 1, f"{name}_conv3",
                      weight_decay)
    if tap_last_conv:
        residual = tap(residual, "last_conv")
    residual = batch_norm(residual, f"{name}_bn3")
    skip = _shortcut(x, in_channels, out_channels, strides, name,
                     weight_decay, shortcut)
    out = keras.layers.Add(name=f"{name}_add")([skip, residual])
    return relu(out, f"{name}_out")


def _shortcut(x, in_channels, out_channels, strides, name, weight_decay,
              shortcut):
    if strides == 1 and in_channels == out_channels:
        return x
    if shortcut == "zero_pad":
        return ZeroPadShortcut(out_channels, strides,
                               name=f"{name}_shortcut")(x)
    skip = conv2d(x, out_channels, 1, strides, f"{name}_shortcut_conv",
                  weight_decay)
    return batch_norm(skip, f"{name}_shortcut_bn")


def residual_stages(x, block, stage_filters, stage_blocks, stage_strides,
                    weight_decay, shortcut="projection"):
    """Stack post-activation residual stages and place the feature taps.

    Stage `i` (1-based) is `stage_blocks[i-1]` blocks of `stage_filters[i-1]`
    filters, the first one with stride `stage_strides[i-1]`. Its output (the
    last block's post-ReLU output) gets the tap `stage{i}`; the last block of
    the last stage carries the `last_conv` tap.
    """
    num_stages = len(stage_filters)
    for i, (filters, blocks, strides) in enumerate(
        zip(stage_filters, stage_blocks, stage_strides), start=1
    ):
        for j in range(1, blocks + 1):
            x = block(
                x,
                filters,
                strides if j == 1 else 1,
                name=f"stage{i}_block{j}",
                weight_decay=weight_decay,
                shortcut=shortcut,
                tap_last_conv=(i == num_stages and j == blocks),
            )
        x = tap(x, f"stage{i}")
    return x
