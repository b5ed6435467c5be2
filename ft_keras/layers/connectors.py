"""The two connectors of Factor Transfer: `Paraphraser` and `Translator`.

The paraphraser is a convolutional auto-encoder trained, unsupervised, on the
frozen teacher's feature map; its encoder output is the *teacher factor*. The
translator sits on the student's feature map and produces the *student
factor*, which is trained to mimic the teacher factor.
"""

import math

import keras

from ft_keras.layers.batch_norm import BatchNormalization
from ft_keras.layers.patch_conv import conv_class

_PACKAGE = "ft_keras"


ROUNDINGS = ("half_even", "floor", "half_up")


def factor_channels(channels, rate, rounding="half_even"):
    """Number of channels of the factor for a `channels`-deep map.

    `channels * rate` (a Python float, as in the reference codes) rounded
    to an integer by `rounding`, and never less than 1:

    - `"half_even"`: Python's `round`, halves to the even neighbour, as the
      paper's code (`int(round(64 * RATE))` in Jangho-Kim/Factor-Transfer-
      pytorch's `train_student.py`): 5 channels at rate 0.5 give 2;
    - `"floor"`: `int(channels * rate)`, as RepDistiller (`models/util.py`)
      and torchdistill (`Paraphraser4FactorTransfer` in
      `torchdistill/models/wrapper.py`): 5 at 0.5 give 2, 7 at 0.5 give 3;
    - `"half_up"`: halves up (ft_keras' former rule): 5 at 0.5 give 3.

    The rules differ only when `channels * rate` is not an integer.

    Example:

    >>> factor_channels(64, 0.5)
    32
    >>> factor_channels(5, 0.5), factor_channels(7, 0.5)
    (2, 4)
    >>> factor_channels(7, 0.5, rounding="floor")
    3
    >>> factor_channels(5, 0.5, rounding="half_up")
    3
    """
    _validate_rounding(rounding)
    value = channels * rate
    if rounding == "half_even":
        count = int(round(value))
    elif rounding == "floor":
        count = int(math.floor(value))
    else:
        count = int(math.floor(value + 0.5))
    return max(1, count)


def _validate_rounding(rounding):
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"`rounding` must be one of {ROUNDINGS} (how `channels * rate` "
            "becomes the factor's channel count; 'half_even' in the paper's "
            f"code, 'floor' in RepDistiller and torchdistill). Received: "
            f"rounding={rounding!r}"
        )


def _validate_negative_slope(negative_slope):
    if not isinstance(negative_slope, (int, float)) or negative_slope < 0:
        raise ValueError(
            "`negative_slope` must be a non-negative number (the LeakyReLU "
            f"slope, 0.1 in the paper). Received: negative_slope={negative_slope!r}"
        )


def _validate_feature_map_shape(layer_name, input_shape):
    if len(input_shape) != 4:
        raise ValueError(
            f"`{layer_name}` expects a feature map of shape (batch, height, "
            f"width, channels). Received input_shape={tuple(input_shape)}"
        )
    if input_shape[-1] is None:
        raise ValueError(
            f"`{layer_name}` needs a known channel dimension. Received "
            f"input_shape={tuple(input_shape)}"
        )



class _ConvStack(keras.layers.Layer):
    """Shared machinery: a stack of 3x3 'same' convolutions, each followed by
    optional BatchNormalization and a LeakyReLU. A convolution on a small
    map with many channels is a `PatchConv2D` (or `PatchConv2DTranspose`:
    matrix products), the others Keras' layers: the same variables either
    way.

    The connectors compute in float32 unless a `dtype` is given, also under
    a `mixed_bfloat16` or `mixed_float16` global policy: the factor transfer
    loss compares L2-normalised factors whose differences are close to
    bfloat16's resolution, and the connectors are a few percent of a step.
    """

    def __init__(
        self, use_bn=False, negative_slope=0.1, kernel_regularizer=None, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        _validate_negative_slope(negative_slope)
        self.use_bn = bool(use_bn)
        self.negative_slope = float(negative_slope)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _make_block(self, conv_cls, filters, prefix):
        block = [
            conv_cls(
                filters,
                kernel_size=3,
                strides=1,
                padding="same",
                use_bias=True,
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name=f"{prefix}_conv",
            )
        ]
        if self.use_bn:
            block.append(
                BatchNormalization(
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype_policy,
                    name=f"{prefix}_bn",
                )
            )
        block.append(
            keras.layers.LeakyReLU(
                negative_slope=self.negative_slope,
                dtype=self.dtype_policy,
                name=f"{prefix}_act",
            )
        )
        return block

    @staticmethod
    def _build_blocks(blocks, input_shape):
        shape = tuple(input_shape)
        for block in blocks:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        return shape

    @staticmethod
    def _run_blocks(blocks, x, training):
        for block in blocks:
            for layer in block:
                if isinstance(layer, keras.layers.BatchNormalization):
                    x = layer(x, training=training)
                else:
                    x = layer(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_bn": self.use_bn,
                "negative_slope": self.negative_slope,
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Paraphraser(_ConvStack):
    """Convolutional auto-encoder that extracts the teacher factor.

    Built on a teacher feature map with `C` channels. The encoder is three 3x3
    stride-1 "same" convolutions with bias, `C -> C -> m -> m`, and the decoder
    three 3x3 transposed convolutions mirroring it, `m -> m -> C -> C`, where
    `m = factor_channels(C, rate, rounding)`. Every one of the six layers is followed by
    a `LeakyReLU(negative_slope)` (and, with `use_bn=True`, preceded by
    `BatchNormalization`).

    `call(x)` returns the teacher factor (the encoder output, shape
    `(N, H, W, m)`); `reconstruct(x)` returns `decoder(encoder(x))`, which
    `ParaphraserTrainer` trains to equal `x`.

    Args:
        rate: The paraphrase rate `k` in `(0, 4]`: factor channels are
            `C * rate` rounded by `rounding`. 0.5 in the paper.
        use_bn: Whether to put `BatchNormalization` after each convolution.
            None of the reference codes does: the paper's code has no BN,
            and RepDistiller, MMRazor and torchdistill build their
            paraphrasers without it (only their translators may have BN).
        negative_slope: Slope of the LeakyReLU for negative inputs.
        kernel_regularizer: Optional regularizer of the convolution kernels
            (e.g. `keras.regularizers.L2(2.5e-4)` for an L2 penalty whose
            gradient is `5e-4 * kernel`).
        rounding: How `C * rate` becomes the factor's channel count, one of
            `ft_keras.layers.ROUNDINGS` (see `factor_channels`):
            `"half_even"` (the paper's code, the default) or `"floor"`
            (RepDistiller, torchdistill).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Example:

    ```python
    import numpy as np
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    teacher_map = np.random.rand(2, 8, 8, 64).astype("float32")
    paraphraser(teacher_map).shape            # (2, 8, 8, 32)
    paraphraser.reconstruct(teacher_map).shape  # (2, 8, 8, 64)
    ```
    """

    def __init__(
        self,
        rate=0.5,
        use_bn=False,
        negative_slope=0.1,
        kernel_regularizer=None,
        rounding="half_even",
        **kwargs,
    ):
        super().__init__(
            use_bn=use_bn,
            negative_slope=negative_slope,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )
        _validate_rounding(rounding)
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not 0 < rate <= 4
        ):
            raise ValueError(
                "`rate` must be a number in (0, 4] (the paraphrase rate k; "
                f"0.5 in the paper). Received: rate={rate!r}"
            )
        self.rate = float(rate)
        self.rounding = rounding
        self.channels = None
        self.factor_channels = None

    def build(self, input_shape):
        _validate_feature_map_shape("Paraphraser", input_shape)
        self.channels = int(input_shape[-1])
        self.factor_channels = factor_channels(
            self.channels, self.rate, self.rounding
        )
        c, m = self.channels, self.factor_channels
        self.encoder_blocks = [
            self._make_block(conv_class(input_shape, c), c, "encoder_0"),
            self._make_block(conv_class(input_shape, c), m, "encoder_1"),
            self._make_block(conv_class(input_shape, m), m, "encoder_2"),
        ]
        self.decoder_blocks = [
            self._make_block(
                conv_class(input_shape, m, transpose=True), m, "decoder_0"),
            self._make_block(
                conv_class(input_shape, m, transpose=True), c, "decoder_1"),
            self._make_block(
                conv_class(input_shape, c, transpose=True), c, "decoder_2"),
        ]
        factor_shape = self._build_blocks(self.encoder_blocks, input_shape)
        self._build_blocks(self.decoder_blocks, factor_shape)

    def call(self, inputs, training=None):
        return self._run_blocks(self.encoder_blocks, inputs, training)

    def decode(self, factor, training=None):
        """Maps a teacher factor back to the teacher's feature space."""
        return self._run_blocks(self.decoder_blocks, factor, training)

    def reconstruct(self, inputs, training=None):
        """Returns `decoder(encoder(inputs))`, same shape as `inputs`."""
        return self.decode(self(inputs, training=training), training=training)

    def compute_output_shape(self, input_shape):
        channels = factor_channels(
            int(input_shape[-1]), self.rate, self.rounding
        )
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        config["rounding"] = self.rounding
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Translator(_ConvStack):
    """Convolutional connector that turns a student map into a student factor.

    Three 3x3 stride-1 "same" convolutions with bias on a student feature map
    with `C_s` channels: `C_s -> C_s -> out_channels -> out_channels`, each
    followed by a `LeakyReLU(negative_slope)` (and, with `use_bn=True`,
    preceded by `BatchNormalization`). Its output is trained to mimic the
    teacher factor, so `out_channels` must equal the paraphraser's
    `factor_channels`.

    Args:
        out_channels: Channels of the student factor, the paraphraser's
            `factor_channels(C_t, rate, rounding)`.
        use_bn: Whether to put `BatchNormalization` after each convolution
            (the default of MMRazor's and RepDistiller's `Translator`). The
            paper's code and torchdistill's ImageNet config have none.
        negative_slope: Slope of the LeakyReLU for negative inputs.
        kernel_regularizer: Optional regularizer of the convolution kernels
            (e.g. `keras.regularizers.L2(2.5e-4)` for an L2 penalty whose
            gradient is `5e-4 * kernel`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Example:

    ```python
    import numpy as np
    translator = ft_keras.Translator(out_channels=32)
    student_map = np.random.rand(2, 8, 8, 16).astype("float32")
    translator(student_map).shape  # (2, 8, 8, 32)
    ```
    """

    def __init__(
        self,
        out_channels,
        use_bn=False,
        negative_slope=0.1,
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            use_bn=use_bn,
            negative_slope=negative_slope,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )
        if (
            isinstance(out_channels, bool)
            or not isinstance(out_channels, int)
            or out_channels < 1
        ):
            raise ValueError(
                "`out_channels` must be a positive integer (the teacher "
                "factor's channels, `Paraphraser.factor_channels`). Received: "
                f"out_channels={out_channels!r}"
            )
        self.out_channels = out_channels

    def build(self, input_shape):
        _validate_feature_map_shape("Translator", input_shape)
        channels, out = int(input_shape[-1]), self.out_channels
        self.blocks = [
            self._make_block(
                conv_class(input_shape, channels), channels, "translator_0"),
            self._make_block(
                conv_class(input_shape, channels), out, "translator_1"),
            self._make_block(conv_class(input_shape, out), out, "translator_2"),
        ]
        self._build_blocks(self.blocks, input_shape)

    def call(self, inputs, training=None):
        return self._run_blocks(self.blocks, inputs, training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config["out_channels"] = self.out_channels
        return config
