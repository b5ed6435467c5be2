"""The `tf.data` pipeline: `build_dataset`, and `synthetic_dataset`.

`build_dataset` reads top to bottom in four steps, a function each:

1. `_options`: the arguments checked, the dataset's spec and the resolved
   `PipelineOptions`;
2. `_source`: decoded uint8 examples (encoded JPEG bytes for ImageNet) and
   int32 labels, from TFDS (`availability.ensure_prepared` first; an image
   folder through TFDS's `ImageFolder` builder) or digits (`_read`), cached
   in memory before any randomness where the data fit (`_cache`), then
   shuffled and repeated (`_shuffle_and_repeat`);
3. `_transform_examples`: the recipe's crop and flip (`_crop_and_flip`),
   seeded per example, then the per-image Keras layers of `augment`
   (RandAugment; in a deterministic pipeline seeded per example too,
   `_map_layer`);
4. `_batch_normalize_and_mix`: batch, normalise, CutMix / MixUp, prefetch.

The recipes of training pipelines (`training=True`, step 3):

- CIFAR-10/100, Fashion-MNIST: 4-pixel zero pad, random crop back to the
  image size, random horizontal flip.
- ImageNet: torchvision `RandomResizedCrop(224, scale=(0.08, 1),
  ratio=(3/4, 4/3))` (decoding only the crop) and horizontal flip.
- digits: 1-pixel zero pad and random 8x8 crop (no flip: digits are not
  mirror-invariant).
- other TFDS datasets and image folders: no geometric augmentation, unless
  `recipe="cifar"` asks for CIFAR's.

Evaluation pipelines normalise only (ImageNet: resize the shorter side to
256, center crop 224).

Random ops are stateless, seeded per example from `seed`, so
`deterministic=True, seed=s` yields the same batches every time a dataset is
built; each new iteration (epoch) draws new augmentations and a new shuffle
order. Decoded uint8 data are cached in memory before augmentation where they
fit (CIFAR, digits; not ImageNet).

An image folder (`name="image_folder:<root>"`, see
`ft_keras.data.image_folder`) is read by TFDS's `ImageFolder` builder; its
images are decoded to the channels of its first training image, resized to
that image's size (or `image_size`), and normalised with the training
split's mean and std.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ft_keras.data import availability
from ft_keras.data import image_folder
from ft_keras.data import specs
from ft_keras.data import transforms
from ft_keras.data.options import PipelineOptions
from ft_keras.data.options import is_int

__all__ = ["build_dataset", "synthetic_dataset"]

AUTOTUNE = tf.data.AUTOTUNE

# Decoded datasets up to this size are cached in memory by `cache="auto"`.
_AUTO_CACHE_BYTES = 2 * 1024**3
# `recipe="cifar"` on a dataset whose own recipe is not: CIFAR's padding.
CIFAR_PADDING = 4


def build_dataset(name, split, *, batch_size, training, data_dir=None,
                  **options):
    """Builds a batched `tf.data.Dataset` of `(images, labels)`.

    Images are float32 NHWC, normalised exactly like PyTorch's `ToTensor()`
    followed by `Normalize(mean, std)`: `(x / max_value - mean) / std` with
    `max_value` 255 (16 for digits). Labels are int32 class indices, except
    when `augment` contains `"cutmix"` or `"mixup"`: the labels are then
    one-hot float32 of shape `(batch, num_classes)` (soft after mixing), in
    the training *and* the evaluation dataset so one loss
    (`keras.losses.CategoricalCrossentropy`) fits both.

    Training pipelines (`training=True`) are shuffled and augmented (the
    recipe, then `augment`), evaluation pipelines only normalised: see the
    module docstring for the recipes, seeds, caching and image folders.

    Args:
        name: `"digits"`, a TFDS name (`"cifar10"`, `"cifar100"`,
            `"fashion_mnist"`, `"imagenet2012"` or any TFDS image
            classification dataset) or an image folder,
            `"image_folder:<root>"` for `<root>/train/<class>/*.jpg`, ...
        split: `"train"`/`"test"` for digits; any TFDS split string
            (`"train"`, `"test"`, `"validation"`, `"train[:90%]"`, ...);
            a split folder's name for an image folder.
        batch_size: The global batch size (split across replicas by a
            `tf.distribute` strategy).
        training: Whether to shuffle and augment.
        data_dir: TFDS data directory (default: `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`); ignored by digits and image folders.
        **options: The fields of `PipelineOptions`, where each one is
            documented with its default (`mean`, `std`, `seed`,
            `deterministic`, `augment`, ...); `None` means the default.

    Returns:
        A `tf.data.Dataset` yielding `(images, labels)` batches.

    Raises:
        DatasetNotPreparedError: a TFDS dataset is not in `data_dir` and
            cannot be downloaded now (offline, `download=False` or a manual
            download is needed). The message is one line.
        ImageFolderError: (a `ValueError`) an image folder that cannot be
            read (`image_folder.describe`). The message is one line.
        ValueError: unknown dataset name or invalid option value.
        TypeError: unknown option.

    Example:

    >>> ds = build_dataset("digits", "train", batch_size=32, training=True,
    ...                    seed=1, deterministic=True)
    >>> images, labels = next(iter(ds))
    >>> images.shape, images.dtype.name, labels.dtype.name
    (TensorShape([32, 8, 8, 1]), 'float32', 'int32')
    """
    spec, opts = _options(name, split, batch_size, training, options)
    ds = _source(name, split, spec, opts, data_dir, training)
    ds, per_batch = _transform_examples(ds, spec, opts, training)
    ds = _batch_normalize_and_mix(ds, spec, opts, batch_size, per_batch)
    if opts.index:
        ds = _index_as_input(ds)
    return ds.with_options(_tf_data_options(opts))


def split_labels(name, split, data_dir=None, **options):
    """The labels of a split in the order of `index=True`'s indices: int32
    class indices, one per example (`options` as `build_dataset`'s, e.g.
    `download`).

    Example:

    >>> labels = split_labels("digits", "train")
    >>> labels.shape, labels.dtype.name
    ((1437,), 'int32')
    """
    spec, opts = _options(name, split, 1, False, options)
    ds, _ = _read(name, split, spec, opts, data_dir, training=False)
    batches = ds.map(lambda image, label: label).batch(8192)
    return np.concatenate(list(batches.as_numpy_iterator())).astype(np.int32)


# --------------------------------------------------------------------------
# 1. Options.


def _options(name, split, batch_size, training, options):
    """Checks the arguments; returns `(spec, resolved PipelineOptions)`."""
    _check_arguments(name, split, batch_size, training)
    spec = specs.get(name)
    opts = PipelineOptions.from_kwargs(options).resolve(name, training)
    return spec, opts


def _check_arguments(name, split, batch_size, training):
    specs.check_name(name)
    if not isinstance(split, str) or not split:
        raise ValueError(
            f"`split` must be a non-empty split name such as 'train'. "
            f"Received: split={split!r}"
        )
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive int (the global batch size). "
            f"Received: batch_size={batch_size!r}"
        )
    if not isinstance(training, bool):
        raise ValueError(
            f"`training` must be True or False. Received: training={training!r}"
        )


# --------------------------------------------------------------------------
# 2. Source: read decoded uint8 examples (encoded JPEG bytes for ImageNet),
# cache them before any randomness, shuffle, repeat.


def _source(name, split, spec, opts, data_dir, training):
    """The dataset's `(uint8 image, int32 label)` examples, cached where
    they fit, shuffled when training, repeated if asked."""
    ds, size = _read(name, split, spec, opts, data_dir, training)
    ds = _cache(ds, spec, opts, size)
    return _shuffle_and_repeat(ds, opts, training)


def _read(name, split, spec, opts, data_dir, training):
    """Returns `(dataset of (image, int32 label), number of examples or
    None)`; generic datasets come resized to `image_size` if given, image
    folders to `image_size` or their first training image's size."""
    size_to = opts.image_size
    if spec.recipe == "digits":
        ds, size = _digits_dataset(split)
    else:
        if image_folder.is_image_folder(name):
            image_folder.check_split(name, split)
            size_to = size_to or spec.input_shape[:2]
        if (
            spec.recipe == "generic"
            and opts.image_size is None
            and None in spec.input_shape
        ):
            raise ValueError(
                f"The images of {name!r} vary in size: their shape is "
                f"{spec.input_shape}. Pass image_size=(height, width)."
            )
        ds, size = _tfds_dataset(
            name,
            split,
            data_dir,
            opts,
            training,
            decode=spec.recipe != "imagenet",
        )
    ds = ds.map(
        lambda image, label: (image, tf.cast(label, tf.int32)),
        num_parallel_calls=AUTOTUNE,
    )
    if spec.recipe == "generic" and size_to is not None:
        # An image of that size already comes back unchanged.
        ds = ds.map(
            lambda image, label: (transforms.resize(image, size_to), label),
            num_parallel_calls=AUTOTUNE,
        )
    if opts.index:
        # Each example's position in the split rides with its label, which
        # every transform passes through, until `build_dataset` returns.
        ds = ds.enumerate().map(
            lambda i, example: (example[0], (example[1], tf.cast(i, tf.int32))))
    return ds, size


def _digits_dataset(split):
    if split not in ("train", "test"):
        raise ValueError(
            "`split` for 'digits' must be 'train' or 'test'. "
            f"Received: split={split!r}"
        )
    x, y = specs.digits_splits()[split]
    return tf.data.Dataset.from_tensor_slices((x, y)), len(y)


def _tfds_dataset(name, split, data_dir, opts, training, decode):
    """Reads `(image, label)` examples of a TFDS dataset, prepared first
    if needed (`availability.ensure_prepared`); an image folder's files are
    read where they are."""
    builder = specs.tfds_builder(name, data_dir)
    specs.supervised_features(builder, name)
    if not image_folder.is_image_folder(name):
        # Not for a folder: TFDS' "prepared?" check would warn that its root
        # is not a version folder.
        builder = availability.ensure_prepared(builder, name, opts.download)
    read_config = tfds.ReadConfig(
        shuffle_seed=opts.seed,
        try_autocache=False,  # `build_dataset` caches after decoding itself
    )
    decoders = (
        None
        if decode
        else {builder.info.supervised_keys[0]: tfds.decode.SkipDecoding()}
    )
    ds = builder.as_dataset(
        split=split,
        as_supervised=True,
        # In order where each example's index is its position.
        shuffle_files=training and not opts.deterministic and not opts.index,
        decoders=decoders,
        read_config=read_config,
    )
    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        size = None
    return ds, size


def _cache(ds, spec, opts, size):
    cache = opts.cache
    if cache == "auto":
        cache = spec.cache
        if spec.recipe == "generic" and size:
            shape = (
                opts.image_size + spec.input_shape[-1:]
                if opts.image_size
                else spec.input_shape
            )
            cache = size * int(np.prod(shape)) < _AUTO_CACHE_BYTES
    return ds.cache() if cache else ds


def _shuffle_and_repeat(ds, opts, training):
    if training and opts.shuffle_buffer > 0:
        ds = ds.shuffle(
            opts.shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True
        )
    if opts.repeat:
        ds = ds.repeat()
    return ds


# --------------------------------------------------------------------------
# 3. Per-example transforms, seeded per example.


def _transform_examples(ds, spec, opts, training):
    """Applies the recipe's crop and flip, then the per-image layers of
    `augment`; returns `(dataset, per-batch layers of augment)`."""
    ds = _crop_and_flip(ds, spec, opts, training)
    per_example, per_batch = _augmentation_layers(spec, opts, training)
    for _, layer in per_example:
        ds = _map_layer(ds, layer, opts, _image_only)
    return ds, per_batch


def _seed_stream(seed):
    """A `(2,)` int64 seed per element, a new stream for each iterator
    (epoch): random, yet repeatable and resumable by counting iterators."""
    return tf.data.Dataset.random(
        seed=seed, rerandomize_each_iteration=True
    ).batch(2, drop_remainder=True)


def _crop_and_flip(ds, spec, opts, training):
    """The recipe's geometric transform: random when training (a `(2,)`
    seed per example from `opts.seed`), ImageNet's center crop otherwise."""
    crop = opts.image_size[0] if opts.image_size else 224
    if training:
        ds = tf.data.Dataset.zip((ds, _seed_stream(opts.seed)))

        # The dataset's own padding and flip, or (`recipe="cifar"` for
        # another dataset) CIFAR's.
        own = opts.recipe == spec.recipe
        pad = spec.crop_padding if own else CIFAR_PADDING
        flip = spec.flip if own else True

        def train_transform(example, seed):
            image, label = example
            if opts.recipe in ("cifar", "digits"):
                image = transforms.pad_crop_flip(image, seed, pad=pad, flip=flip)
            elif opts.recipe == "imagenet":
                image = transforms.imagenet_train(image, seed, crop)
            return image, label

        return ds.map(train_transform, num_parallel_calls=AUTOTUNE)
    if spec.recipe == "imagenet":
        return ds.map(
            lambda image, label: (transforms.imagenet_eval(image, crop), label),
            num_parallel_calls=AUTOTUNE,
        )
    return ds


def _augmentation_layers(spec, opts, training):
    """`(per_example, per_batch)` layers of `augment`, none in evaluation."""
    if training and opts.augment:
        return transforms.augmentation_layers(
            opts.augment, spec.max_value, opts.seed
        )
    return (), ()


def _map_layer(ds, layer, opts, apply):
    """`ds` mapped by `apply(images, labels, call)`, `call` running an
    `augment` layer.

    In a deterministic pipeline the layer's draws come from a seed per
    element (`transforms.seeded_call`, from a stream seeded by the layer's
    own seed), so they depend on the seed, the epoch and the position
    only, and a pipeline rebuilt to resume a run augments as the one it
    continues; the calls run one at a time. Otherwise (or for keras-cv
    layers) the layer draws from its own generator, in parallel.
    """
    seeded = transforms.seeded_call(layer) if opts.deterministic else None
    if seeded is None:
        return ds.map(
            lambda images, labels: apply(images, labels, layer),
            num_parallel_calls=_layer_calls(opts),
        )

    def call_with(seed):
        return lambda data: seeded(data, seed)

    ds = tf.data.Dataset.zip((ds, _seed_stream(layer.seed)))
    return ds.map(
        lambda example, seed: apply(*example, call_with(seed)),
        num_parallel_calls=1,
    )


def _image_only(images, labels, call):
    return call(images), labels


def _mixed(images, labels, call):
    return transforms.mix(images, labels, layer=call)


def _layer_calls(opts):
    """Keras layers draw from stateful seed generators: run them in order
    when the pipeline must be repeatable."""
    return 1 if opts.deterministic else AUTOTUNE


# --------------------------------------------------------------------------
# 4. Batch, normalise, mix.


def _batch_normalize_and_mix(ds, spec, opts, batch_size, per_batch):
    ds = ds.batch(
        batch_size,
        drop_remainder=opts.drop_remainder,
        num_parallel_calls=AUTOTUNE,
    )
    mean = tf.constant(opts.mean, tf.float32)
    std = tf.constant(opts.std, tf.float32)
    max_value = float(spec.max_value)
    one_hot = any(a in transforms.MIXING_AUGMENTATIONS for a in opts.augment)
    classes = spec.num_classes

    def normalize(images, labels):
        images = (tf.cast(images, tf.float32) / max_value - mean) / std
        if one_hot:
            labels = tf.one_hot(labels, classes, dtype=tf.float32)
        return images, labels

    # Batched RandAugment (keras-cv) works on raw pixel values, CutMix and
    # MixUp on normalised images and one-hot labels.
    for item, layer in per_batch:
        if item == "keras_cv.randaugment":
            ds = _map_layer(ds, layer, opts, _image_only)
    ds = ds.map(normalize, num_parallel_calls=AUTOTUNE)
    for item, layer in per_batch:
        if item != "keras_cv.randaugment":
            ds = _map_layer(ds, layer, opts, _mixed)
    return ds.prefetch(AUTOTUNE)


def _index_as_input(ds):
    """`(images, (labels, index))` batches as `({"images": images,
    "index": index}, labels)`."""
    # The index rode with the label (`_read`); it becomes an input.
    return ds.map(lambda images, labels: (
        {"images": images, "index": labels[1]}, labels[0]))


def _tf_data_options(opts):
    tf_options = tf.data.Options()
    tf_options.deterministic = opts.deterministic
    tf_options.autotune.enabled = opts.autotune
    return tf_options


# --------------------------------------------------------------------------
# Synthetic data, for dry runs.


def synthetic_dataset(name, *, batch_size, steps, image_size=None,
                      one_hot=False, seed=0, index=False):
    """`steps` batches of random data shaped like `build_dataset`'s.

    Normalised float32 images of the dataset's shape (or `image_size`) and
    int32 labels (one-hot float32 with `one_hot`, as CutMix/MixUp give),
    for checking a configuration end to end without its data
    (`python -m ft_keras.train --dry_run`). With `index`, the images come
    as `{"images": images, "index": indices}`, the indices `0 ..
    batch_size - 1` in every batch, as `build_dataset(index=True)` gives.

    Example:

    >>> images, labels = next(iter(synthetic_dataset("cifar10", batch_size=4,
    ...                                             steps=2)))
    >>> images.shape, labels.dtype.name
    (TensorShape([4, 32, 32, 3]), 'int32')
    """
    shape = list(specs.input_shape(name))
    if image_size is not None:
        size = (image_size, image_size) if is_int(image_size) else image_size
        shape[:2] = size
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, *shape)).astype(np.float32)
    classes = specs.num_classes(name)
    labels = (np.arange(batch_size) % classes).astype(np.int32)
    if one_hot:
        labels = np.eye(classes, dtype=np.float32)[labels]
    inputs = images
    if index:
        inputs = {"images": images, "index": np.arange(batch_size, dtype=np.int32)}
    return tf.data.Dataset.from_tensors((inputs, labels)).repeat(steps)
