"""scikit-learn's handwritten digits (bundled with it, no download) as
8x8x1 images, and small functional networks with stage taps for them."""

import functools

import numpy as np

import keras


@functools.lru_cache(maxsize=None)
def _digits():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
    return images, labels.astype("int32")


def digits(n=64, start=0):
    """`n` digit images in [0, 1], `(n, 8, 8, 1)`, and their classes."""
    images, labels = _digits()
    return images[start:start + n], labels[start:start + n]


def digits_net(name, width, batch_norm=True, seed=0, bn_momentum=0.99):
    """A CNN for 8x8x1 digits with taps `stage1` (8x8xwidth) and `stage2`
    (4x4x2width, post-ReLU) and 10 logits."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init,
                            name="conv1")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name="bn1")(x)
    x = keras.layers.ReLU(name="stage1")(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same",
                            kernel_initializer=init, name="conv2")(x)
    x = keras.layers.ReLU(name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, kernel_initializer=init, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


TEACHER_BN_MOMENTUM = 0.9


@functools.lru_cache(maxsize=None)
def _teacher_weights():
    # A fixed order (no `fit` shuffling, which would draw from the global
    # RNG that the tests before this one left) makes the teacher the same
    # in every worker. BatchNorm momentum 0.9: in 96 steps the default 0.99
    # leaves the moving statistics near their initial values, and the
    # teacher in inference mode 38% right where this one is 87%.
    teacher = digits_net("teacher", 16, seed=1, bn_momentum=TEACHER_BN_MOMENTUM)
    x, y = digits(1000)  # images 1000 onwards stay held out
    order = np.random.default_rng(0).permutation(len(x))
    teacher.compile(keras.optimizers.Adam(0.01),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x[order], y[order], batch_size=64, epochs=6, shuffle=False,
                verbose=0)
    return tuple(teacher.get_weights())


def trained_teacher():
    """A digits teacher trained for a few epochs, about 87% right in
    inference mode on the images it saw and 89% on held-out ones (once per
    worker; each call returns a fresh copy)."""
    teacher = digits_net("teacher", 16, seed=1, bn_momentum=TEACHER_BN_MOMENTUM)
    teacher.set_weights(list(_teacher_weights()))
    return teacher


def snapshot(obj):
    return [np.array(v) for v in obj.weights]
