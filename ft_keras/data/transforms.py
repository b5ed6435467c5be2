"""Per-example transforms and the Keras augmentation layers of `augment`.

The geometric transforms reproduce torchvision's (`RandomCrop` with
padding, `RandomHorizontalFlip`, `RandomResizedCrop`, `Resize` +
`CenterCrop`) with stateless TensorFlow ops: each takes an explicit
`seed`, a `(2,)` int tensor drawn per example by the pipeline, so a seeded
pipeline is repeatable. Images stay uint8 until the pipeline normalises
them.

`augment` names Keras layers instead (`AUGMENTATIONS`): RandAugment per
image on raw pixels, CutMix / MixUp per batch on normalised images with
one-hot labels. A Keras layer draws from a stateful seed generator;
`seeded_call` makes its draws a function of a `(2,)` seed per call
instead, so a seeded pipeline resumed mid-run augments as the run it
continues.
"""

import math

import keras
import tensorflow as tf

from ft_keras import _keras_private

__all__ = [
    "AUGMENTATIONS",
    "MIXING_AUGMENTATIONS",
    "augmentation_layers",
    "imagenet_eval",
    "imagenet_train",
    "mix",
    "pad_crop_flip",
    "resize",
    "seeded_call",
]

AUGMENTATIONS = (
    "randaugment",
    "cutmix",
    "mixup",
    "keras_cv.randaugment",
    "keras_cv.cutmix",
    "keras_cv.mixup",
)
# The augmentations that mix examples, and so make the labels one-hot.
MIXING_AUGMENTATIONS = ("cutmix", "mixup", "keras_cv.cutmix", "keras_cv.mixup")


# --------------------------------------------------------------------------
# Geometric transforms, stateless.


def pad_crop_flip(image, seed, pad, flip):
    """torchvision `RandomCrop(size, padding=pad)`, then optionally
    `RandomHorizontalFlip()`.

    Example:

    >>> image = tf.ones((32, 32, 3), tf.uint8)
    >>> out = pad_crop_flip(image, tf.constant([1, 2]), pad=4, flip=True)
    >>> out.shape, out.dtype.name
    (TensorShape([32, 32, 3]), 'uint8')
    """
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2)
    )
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, size=shape, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def _resized_crop_window(
    height,
    width,
    seed,
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    attempts=10,
):
    """torchvision `RandomResizedCrop.get_params` with stateless sampling.

    Returns int32 `(top, left, crop_height, crop_width)`.
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = h_f * w_f
    target_area = area * tf.random.stateless_uniform(
        [attempts], seeds[0], minval=scale[0], maxval=scale[1]
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [attempts],
            seeds[1],
            minval=math.log(ratio[0]),
            maxval=math.log(ratio[1]),
        )
    )
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= w_f) & (crop_h <= h_f)
    first = tf.argmax(tf.cast(valid, tf.int32))

    # Fallback: central crop with the aspect ratio clamped into `ratio`.
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > ratio[1], tf.round(h_f * ratio[1]), w_f)
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w_f / ratio[0]), h_f)

    found = tf.reduce_any(valid)
    crop_h = tf.cast(tf.where(found, crop_h[first], fb_h), tf.int32)
    crop_w = tf.cast(tf.where(found, crop_w[first], fb_w), tf.int32)
    top = tf.where(
        found,
        tf.random.stateless_uniform(
            [], seeds[2], minval=0, maxval=height - crop_h + 1, dtype=tf.int32
        ),
        (height - crop_h) // 2,
    )
    left = tf.where(
        found,
        tf.random.stateless_uniform(
            [], seeds[3], minval=0, maxval=width - crop_w + 1, dtype=tf.int32
        ),
        (width - crop_w) // 2,
    )
    return top, left, crop_h, crop_w


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize(image, size):
    """Bilinear, antialiased (like PIL / torchvision), back to uint8.

    Example:

    >>> resize(tf.zeros((6, 8, 3), tf.uint8), (3, 4)).shape
    TensorShape([3, 4, 3])
    """
    return _to_uint8(tf.image.resize(image, size, antialias=True))


def imagenet_train(encoded, seed, size):
    """torchvision `RandomResizedCrop(size)` + `RandomHorizontalFlip()` of a
    JPEG, decoding only the crop."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2)
    )
    shape = tf.io.extract_jpeg_shape(encoded)
    top, left, height, width = _resized_crop_window(
        shape[0], shape[1], crop_seed
    )
    image = tf.io.decode_and_crop_jpeg(
        encoded, tf.stack([top, left, height, width]), channels=3
    )
    image = resize(image, [size, size])
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def imagenet_eval(encoded, size):
    """torchvision `Resize(size * 256 / 224)` + `CenterCrop(size)` of a JPEG."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    resize_to = int(round(size * 256 / 224))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    long_side = tf.maximum(height, width)
    new_long = (resize_to * long_side) // short
    new_h = tf.where(height <= width, resize_to, new_long)
    new_w = tf.where(height <= width, new_long, resize_to)
    image = resize(image, tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


# --------------------------------------------------------------------------
# Keras augmentation layers.


def _layer_seed(seed, offset):
    return None if seed is None else (seed * 1_000_003 + offset) % (2**31 - 1)


def _keras_cv():
    try:
        import keras_cv
    except ImportError as error:
        raise ImportError(
            "An `augment` entry starting with 'keras_cv.' needs the keras-cv "
            "package (`pip install keras-cv`); the core Keras versions are "
            "'randaugment', 'cutmix' and 'mixup'."
        ) from error
    return keras_cv


def augmentation_layers(augment, max_value, seed):
    """The layers of `augment` (names among `AUGMENTATIONS`), seeded from
    `seed` and their position in `augment`.

    Returns:
        `(per_example, per_batch)` lists of `(name, layer)`: RandAugment
        (Keras core) maps single raw images, the others batches.

    Example:

    >>> per_example, per_batch = augmentation_layers(
    ...     ("randaugment", "mixup"), max_value=255, seed=0)
    >>> [name for name, _ in per_example], [name for name, _ in per_batch]
    (['randaugment'], ['mixup'])
    """
    per_example, per_batch = [], []
    for index, item in enumerate(augment):
        layer_seed = _layer_seed(seed, index + 1)
        if item == "randaugment":
            layer = keras.layers.RandAugment(
                value_range=(0, max_value), seed=layer_seed
            )
            per_example.append((item, layer))
        elif item == "cutmix":
            per_batch.append((item, keras.layers.CutMix(seed=layer_seed)))
        elif item == "mixup":
            per_batch.append((item, keras.layers.MixUp(seed=layer_seed)))
        elif item == "keras_cv.randaugment":
            layer = _keras_cv().layers.RandAugment(
                value_range=(0, max_value), seed=layer_seed
            )
            per_batch.append((item, layer))
        elif item == "keras_cv.cutmix":
            per_batch.append((item, _keras_cv().layers.CutMix(seed=layer_seed)))
        elif item == "keras_cv.mixup":
            per_batch.append((item, _keras_cv().layers.MixUp(seed=layer_seed)))
    return per_example, per_batch


def seeded_call(layer):
    """`call(data, seed)`: `layer(data)` with the layer's random draws a
    function of `seed` alone, or `None` for a layer that does not draw
    from a Keras core seed generator (the keras-cv layers).

    A Keras preprocessing layer run by `tf.data` draws from a seed
    generator whose state lives in the process: a pipeline rebuilt after a
    restart starts it afresh, and the next element's augmentation would
    depend on how many came before. `call` sets that state to `seed` (a
    `(2,)` int tensor, drawn per example or batch by the pipeline) before
    each call. Calls must run one at a time (`num_parallel_calls=1`): the
    state is shared.

    Example:

    >>> layer = keras.layers.RandAugment(value_range=(0, 255), seed=1)
    >>> call = seeded_call(layer)
    >>> image = tf.cast(tf.reshape(tf.range(192) % 256, (8, 8, 3)), tf.uint8)
    >>> seed = tf.constant([3, 4], tf.int64)
    >>> a, b = call(image, seed), call(image, seed)
    >>> bool(tf.reduce_all(a == b))
    True
    """
    generator = _keras_private.tf_data_seed_generator(layer)
    if generator is None:
        return None
    state = generator.state

    def call(data, seed):
        state.assign(tf.cast(seed, state.dtype))
        return layer(data)

    return call


def mix(images, labels, layer):
    """Applies a CutMix/MixUp layer (or its `seeded_call`) to a batch with
    one-hot labels."""
    out = layer({"images": images, "labels": labels})
    return out["images"], out["labels"]
