"""TensorFlow-only kernels: the one module of the core that imports
TensorFlow.

Keras' own ops compute batch normalization and a convolution's bias from
elementary ops; TensorFlow has single kernels for both, which its graph
optimizer fuses with the convolution around them. The layers that use these
kernels (`ft_keras.layers.BatchNormalization`, `ft_keras.models.
FoldedConv2D`) import this module inside `call`, only when the Keras backend
is TensorFlow, and compute the same thing with `keras.ops` on the other
backends; importing `ft_keras.layers`, `ft_keras.losses`,
`ft_keras.distiller` or `ft_keras.models` never imports it. `ft_keras.CRD`
reads the `tf.distribute` replica context here, likewise.
"""

import tensorflow as tf


def fused_batch_norm(layer, inputs, training):
    """`layer(inputs, training=training)` as one `FusedBatchNormV3`, or None.

    `layer` is a 4-D, last-axis `keras.layers.BatchNormalization` without
    `renorm` or `synchronized` (what `ft_keras.layers.BatchNormalization`
    checks before calling this); `training` is a Python bool or None. When
    training a trainable layer, updates its moving statistics with the
    batch's biased variance, as Keras does. Returns None, computing nothing,
    when `inputs` is not float32, bfloat16 or float16: the caller then runs
    Keras' own computation.
    """
    x = tf.convert_to_tensor(inputs)
    if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
        return None
    ones = tf.ones(x.shape[-1:], tf.float32)
    scale = tf.cast(layer.gamma, tf.float32) if layer.scale else ones
    offset = tf.cast(layer.beta, tf.float32) if layer.center else 0.0 * ones
    if training and layer.trainable:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, epsilon=layer.epsilon, is_training=True
        )[:3]
        # The kernel returns the unbiased (Bessel-corrected) variance;
        # Keras averages the biased one.
        count = tf.cast(tf.size(x, out_type=tf.int64) // x.shape[-1], tf.float32)
        variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
        momentum = layer.momentum
        layer.moving_mean.assign(
            layer.moving_mean * momentum + mean * (1.0 - momentum)
        )
        layer.moving_variance.assign(
            layer.moving_variance * momentum + variance * (1.0 - momentum)
        )
    else:
        outputs = tf.compat.v1.nn.fused_batch_norm(
            x,
            scale,
            offset,
            mean=tf.cast(layer.moving_mean, tf.float32),
            variance=tf.cast(layer.moving_variance, tf.float32),
            epsilon=layer.epsilon,
            is_training=False,
        )[0]
    return tf.cast(outputs, layer.compute_dtype)


def bias_add(outputs, bias, data_format):
    """`outputs + bias` over the channel axis as one `BiasAdd`, which
    TensorFlow's graph optimizer fuses into the convolution before it (and
    the ReLU after it) in every precision. `data_format` is Keras'
    `"channels_last"` or `"channels_first"`."""
    return tf.nn.bias_add(
        outputs,
        bias,
        data_format="NCHW" if data_format == "channels_first" else None,
    )


def replica_context():
    """The `tf.distribute` replica context of a step on several replicas,
    or None (one replica, or outside a replica function): what a term that
    keeps one state for all replicas (`ft_keras.CRD`'s memory) gathers
    with."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context
