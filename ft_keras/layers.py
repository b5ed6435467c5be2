"""The two connectors of Factor Transfer: `Paraphraser` and `Translator`.

The paraphraser is a convolutional auto-encoder trained, unsupervised, on the
frozen teacher's feature map; its encoder output is the *teacher factor*. The
translator sits on the student's feature map and produces the *student
factor*, which is trained to mimic the teacher factor.
"""

import math

import keras

from ft_keras import _rounding

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, computed by TensorFlow's fused
    kernel.

    Keras 3 computes batch normalization from elementary ops: moments, a
    multiply and an add over the whole map, and under a `mixed_bfloat16` or
    `mixed_float16` policy a cast of the map to float32 and back around them.
    On CPU these memory-bound ops cost as much as the convolutions of a
    CIFAR ResNet. On the TensorFlow backend this layer runs the same
    computation as one `FusedBatchNormV3` (oneDNN's kernel on CPU), which
    takes bfloat16 or float16 maps with float32 statistics, needs no cast, and
    in inference mode is folded into the preceding convolution by
    TensorFlow's graph optimizer.

    Everything else is `keras.layers.BatchNormalization`: the arguments, the
    variables and their names, the moving-average update (with the biased
    batch variance, as Keras does), `get_config`; weights saved from either
    layer load into the other, as the class name, and so the weight paths,
    are the same. The fused kernel runs when the backend is TensorFlow, the
    input is 4-D and normalized over its last axis, and neither `mask`,
    `renorm` nor `synchronized` is used; otherwise the layer runs Keras's
    own computation. The networks of `ft_keras.models` use it.

    Example:

    ```python
    import numpy as np
    bn = ft_keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    x = np.random.normal(size=(8, 4, 4, 3)).astype("float32")
    y = bn(x, training=True)  # normalized with the batch's statistics
    ```
    """

    def _fused(self, inputs, mask):
        axis = self.axis if isinstance(self.axis, int) else None
        rank = len(inputs.shape)
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and rank == 4
            and axis in (-1, rank - 1)
            and not self.renorm
            and not self.synchronized
            and inputs.shape[-1] is not None
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask) or not isinstance(
            training, (bool, type(None))
        ):
            return super().call(inputs, training=training, mask=mask)
        from ft_keras import _tf_kernels  # only on the TensorFlow backend

        outputs = _tf_kernels.fused_batch_norm(self, inputs, training)
        if outputs is None:
            return super().call(inputs, training=training, mask=mask)
        return outputs


# A connector's 3x3 convolution (or transposed convolution) on a map of at
# most this many positions and at least this many input channels runs as
# matrix products (`PatchConv2D`, `PatchConv2DTranspose`): on ResNet-50's
# 4x4x2048 tap they are 2.4-4.9x faster on a CPU than the convolution
# kernels forward and backward, and 1.3-1.5x on its 4x4x1024 factor, while
# on the other shipped pairs' maps (8x8x64, 8x8x128, 7x7x512, 4x4x512 with
# its backward pass) the kernels are faster
# (`python benchmarks/small_map_conv.py`).
PATCH_CONV_MAX_POSITIONS = 16
PATCH_CONV_MIN_CHANNELS = 1024


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchConv2D(keras.layers.Conv2D):
    """A stride-1 `"same"` `Conv2D` computed as matrix products.

    Each of the `k * k` kernel taps is an `(in_channels, filters)` matrix;
    the output is the sum over taps of the zero-padded map, shifted by the
    tap's offset, times that matrix. In bfloat16 or float16 each output is
    rounded once, as a convolution kernel rounds it, on every CPU: one
    16-bit product over the shifted maps side by side where this machine's
    16-bit `matmul` rounds once, else float32 products. The variables, their
    shapes and the result (to float rounding) are `keras.layers.Conv2D`'s,
    so weights move between the two. It pays on small maps with many channels, where a
    convolution kernel reaches a fraction of the matrix-product rate; the
    connectors use it there (`PATCH_CONV_MAX_POSITIONS`,
    `PATCH_CONV_MIN_CHANNELS`). A map whose height or width is unknown when
    traced takes the convolution kernel.

    Example:

    >>> x = keras.random.normal((2, 4, 4, 6), seed=0)
    >>> patch = PatchConv2D(5, 3, padding="same")
    >>> conv = keras.layers.Conv2D(5, 3, padding="same")
    >>> conv.build(x.shape)
    >>> patch.build(x.shape)
    >>> patch.set_weights(conv.get_weights())
    >>> float(keras.ops.max(keras.ops.abs(patch(x) - conv(x)))) < 1e-5
    True
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        _validate_patch_settings(self, "Conv2D")

    def convolution_op(self, inputs, kernel):
        if inputs.shape[1] is None or inputs.shape[2] is None:
            return super().convolution_op(inputs, kernel)
        kh, kw = kernel.shape[:2]
        return _correlate(inputs, kernel, (kh - 1) // 2, (kw - 1) // 2)


def _validate_patch_settings(layer, base):
    """Raises unless `layer`, a subclass of `keras.layers.<base>`, is a
    stride-1 `"same"` convolution that a patch product computes."""
    wrong = {
        "strides": (layer.strides, (1, 1)),
        "padding": (layer.padding, "same"),
        "dilation_rate": (layer.dilation_rate, (1, 1)),
        "groups": (getattr(layer, "groups", 1), 1),
        "output_padding": (getattr(layer, "output_padding", None), None),
        "data_format": (layer.data_format, "channels_last"),
    }
    for name, (value, needed) in wrong.items():
        if value != needed:
            raise ValueError(
                f"{type(layer).__name__} computes {name}={needed!r} only; "
                f"use keras.layers.{base} for others. Received: "
                f"{name}={value!r}"
            )


def _correlate(inputs, kernel, top, left, transposed=False):
    """Correlation of `inputs` (batch, height, width, channels) with
    `kernel` (kh, kw, channels, filters), the map zero-padded by `top` rows
    above and `left` columns on the left to keep its size, as matrix
    products. With `transposed`, `kernel` is a transposed convolution's
    (kh, kw, filters, channels), used flipped.

    A 32-bit map sums one product per kernel tap: a tap's matrix is a slice
    of the kernel, so nothing as large as the kernel is copied, forward or
    backward. A 16-bit map must be rounded once per output, as a
    convolution kernel rounds it: where this machine's 16-bit `matmul` does
    that (`_rounding.matmul_rounds_once`: oneDNN on AVX-512 CPUs), one
    product over all taps' patches (im2col), the transposed form copying the
    kernel flipped; elsewhere (Eigen's bfloat16 kernels) the float32 tap
    products, rounded to 16 bits once at the end."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if dtype not in ("bfloat16", "float16"):
        return _tap_products(inputs, kernel, top, left, transposed)
    if not _rounding.matmul_rounds_once(dtype):
        outputs = _tap_products(keras.ops.cast(inputs, "float32"),
                                keras.ops.cast(kernel, "float32"),
                                top, left, transposed)
        return keras.ops.cast(outputs, dtype)
    if transposed:
        kernel = keras.ops.transpose(
            keras.ops.flip(keras.ops.flip(kernel, 0), 1), (0, 1, 3, 2)
        )
    kh, kw, channels, filters = kernel.shape
    patches = keras.ops.concatenate(
        _shifted_maps(inputs, kh, kw, top, left), axis=-1
    )
    return keras.ops.matmul(
        patches, keras.ops.reshape(kernel, (kh * kw * channels, filters))
    )


def _shifted_maps(inputs, kh, kw, top, left):
    """The zero-padded map shifted by each tap's offset, taps in row-major
    order, each of `inputs`' shape."""
    height, width = inputs.shape[1], inputs.shape[2]
    padded = keras.ops.pad(
        inputs, [[0, 0], [top, kh - 1 - top], [left, kw - 1 - left], [0, 0]]
    )
    return [padded[:, i:i + height, j:j + width, :]
            for i in range(kh) for j in range(kw)]


def _tap_products(inputs, kernel, top, left, transposed):
    """`_correlate` as a sum of one matrix product per kernel tap, each on
    two-dimensional operands (whose kernel gradient is one product)."""
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    kh, kw = kernel.shape[:2]
    filters = kernel.shape[2] if transposed else kernel.shape[3]
    taps = keras.ops.unstack(
        keras.ops.reshape(kernel, (kh * kw,) + tuple(kernel.shape[2:]))
    )
    outputs = None
    for index, shifted in enumerate(_shifted_maps(inputs, kh, kw, top, left)):
        rows = keras.ops.reshape(shifted, (-1, channels))
        if transposed:  # flipped: the last tap goes with the first offset
            tap = keras.ops.transpose(taps[kh * kw - 1 - index])
        else:
            tap = taps[index]
        product = keras.ops.matmul(rows, tap)
        outputs = product if outputs is None else outputs + product
    return keras.ops.reshape(outputs, (-1, height, width, filters))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchConv2DTranspose(keras.layers.Conv2DTranspose):
    """A stride-1 `"same"` `Conv2DTranspose` computed as matrix products.

    With stride 1, a transposed convolution is a convolution with the
    kernel flipped in space and its two channel axes swapped, so it runs as
    `PatchConv2D` does. The variables and the result (to float rounding) are
    `keras.layers.Conv2DTranspose`'s. The paraphraser's decoder uses it
    where its encoder uses `PatchConv2D`.

    Example:

    >>> x = keras.random.normal((2, 4, 4, 6), seed=0)
    >>> patch = PatchConv2DTranspose(5, 3, padding="same")
    >>> deconv = keras.layers.Conv2DTranspose(5, 3, padding="same")
    >>> deconv.build(x.shape)
    >>> patch.build(x.shape)
    >>> patch.set_weights(deconv.get_weights())
    >>> float(keras.ops.max(keras.ops.abs(patch(x) - deconv(x)))) < 1e-5
    True
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        _validate_patch_settings(self, "Conv2DTranspose")

    def call(self, inputs):
        if inputs.shape[1] is None or inputs.shape[2] is None:
            return super().call(inputs)
        kh, kw = self.kernel_size
        outputs = _correlate(
            inputs,
            self.kernel,
            kh - 1 - (kh - 1) // 2,
            kw - 1 - (kw - 1) // 2,
            transposed=True,
        )
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


def _conv_class(input_shape, channels, transpose=False):
    """The patch form of a 3x3 convolution (`transpose`: transposed
    convolution) of `channels` input channels on the map of `input_shape`
    where it is the faster, else Keras' layer."""
    height, width = input_shape[1], input_shape[2]
    patch = (
        height is not None
        and width is not None
        and height * width <= PATCH_CONV_MAX_POSITIONS
        and channels >= PATCH_CONV_MIN_CHANNELS
    )
    if transpose:
        return PatchConv2DTranspose if patch else keras.layers.Conv2DTranspose
    return PatchConv2D if patch else keras.layers.Conv2D


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
            self._make_block(_conv_class(input_shape, c), c, "encoder_0"),
            self._make_block(_conv_class(input_shape, c), m, "encoder_1"),
            self._make_block(_conv_class(input_shape, m), m, "encoder_2"),
        ]
        self.decoder_blocks = [
            self._make_block(
                _conv_class(input_shape, m, transpose=True), m, "decoder_0"),
            self._make_block(
                _conv_class(input_shape, m, transpose=True), c, "decoder_1"),
            self._make_block(
                _conv_class(input_shape, c, transpose=True), c, "decoder_2"),
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
                _conv_class(input_shape, channels), channels, "translator_0"),
            self._make_block(
                _conv_class(input_shape, channels), out, "translator_1"),
            self._make_block(_conv_class(input_shape, out), out, "translator_2"),
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
