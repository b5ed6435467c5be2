"""Input pipelines: TFDS image classification datasets and bundled `digits`.

Everything here ends in one function, `build_dataset`, which returns a batched
`tf.data.Dataset` of `(images, labels)`: float32 NHWC images normalised per
channel, and int32 class labels (one-hot float32 when CutMix or MixUp is
requested). The same call serves `model.fit(ds)` under a
`tf.distribute.MirroredStrategy` and `strategy.experimental_distribute_dataset`:
`batch_size` is always the global batch size.

Datasets:

- `"cifar10"`, `"cifar100"`: the recipe of every Factor Transfer
  implementation (4-pixel zero pad, random 32x32 crop, horizontal flip,
  PyTorch-exact `ToTensor` + `Normalize`).
- `"imagenet2012"`: torchvision's `RandomResizedCrop(224)` + flip for training,
  `Resize(256)` + `CenterCrop(224)` for evaluation. The archives must be
  downloaded by hand (TFDS cannot fetch them).
- `"digits"`: scikit-learn's bundled 8x8 handwritten digits (1797 real images),
  split 1437/360 (stratified, seeded). Needs no network and no TFDS.
- Any other TFDS image classification dataset by name: images scaled to
  [0, 1] and normalised with mean 0.5 / std 0.5 per channel unless `mean` and
  `std` are given; no geometric augmentation (pass `image_size` when the
  images vary in size).

Offline behaviour: a TFDS dataset that is not prepared in `data_dir` is only
downloaded after a quick (~3 s) reachability probe of its download hosts; if
that fails, or `download=False`, or the dataset needs a manual download,
`DatasetNotPreparedError` is raised with a one-line message within seconds
instead of TFDS's several-minute retry loop.
"""

import dataclasses
import difflib
import functools
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from unittest import mock as _mock

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ft_keras import prepare_data

__all__ = [
    "DIGITS_TEST_SIZE",
    "DIGITS_TRAIN_SIZE",
    "DatasetNotPreparedError",
    "build_dataset",
    "input_shape",
    "normalization_stats",
    "num_classes",
    "num_examples",
    "synthetic_dataset",
]

AUTOTUNE = tf.data.AUTOTUNE

DIGITS_TRAIN_SIZE = 1437
DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0

# Seconds allowed for the "can the download hosts be reached?" probe.
_PROBE_TIMEOUT = 3.0
# Decoded datasets up to this size are cached in memory by `cache="auto"`.
_AUTO_CACHE_BYTES = 2 * 1024**3

AUGMENTATIONS = (
    "randaugment",
    "cutmix",
    "mixup",
    "keras_cv.randaugment",
    "keras_cv.cutmix",
    "keras_cv.mixup",
)
_MIXING_AUGMENTATIONS = ("cutmix", "mixup", "keras_cv.cutmix", "keras_cv.mixup")

_OPTIONS = (
    "augment",
    "autotune",
    "cache",
    "deterministic",
    "download",
    "drop_remainder",
    "image_size",
    "mean",
    "repeat",
    "seed",
    "shuffle_buffer",
    "std",
)


class DatasetNotPreparedError(RuntimeError):
    """A TFDS dataset is not in `data_dir` and cannot be downloaded now.

    The message is a single line naming the dataset, the directory that was
    searched and how to prepare it, so that an entry point can print it as
    is.
    """


# --------------------------------------------------------------------------
# Per-dataset facts.


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the pipeline needs to know about one dataset."""

    recipe: str  # "cifar", "imagenet", "digits" or "generic"
    num_classes: int
    input_shape: tuple
    mean: tuple
    std: tuple
    max_value: int  # raw pixel maximum: images are divided by it
    cache: bool  # default of `cache="auto"`
    shuffle_buffer: int  # default `shuffle_buffer` for training
    crop_padding: int = 0  # training: zero pad, random crop back ("cifar")
    flip: bool = False  # training: random horizontal flip ("cifar")
    splits: tuple = ()  # ((split name, number of examples), ...) if known


_CIFAR_SHAPE = (32, 32, 3)
_KNOWN = {
    "cifar10": _Spec(
        recipe="cifar",
        num_classes=10,
        input_shape=_CIFAR_SHAPE,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        max_value=255,
        cache=True,
        shuffle_buffer=50_000,
        crop_padding=4,
        flip=True,
        splits=(("train", 50_000), ("test", 10_000)),
    ),
    "cifar100": _Spec(
        recipe="cifar",
        num_classes=100,
        input_shape=_CIFAR_SHAPE,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        max_value=255,
        cache=True,
        shuffle_buffer=50_000,
        crop_padding=4,
        flip=True,
        splits=(("train", 50_000), ("test", 10_000)),
    ),
    # TFDS's fashion_mnist (Zalando); mean/std of its train split on [0, 1]
    # (0.28604 / 0.35302). Augmented like the published rows of its
    # benchmark: random crop with 4-pixel zero padding, horizontal flip.
    "fashion_mnist": _Spec(
        recipe="cifar",
        num_classes=10,
        input_shape=(28, 28, 1),
        mean=(0.2860,),
        std=(0.3530,),
        max_value=255,
        cache=True,
        shuffle_buffer=60_000,
        crop_padding=4,
        flip=True,
        splits=(("train", 60_000), ("test", 10_000)),
    ),
    "imagenet2012": _Spec(
        recipe="imagenet",
        num_classes=1000,
        input_shape=(224, 224, 3),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        max_value=255,
        cache=False,
        shuffle_buffer=10_000,
        splits=(("train", 1_281_167), ("validation", 50_000)),
    ),
    # mean/std are computed from the train split (see `_digits_stats`).
    "digits": _Spec(
        recipe="digits",
        num_classes=10,
        input_shape=(8, 8, 1),
        mean=(),
        std=(),
        max_value=16,
        cache=True,
        shuffle_buffer=DIGITS_TRAIN_SIZE,
        crop_padding=1,
        splits=(("train", DIGITS_TRAIN_SIZE), ("test", DIGITS_TEST_SIZE)),
    ),
}


def _base_name(name):
    """`"cifar10:3.0.2"` -> `"cifar10"`; configs keep their own name."""
    return name.split(":")[0]


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(
            "`name` must be a non-empty dataset name such as 'cifar10'. "
            f"Received: name={name!r}"
        )


def _tfds_builder(name, data_dir=None):
    """`tfds.builder`, with a clear `ValueError` for unknown names."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        pass
    choices = tfds.list_builders(with_community_datasets=False) + ["digits"]
    close = difflib.get_close_matches(_base_name(name), choices, n=3)
    hint = (
        f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    )
    raise ValueError(
        f"Unknown dataset: name={name!r}. It is neither 'digits' nor a "
        "TFDS builder; list the valid TFDS names with "
        "`tensorflow_datasets.list_builders()`." + hint
    )


def _supervised_features(builder, name):
    """Returns the (image, label) features of a TFDS classification dataset."""
    keys = builder.info.supervised_keys
    features = builder.info.features
    if (
        not isinstance(keys, tuple)
        or len(keys) != 2
        or not all(isinstance(k, str) for k in keys)
        or not isinstance(features[keys[0]], tfds.features.Image)
        or not isinstance(features[keys[1]], tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"Dataset {name!r} is not an image classification dataset: its "
            "supervised keys must name an Image and a ClassLabel feature. "
            f"Received: supervised_keys={keys!r}"
        )
    return features[keys[0]], features[keys[1]]


@functools.lru_cache(maxsize=None)
def _spec(name):
    _check_name(name)
    base = _base_name(name)
    if base in _KNOWN:
        return _KNOWN[base]
    image, label = _supervised_features(_tfds_builder(name), name)
    channels = image.shape[-1] or 3
    return _Spec(
        recipe="generic",
        num_classes=label.num_classes,
        input_shape=tuple(image.shape),
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        max_value=255,
        cache=False,  # decided from the prepared dataset's size
        shuffle_buffer=10_000,
    )


def num_classes(name):
    """Number of classes of a dataset, without loading any data.

    Args:
        name: `"digits"` or a TFDS dataset name (`"cifar10"`, ...).

    Returns:
        An int: 10 for CIFAR-10 and digits, 100 for CIFAR-100, 1000 for
        ImageNet, the `ClassLabel` size of other TFDS datasets.

    Example:

    >>> num_classes("cifar100")
    100
    """
    return _spec(name).num_classes


def input_shape(name):
    """Shape `(height, width, channels)` of the images `build_dataset` yields.

    Works without loading data. For generic TFDS datasets whose images vary
    in size the unknown dimensions are `None` (pass `image_size` to
    `build_dataset` to fix them).

    Args:
        name: `"digits"` or a TFDS dataset name.

    Returns:
        A tuple: `(32, 32, 3)` for CIFAR, `(224, 224, 3)` for ImageNet,
        `(8, 8, 1)` for digits.

    Example:

    >>> input_shape("digits")
    (8, 8, 1)
    """
    return tuple(_spec(name).input_shape)


def num_examples(name, split, data_dir=None):
    """Number of examples in a split, without reading any data.

    Known for the datasets ft_keras names (CIFAR, Fashion-MNIST, ImageNet,
    digits) whether or not they are prepared; for other TFDS datasets, read
    from the prepared dataset's metadata in `data_dir`.

    Returns:
        An int, or None when it cannot be known without the data.

    Example:

    >>> num_examples("cifar10", "train")
    50000
    """
    known = dict(_spec(name).splits)
    if split in known:
        return known[split]
    if _spec(name).recipe == "digits":
        return None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            return None
        return int(builder.info.splits[split].num_examples)
    except Exception:  # noqa: BLE001 - unknown split, unreadable metadata
        return None


def normalization_stats(name):
    """Default per-channel `(mean, std)` of a dataset, on the [0, 1] scale.

    These are the values `build_dataset` uses unless `mean`/`std` are given.
    For `digits` they are computed from its train split.

    Example:

    >>> mean, std = normalization_stats("cifar10")
    >>> mean
    (0.4914, 0.4822, 0.4465)
    """
    spec = _spec(name)
    if spec.recipe == "digits":
        return _digits_stats()
    return spec.mean, spec.std


def pixel_normalization(name):
    """`(pixel_max, mean, std)`: how raw pixels become model inputs,
    `(x / pixel_max - mean) / std`, with the default `mean`/`std`.

    `pixel_max` is 255 for uint8 image datasets and 16 for digits. Exports
    use it to put the preprocessing inside the serving graph.

    Example:

    >>> pixel_normalization("cifar10")[0]
    255
    """
    mean, std = normalization_stats(name)
    return _spec(name).max_value, mean, std


# --------------------------------------------------------------------------
# digits: scikit-learn's bundled handwritten digits.


@functools.lru_cache(maxsize=None)
def _digits_splits():
    """Returns `{"train": (x, y), "test": (x, y)}`; x uint8 in [0, 16]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=_DIGITS_SPLIT_SEED,
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


@functools.lru_cache(maxsize=None)
def _digits_stats():
    x_train = _digits_splits()["train"][0].astype(np.float64) / 16.0
    return (float(x_train.mean()),), (float(x_train.std()),)


def _digits_dataset(split):
    if split not in ("train", "test"):
        raise ValueError(
            "`split` for 'digits' must be 'train' or 'test'. "
            f"Received: split={split!r}"
        )
    x, y = _digits_splits()[split]
    return tf.data.Dataset.from_tensor_slices((x, y)), len(y)


# --------------------------------------------------------------------------
# TFDS: preparation with a fast offline failure.


def _download_is_stubbed(builder):
    """True under `tfds.testing.mock_data`, where nothing is downloaded."""
    fn = getattr(type(builder), "download_and_prepare", None)
    if isinstance(fn, _mock.Base):
        return True
    return getattr(fn, "__module__", "").startswith(
        "tensorflow_datasets.testing"
    )


def _probe_address(url):
    """`(host, port)` that a download of `url` connects to first."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(
            proxy if "://" in proxy else "http://" + proxy
        )
        return proxy_parts.hostname, proxy_parts.port or 80
    return host, port


def _unreachable(addresses, timeout=_PROBE_TIMEOUT):
    """Returns `{(host, port): reason}` for the addresses not connected to.

    All probes run at once in daemon threads, so that even a hanging DNS
    lookup cannot block for longer than `timeout` in total.
    """
    reasons = {a: f"no answer within {timeout:g}s" for a in addresses}

    def connect(address):
        try:
            socket.create_connection(address, timeout=timeout).close()
            reasons.pop(address, None)
        except OSError as error:
            reasons[address] = (
                " ".join(str(error).split()) or type(error).__name__
            )

    threads = [
        threading.Thread(target=connect, args=(a,), daemon=True)
        for a in addresses
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(reasons)


def _prepare_hint(name, root):
    base = _base_name(name)
    if base in prepare_data.DATASETS:
        return prepare_data.fix_hint(base, root)
    return (
        "prepare it once on a machine with internet (e.g. python -c "
        f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{root}').download_and_prepare()\"), then copy its "
        f"{base.split('/')[0]}/ folder into {root}"
    )


def _ensure_prepared(builder, name, download):
    """Returns a builder of `name` that can be read: `builder` if prepared,
    else one prepared from local files (`ft_keras.prepare_data`) or
    downloaded. Raises `DatasetNotPreparedError` when neither can be done."""
    if builder.is_prepared():
        return builder
    if _download_is_stubbed(builder):
        builder.download_and_prepare()
        return builder
    root = str(builder.data_dir_root)
    where = f"Dataset {name!r} is not prepared in data_dir={root!r}"
    base = _base_name(name)
    if base in prepare_data.DATASETS:
        source, tried = prepare_data.find_source(base, root)
        if source is not None:
            print(
                f"[ft_keras] {where}; preparing it from the files in "
                f"{source} (once).",
                flush=True,
            )
            try:
                prepare_data.prepare(base, source, root)
            except prepare_data.SourceError as error:
                raise DatasetNotPreparedError(
                    f"{where} and its local files cannot be used: {error}"
                ) from None
            return _tfds_builder(name, root)
        where += f" and no files of it were found in {', '.join(tried)}"
    if not download:
        raise DatasetNotPreparedError(
            f"{where} and download=False; {_prepare_hint(name, root)}."
        )
    manual_dir = os.path.join(root, "downloads", "manual")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
            files = ""
            if _base_name(name) == "imagenet2012":
                files = "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            raise DatasetNotPreparedError(
                f"{where} and it needs a manual download: put the archives "
                f"{files}in {manual_dir!r} (see "
                "https://www.tensorflow.org/datasets/catalog/"
                f"{_base_name(name)}"
                "), then run again."
            )
    else:
        urls = sorted(builder.url_infos or {}) or [
            "https://storage.googleapis.com"
        ]
        addresses = list(dict.fromkeys(_probe_address(u) for u in urls))[:4]
        failed = _unreachable(addresses)
        if failed:
            hosts = ", ".join(
                f"{h}:{p}: {why}" for (h, p), why in failed.items()
            )
            raise DatasetNotPreparedError(
                f"{where}; it cannot be downloaded (host not reachable: "
                f"{hosts}); {_prepare_hint(name, root)}."
            )
    try:
        builder.download_and_prepare()
    except (OSError, tfds.download.DownloadError) as error:
        reason = " ".join(str(error).split())[:300]
        raise DatasetNotPreparedError(
            f"{where} and downloading it failed ({type(error).__name__}: "
            f"{reason}); {_prepare_hint(name, root)}."
        ) from error


def _tfds_dataset(name, split, data_dir, download, training, opts, decode):
    """Reads `(image, label)` examples of a prepared TFDS dataset."""
    builder = _tfds_builder(name, data_dir)
    _supervised_features(builder, name)
    builder = _ensure_prepared(builder, name, download)
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
        shuffle_files=training and not opts.deterministic,
        decoders=decoders,
        read_config=read_config,
    )
    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        size = None
    return ds, size


# --------------------------------------------------------------------------
# Per-example transforms. Images stay uint8 until they are normalised.


def _pad_crop_flip(image, seed, pad, flip):
    """torchvision `RandomCrop(size, padding=pad)`, then optionally
    `RandomHorizontalFlip()`."""
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


def _resize(image, size):
    """Bilinear, antialiased (like PIL / torchvision), back to uint8."""
    return _to_uint8(tf.image.resize(image, size, antialias=True))


def _imagenet_train(encoded, seed, size):
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
    image = _resize(image, [size, size])
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _imagenet_eval(encoded, size):
    """torchvision `Resize(size * 256 / 224)` + `CenterCrop(size)`."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    resize_to = int(round(size * 256 / 224))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    long_side = tf.maximum(height, width)
    new_long = (resize_to * long_side) // short
    new_h = tf.where(height <= width, resize_to, new_long)
    new_w = tf.where(height <= width, new_long, resize_to)
    image = _resize(image, tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


# --------------------------------------------------------------------------
# Options.


@dataclasses.dataclass
class _Options:
    mean: tuple
    std: tuple
    shuffle_buffer: int
    seed: object
    deterministic: bool
    cache: bool
    augment: tuple
    drop_remainder: bool
    repeat: bool
    download: bool
    image_size: object
    autotune: bool


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _per_channel(key, value, channels):
    received = value
    if isinstance(value, (int, float, np.number)) and not isinstance(
        value, bool
    ):
        value = (float(value),) * channels
    try:
        value = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        value = None
    if value is None or len(value) != channels:
        raise ValueError(
            f"`{key}` must be a number or a sequence of {channels} numbers "
            f"(one per channel). Received: {key}={received!r}"
        )
    return value


def _parse_options(name, spec, training, options):
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        close = [
            m
            for key in unknown
            for m in difflib.get_close_matches(key, _OPTIONS, n=1)
        ]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TypeError(
            f"Unrecognized option(s) for build_dataset: {unknown}. Valid "
            f"options are {list(_OPTIONS)}.{hint}"
        )
    for key in ("deterministic", "download", "drop_remainder", "repeat"):
        value = options.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(
                f"`{key}` must be True or False. Received: {key}={value!r}"
            )

    seed = options.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError(
            f"`seed` must be an int or None. Received: seed={seed!r}"
        )
    deterministic = options.get("deterministic")
    if deterministic is None:
        deterministic = not training
    if deterministic and seed is None and training:
        seed = 0

    shuffle_buffer = options.get("shuffle_buffer")
    if shuffle_buffer is None:
        shuffle_buffer = spec.shuffle_buffer
    if not _is_int(shuffle_buffer) or shuffle_buffer < 0:
        raise ValueError(
            "`shuffle_buffer` must be an int >= 0 (0 disables shuffling). "
            f"Received: shuffle_buffer={shuffle_buffer!r}"
        )

    cache = options.get("cache")
    cache = "auto" if cache is None else cache
    if not (isinstance(cache, bool) or cache == "auto"):
        raise ValueError(
            "`cache` must be True, False or 'auto'. "
            f"Received: cache={cache!r}"
        )

    augment = options.get("augment") or ()
    if isinstance(augment, str):
        augment = (augment,)
    if not isinstance(augment, (list, tuple)):
        raise ValueError(
            "`augment` must be a list or tuple of names among "
            f"{list(AUGMENTATIONS)}. Received: augment={augment!r}"
        )
    augment = tuple(a.lower() if isinstance(a, str) else a for a in augment)
    for item in augment:
        if item not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {item!r}. `augment` entries must be "
                f"among {list(AUGMENTATIONS)}. Received: augment={augment!r}"
            )
    if len(set(augment)) != len(augment):
        raise ValueError(
            "`augment` lists an augmentation twice. "
            f"Received: augment={augment!r}"
        )

    image_size = options.get("image_size")
    if image_size is not None:
        if _is_int(image_size):
            image_size = (int(image_size), int(image_size))
        if (
            not isinstance(image_size, (list, tuple))
            or len(image_size) != 2
            or not all(_is_int(s) and s > 0 for s in image_size)
        ):
            raise ValueError(
                "`image_size` must be a positive int or a (height, width) "
                f"pair. Received: image_size={image_size!r}"
            )
        image_size = tuple(int(s) for s in image_size)
        if spec.recipe == "imagenet" and image_size[0] != image_size[1]:
            raise ValueError(
                "`image_size` for ImageNet is the side of the square crop. "
                f"Received: image_size={image_size!r}"
            )
        if (
            spec.recipe in ("cifar", "digits")
            and image_size != spec.input_shape[:2]
        ):
            raise ValueError(
                f"`image_size` cannot be changed for {name!r}: its images are "
                f"{spec.input_shape[:2]}. Received: image_size={image_size!r}"
            )

    channels = spec.input_shape[-1]
    default_mean, default_std = normalization_stats(name)
    mean = options.get("mean")
    std = options.get("std")
    mean = _per_channel(
        "mean", default_mean if mean is None else mean, channels
    )
    std = _per_channel("std", default_std if std is None else std, channels)
    if any(s <= 0 for s in std):
        raise ValueError(f"`std` values must be > 0. Received: std={std!r}")

    drop_remainder = options.get("drop_remainder")
    autotune = options.get("autotune")
    if autotune is not None and not isinstance(autotune, bool):
        raise ValueError(
            f"`autotune` must be True or False. Received: autotune={autotune!r}"
        )
    return _Options(
        mean=mean,
        std=std,
        shuffle_buffer=int(shuffle_buffer),
        seed=None if seed is None else int(seed),
        deterministic=deterministic,
        cache=cache,
        augment=augment,
        drop_remainder=training if drop_remainder is None else drop_remainder,
        repeat=options.get("repeat") is True,
        download=options.get("download") is not False,
        image_size=image_size,
        autotune=autotune,
    )


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


def _augment_layers(augment, max_value, seed):
    """Returns `(per_example, per_batch)` lists of `(name, layer)`."""
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


# --------------------------------------------------------------------------
# The pipeline.


def build_dataset(
    name, split, *, batch_size, training, data_dir=None, **options
):
    """Builds a batched `tf.data.Dataset` of `(images, labels)`.

    Images are float32 NHWC, normalised exactly like PyTorch's `ToTensor()`
    followed by `Normalize(mean, std)`: `(x / max_value - mean) / std` with
    `max_value` 255 (16 for digits). Labels are int32 class indices, except
    when `augment` contains `"cutmix"` or `"mixup"`: the labels are then
    one-hot float32 of shape `(batch, num_classes)` (soft after mixing), in
    the training *and* the evaluation dataset so one loss
    (`keras.losses.CategoricalCrossentropy`) fits both.

    Training pipelines (`training=True`):

    - CIFAR-10/100: 4-pixel zero pad, random 32x32 crop, random horizontal
      flip.
    - ImageNet: torchvision `RandomResizedCrop(224, scale=(0.08, 1),
      ratio=(3/4, 4/3))` (decoding only the crop) and horizontal flip.
    - digits: 1-pixel zero pad and random 8x8 crop (no flip: digits are not
      mirror-invariant).
    - other TFDS datasets: no geometric augmentation.
    Evaluation pipelines normalise only (ImageNet: resize the shorter side to
    256, center crop 224). Random ops are stateless, seeded per example from
    `seed`, so `deterministic=True, seed=s` yields the same batches every
    time a dataset is built; each new iteration (epoch) draws new
    augmentations and a new shuffle order.

    Decoded uint8 data are cached in memory before augmentation where they
    fit (CIFAR, digits; not ImageNet), then shuffled, augmented in parallel,
    batched and prefetched.

    Args:
        name: `"digits"` or a TFDS name: `"cifar10"`, `"cifar100"`,
            `"imagenet2012"` or any TFDS image classification dataset.
        split: `"train"`/`"test"` for digits; any TFDS split string
            (`"train"`, `"test"`, `"validation"`, `"train[:90%]"`, ...).
        batch_size: The global batch size (split across replicas by a
            `tf.distribute` strategy).
        training: Whether to shuffle and augment.
        data_dir: TFDS data directory. Defaults to TFDS's own default
            (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`). Ignored by digits.
        **options: Any of (`None` means the default)
            - `mean`, `std`: per-channel normalisation on the [0, 1] scale (a
              number or one value per channel). Defaults: see
              `normalization_stats` (0.5 / 0.5 for generic datasets).
            - `shuffle_buffer`: int, 0 disables shuffling. Defaults to the
              whole train split for CIFAR and digits, 10000 otherwise.
              Only used when training.
            - `seed`: int seed of shuffling and augmentation.
            - `deterministic`: bool, sets `tf.data.Options.deterministic` and
              makes the seeded pipeline repeatable (seed 0 if `seed` is not
              given). Defaults to False for training, True for evaluation.
            - `cache`: True, False or "auto" (default: in memory when the
              decoded dataset is below 2 GiB: CIFAR and digits yes, ImageNet
              no).
            - `augment`: list of extra training augmentations among
              `"randaugment"`, `"cutmix"`, `"mixup"` (Keras core layers
              `keras.layers.RandAugment` per image, `keras.layers.CutMix` /
              `keras.layers.MixUp` per batch), or `"keras_cv.randaugment"`,
              `"keras_cv.cutmix"`, `"keras_cv.mixup"` when keras-cv is
              installed. RandAugment runs on raw pixels (before
              normalisation), CutMix/MixUp on normalised batches in the
              given order; CutMix/MixUp make labels one-hot (see above).
              Ignored when `training=False` (apart from the one-hot labels).
            - `drop_remainder`: bool, defaults to `training`.
            - `repeat`: bool, repeat forever (default False).
            - `download`: bool, allow a TFDS download when the dataset is
              not prepared (default True).
            - `image_size`: ImageNet crop side (default 224; evaluation
              resizes to `round(side * 256 / 224)` first) or the
              `(height, width)` generic datasets are resized to.
            - `autotune`: bool, sets `tf.data.Options.autotune.enabled`
              (default False). With TensorFlow 2.21, deleting an iterator
              of an autotuned pipeline sometimes blocks until the
              autotuner's next wake-up, whose period doubles from 10 ms: an
              epoch's iterator can then cost up to its own lifetime again
              (an epoch of 3 s stalled 2.1 s when it ended; see
              `benchmarks/iterator_stall.py`). Off, each `AUTOTUNE`
              parallelism stays at its initial value, the number of cores
              (at most 16).

    Returns:
        A `tf.data.Dataset` yielding `(images, labels)` batches.

    Raises:
        DatasetNotPreparedError: a TFDS dataset is not in `data_dir` and
            cannot be downloaded now (offline, `download=False` or a manual
            download is needed). The message is one line.
        ValueError: unknown dataset name or invalid option value.
        TypeError: unknown option.

    Example:

    >>> ds = build_dataset("digits", "train", batch_size=32, training=True,
    ...                    seed=1, deterministic=True)
    >>> images, labels = next(iter(ds))
    >>> images.shape, images.dtype.name, labels.dtype.name
    (TensorShape([32, 8, 8, 1]), 'float32', 'int32')
    """
    _check_name(name)
    if not isinstance(split, str) or not split:
        raise ValueError(
            f"`split` must be a non-empty split name such as 'train'. "
            f"Received: split={split!r}"
        )
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive int (the global batch size). "
            f"Received: batch_size={batch_size!r}"
        )
    if not isinstance(training, bool):
        raise ValueError(
            f"`training` must be True or False. Received: training={training!r}"
        )
    spec = _spec(name)
    opts = _parse_options(name, spec, training, options)

    # 1. Read decoded uint8 examples (encoded JPEG bytes for ImageNet).
    if spec.recipe == "digits":
        ds, size = _digits_dataset(split)
    else:
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
            opts.download,
            training,
            opts,
            decode=spec.recipe != "imagenet",
        )
    ds = ds.map(
        lambda image, label: (image, tf.cast(label, tf.int32)),
        num_parallel_calls=AUTOTUNE,
    )
    if spec.recipe == "generic" and opts.image_size is not None:
        ds = ds.map(
            lambda image, label: (_resize(image, opts.image_size), label),
            num_parallel_calls=AUTOTUNE,
        )

    # 2. Cache before any randomness.
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
    if cache:
        ds = ds.cache()

    # 3. Shuffle, repeat.
    if training and opts.shuffle_buffer > 0:
        ds = ds.shuffle(
            opts.shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True
        )
    if opts.repeat:
        ds = ds.repeat()

    # 4. Per-example transforms, seeded per example.
    crop = opts.image_size[0] if opts.image_size else 224
    if training:
        seeds = tf.data.Dataset.random(
            seed=opts.seed, rerandomize_each_iteration=True
        ).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds))
        recipe = spec.recipe

        def train_transform(example, seed):
            image, label = example
            if recipe in ("cifar", "digits"):
                image = _pad_crop_flip(
                    image, seed, pad=spec.crop_padding, flip=spec.flip
                )
            elif recipe == "imagenet":
                image = _imagenet_train(image, seed, crop)
            return image, label

        ds = ds.map(train_transform, num_parallel_calls=AUTOTUNE)
    elif spec.recipe == "imagenet":
        ds = ds.map(
            lambda image, label: (_imagenet_eval(image, crop), label),
            num_parallel_calls=AUTOTUNE,
        )

    per_example, per_batch = (), ()
    if training and opts.augment:
        per_example, per_batch = _augment_layers(
            opts.augment, spec.max_value, opts.seed
        )
    # Keras layers draw from stateful seed generators: run them in order when
    # the pipeline must be repeatable.
    layer_calls = 1 if opts.deterministic else AUTOTUNE
    for _, layer in per_example:
        ds = ds.map(
            lambda image, label, layer=layer: (layer(image), label),
            num_parallel_calls=layer_calls,
        )

    # 5. Batch, normalise, mix.
    ds = ds.batch(
        batch_size,
        drop_remainder=opts.drop_remainder,
        num_parallel_calls=AUTOTUNE,
    )
    mean = tf.constant(opts.mean, tf.float32)
    std = tf.constant(opts.std, tf.float32)
    max_value = float(spec.max_value)
    one_hot = any(a in _MIXING_AUGMENTATIONS for a in opts.augment)
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
            ds = ds.map(
                lambda images, labels, layer=layer: (layer(images), labels),
                num_parallel_calls=layer_calls,
            )
    ds = ds.map(normalize, num_parallel_calls=AUTOTUNE)
    for item, layer in per_batch:
        if item != "keras_cv.randaugment":
            ds = ds.map(
                functools.partial(_mix, layer=layer),
                num_parallel_calls=layer_calls,
            )
    ds = ds.prefetch(AUTOTUNE)

    tf_options = tf.data.Options()
    tf_options.deterministic = opts.deterministic
    tf_options.autotune.enabled = bool(opts.autotune)
    return ds.with_options(tf_options)


def synthetic_dataset(name, *, batch_size, steps, image_size=None,
                      one_hot=False, seed=0):
    """`steps` batches of random data shaped like `build_dataset`'s.

    Normalised float32 images of the dataset's shape (or `image_size`) and
    int32 labels (one-hot float32 with `one_hot`, as CutMix/MixUp give),
    for checking a configuration end to end without its data
    (`python -m ft_keras.train --dry_run`).

    Example:

    >>> images, labels = next(iter(synthetic_dataset("cifar10", batch_size=4,
    ...                                             steps=2)))
    >>> images.shape, labels.dtype.name
    (TensorShape([4, 32, 32, 3]), 'int32')
    """
    shape = list(input_shape(name))
    if image_size is not None:
        size = (image_size, image_size) if _is_int(image_size) else image_size
        shape[:2] = size
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, *shape)).astype(np.float32)
    classes = num_classes(name)
    labels = (np.arange(batch_size) % classes).astype(np.int32)
    if one_hot:
        labels = np.eye(classes, dtype=np.float32)[labels]
    return tf.data.Dataset.from_tensors((images, labels)).repeat(steps)


def _mix(images, labels, layer):
    """Applies a CutMix/MixUp layer to a batch with one-hot labels."""
    out = layer({"images": images, "labels": labels})
    return out["images"], out["labels"]
