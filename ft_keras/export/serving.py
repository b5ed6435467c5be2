"""The serving model: the student behind the normalisation of its dataset,
raw uint8 images in, `logits` and `probabilities` out, and its SavedModel.

Every exported file is this one Keras model (`ft_keras.export.student`).
"""

import keras
import numpy as np
import tensorflow as tf

from ft_keras import models

SERVING = "serving_default"


def serving_model(student, pixel_max, mean, std):
    """`uint8 images -> {"logits", "probabilities"}`: `student` behind the
    normalisation `(x / pixel_max - mean) / std`, as one Keras model.

    Example:

    ```python
    from ft_keras import models
    student = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    served = serving_model(student, 16, mean=(0.3,), std=(0.4,))
    served(np.zeros((2, 8, 8, 1), np.uint8))["probabilities"].shape  # (2, 10)
    ```
    """
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    # Trained under a mixed policy, served in float32.
    student = models.with_dtype_policy(student, "float32")
    images = keras.Input(tuple(student.input_shape[1:]), dtype="uint8", name="images")
    x = keras.layers.Rescaling(
        scale=(1.0 / (pixel_max * std)).tolist(),
        offset=(-mean / std).tolist(),
        dtype="float32",
        name="normalize",
    )(keras.ops.cast(images, "float32"))
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
        student(x)
    )
    probabilities = keras.layers.Activation(
        "softmax", dtype="float32", name="probabilities"
    )(logits)
    return keras.Model(
        images, {"logits": logits, "probabilities": probabilities}, name="serving"
    )


def write_saved_model(served, path):
    """Writes the SavedModel of `serving_model`'s `served`: its
    `serving_default` signature takes uint8 `images`."""
    archive = keras.export.ExportArchive()
    archive.track(served)
    archive.add_endpoint(
        name=SERVING,
        fn=lambda images: served(images, training=False),
        input_signature=[
            tf.TensorSpec(
                (None,) + tuple(served.input_shape[1:]), tf.uint8, name="images"
            )
        ],
    )
    archive.write_out(path, verbose=False)
