"""BatchNormalization computed by TensorFlow's fused kernel: Keras's layer,
one `FusedBatchNormV3` on the TensorFlow backend."""

import keras

_PACKAGE = "ft_keras"


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
