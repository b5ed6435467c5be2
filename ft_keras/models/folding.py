"""Batch normalization folded into the convolution before it, for inference.

In inference a `BatchNormalization` after a `Conv2D` is an affine map of the
conv's output, `y = (conv(x, K) - mean) * gamma / sqrt(var + eps) + beta`,
which is one convolution with a scaled kernel and a bias:
`conv(x, K * s) + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`.
A frozen teacher runs that way in every distillation step: one conv (and its
bias, which oneDNN fuses with the following ReLU) instead of a conv plus a
normalization pass over the whole map. TensorFlow's graph optimizer does this
itself for float32 graphs, but not for bfloat16 or float16 ones.
"""

import collections

import keras
from keras import ops

from ft_keras import _keras_private


@keras.saving.register_keras_serializable(package="ft_keras")
class FoldedConv2D(keras.layers.Layer):
    """A `Conv2D` and the `BatchNormalization` after it, as one convolution.

    Computes `batch_norm(conv(x), training=False)` as
    `conv(x, kernel * s) + (beta - moving_mean * s)` (plus `bias * s` if the
    conv has a bias), `s = gamma / sqrt(moving_variance + epsilon)`. The
    folded kernel and bias are computed in float32 from the two layers' own
    variables at every call, so the layer stays right when their weights
    change (a teacher restored after it was folded); only the convolution
    runs in the compute dtype. The BatchNormalization always uses its moving
    statistics: this layer is for inference (a frozen model), and its
    `training` argument changes nothing.

    Built by `fold_batch_norm`; the layers it wraps are shared, not copied.

    Args:
        conv: A `keras.layers.Conv2D` without activation.
        batch_norm: A `keras.layers.BatchNormalization` over the conv's
            channel axis.

    Example:

    ```python
    import keras
    import numpy as np
    conv = keras.layers.Conv2D(8, 3, use_bias=False)
    bn = keras.layers.BatchNormalization()
    x = np.random.normal(size=(2, 6, 6, 3)).astype("float32")
    y = bn(conv(x), training=False)
    folded = FoldedConv2D(conv, bn)
    np.testing.assert_allclose(folded(x), y, atol=1e-5)
    ```
    """

    def __init__(self, conv, batch_norm, **kwargs):
        kwargs.setdefault("dtype", conv.dtype_policy)
        # The fold is float32 arithmetic on float32 variables; only the
        # convolution's operands are cast to the compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        reason = _why_not_foldable(conv, batch_norm)
        if reason:
            raise ValueError(
                f"Cannot fold {batch_norm.name!r} into {conv.name!r}: "
                f"{reason}. Received: conv={conv!r}, batch_norm={batch_norm!r}"
            )
        self.conv = conv
        self.batch_norm = batch_norm

    def build(self, input_shape):
        if not self.conv.built:
            self.conv.build(input_shape)
        if not self.batch_norm.built:
            self.batch_norm.build(self.conv.compute_output_shape(input_shape))

    def folded_weights(self):
        """The float32 `(kernel, bias)` of the single convolution."""
        bn, conv = self.batch_norm, self.conv
        scale = ops.rsqrt(
            ops.cast(bn.moving_variance, "float32") + bn.epsilon
        )
        if bn.scale:
            scale = scale * ops.cast(bn.gamma, "float32")
        bias = -ops.cast(bn.moving_mean, "float32") * scale
        if bn.center:
            bias = bias + ops.cast(bn.beta, "float32")
        if conv.use_bias:
            bias = bias + ops.cast(conv.bias, "float32") * scale
        return ops.cast(conv.kernel, "float32") * scale, bias

    def call(self, inputs, training=None):
        kernel, bias = self.folded_weights()
        dtype = self.compute_dtype
        conv = self.conv
        outputs = ops.conv(
            ops.cast(inputs, dtype),
            ops.cast(kernel, dtype),
            strides=conv.strides,
            padding=conv.padding,
            data_format=conv.data_format,
            dilation_rate=conv.dilation_rate,
        )
        bias = ops.cast(bias, dtype)
        if keras.backend.backend() == "tensorflow":
            from ft_keras import _tf_kernels

            # BiasAdd, which TensorFlow's graph optimizer fuses into the
            # conv (and the ReLU after it) in every precision.
            return _tf_kernels.bias_add(outputs, bias, conv.data_format)
        shape = (1, -1, 1, 1) if conv.data_format == "channels_first" else (-1,)
        return outputs + ops.reshape(bias, shape)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            conv=keras.saving.serialize_keras_object(self.conv),
            batch_norm=keras.saving.serialize_keras_object(self.batch_norm),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["conv"] = keras.saving.deserialize_keras_object(config["conv"])
        config["batch_norm"] = keras.saving.deserialize_keras_object(
            config["batch_norm"]
        )
        return cls(**config)


@keras.saving.register_keras_serializable(package="ft_keras")
class FoldedAway(keras.layers.Layer):
    """Where a BatchNormalization was before `fold_batch_norm` folded it into
    the conv before it: the identity, called as the normalization was.

    Example:

    ```python
    import numpy as np
    x = np.ones((1, 2, 2, 3), "float32")
    assert np.array_equal(FoldedAway(name="bn")(x, training=False), x)
    ```
    """

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _why_not_foldable(conv, batch_norm):
    """Why `batch_norm(conv(x))` is not one convolution, or None."""
    if not isinstance(conv, keras.layers.Conv2D):
        return f"{type(conv).__name__} is not a Conv2D"
    if not isinstance(batch_norm, keras.layers.BatchNormalization):
        return f"{type(batch_norm).__name__} is not a BatchNormalization"
    if conv.activation is not keras.activations.linear:
        return "the conv has an activation between it and the normalization"
    channel_axis = 1 if conv.data_format == "channels_first" else 3
    if batch_norm.axis not in (channel_axis, channel_axis - 4):
        return (
            f"the normalization is over axis {batch_norm.axis}, not the "
            f"conv's channel axis {channel_axis}"
        )
    if getattr(batch_norm, "renorm", False) or getattr(
        batch_norm, "synchronized", False
    ):
        return "batch renormalization or synchronized statistics"
    return None


def _foldable_pairs(model):
    """`{id(conv): batch_norm}` for each `Conv2D -> BatchNormalization` edge
    of `model`'s graph where the conv's output goes nowhere else."""
    nodes = _keras_private.graph_nodes(model)
    consumers = collections.Counter()
    for node in nodes:
        for tensor in node.arguments.keras_tensors:
            consumers[id(tensor)] += 1
    for tensor in model.outputs:  # a model output must stay as it is
        consumers[id(tensor)] += 1
    calls = collections.Counter(id(node.operation) for node in nodes)
    pairs = {}
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        tensors = node.arguments.keras_tensors
        if len(tensors) != 1 or node.arguments.kwargs.get("training"):
            continue
        conv = _keras_private.producer(tensors[0])
        if (
            conv is None
            or calls[id(bn)] != 1
            or calls[id(conv)] != 1
            or consumers[id(tensors[0])] != 1
            or _why_not_foldable(conv, bn)
        ):
            continue
        pairs[id(conv)] = bn
    return pairs


def fold_batch_norm(model):
    """`model` for inference, each `Conv2D -> BatchNormalization` one conv.

    Returns a functional model computing `model(x, training=False)` in which
    every `BatchNormalization` that follows a `Conv2D` (without activation,
    whose output feeds nothing else) is folded into it (`FoldedConv2D`).
    It shares `model`'s layers and variables: nothing is copied, and it
    follows `model`'s weights when they change. The other layers keep
    their names, so taps by name still work; the normalization layers become
    identities of the same names (`FoldedAway`). Returns `model` itself if it has
    no such pair or is not functional.

    The distillers run their frozen teacher through it. In float32
    TensorFlow's graph optimizer folds the same pairs by itself; in bfloat16
    and float16, and on the JAX and PyTorch backends, it does not.

    Example:

    ```python
    import numpy as np
    teacher = resnet20(num_classes=10)
    folded = fold_batch_norm(teacher)
    x = np.random.uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), teacher(x, training=False),
                               atol=1e-4)
    ```
    """
    if not _keras_private.is_graph_network(model):
        return model
    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded_away = {id(bn) for bn in pairs.values()}

    def clone(layer):
        if id(layer) in pairs:
            return FoldedConv2D(layer, pairs[id(layer)], name=layer.name)
        if id(layer) in folded_away:
            return FoldedAway(name=layer.name, dtype=layer.dtype_policy.name)
        return layer

    # (Setting `trainable` on the new model would set it on every shared
    # layer: the shared layers keep theirs.)
    return keras.models.clone_model(model, clone_function=clone)
