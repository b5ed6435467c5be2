"""Stride-1 "same" convolutions computed as matrix products: `PatchConv2D`,
`PatchConv2DTranspose`, and where the connectors use them (`conv_class`)."""

import keras

from ft_keras import _rounding

_PACKAGE = "ft_keras"


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



def conv_class(input_shape, channels, transpose=False):
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
