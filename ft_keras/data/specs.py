"""Per-dataset facts: classes, image shape, split sizes, normalisation.

Everything here is known without reading any example: from the `_KNOWN`
table for the datasets ft_keras names (CIFAR-10/100, Fashion-MNIST,
ImageNet, digits), from TFDS's builder metadata for any other TFDS image
classification dataset. The digits split (scikit-learn's 1797 images,
1437/360 stratified and seeded) lives here too, since its statistics are
facts of the dataset. An image folder (`"image_folder:<root>"`) is read
through once by `image_folder.describe`, which keeps what it learned.
"""

import dataclasses
import difflib
import functools

import numpy as np
import tensorflow_datasets as tfds

from ft_keras.data import image_folder

__all__ = [
    "DIGITS_TEST_SIZE",
    "DIGITS_TRAIN_SIZE",
    "RECIPES",
    "Spec",
    "base_name",
    "check_name",
    "digits_splits",
    "get",
    "input_shape",
    "normalization_stats",
    "num_classes",
    "num_examples",
    "pixel_normalization",
    "supervised_features",
    "tfds_builder",
]

# How each dataset is augmented for training (see `build_dataset`).
RECIPES = ("generic", "cifar", "imagenet", "digits")

DIGITS_TRAIN_SIZE = 1437
DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the pipeline needs to know about one dataset."""

    recipe: str  # one of RECIPES
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


# The recipe of every Factor Transfer implementation on CIFAR.
_CIFAR10 = Spec(
    recipe="cifar",
    num_classes=10,
    input_shape=(32, 32, 3),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    max_value=255,
    cache=True,
    shuffle_buffer=50_000,
    crop_padding=4,
    flip=True,
    splits=(("train", 50_000), ("test", 10_000)),
)
_KNOWN = {
    "cifar10": _CIFAR10,
    "cifar100": dataclasses.replace(
        _CIFAR10,
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    # TFDS's fashion_mnist (Zalando); mean/std of its train split on [0, 1]
    # (0.28604 / 0.35302). Augmented like the published rows of its
    # benchmark: random crop with 4-pixel zero padding, horizontal flip.
    "fashion_mnist": Spec(
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
    "imagenet2012": Spec(
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
    "digits": Spec(
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


def base_name(name):
    """`"cifar10:3.0.2"` -> `"cifar10"`; configs keep their own name."""
    return name.split(":")[0]


def check_name(name):
    """Raises a `ValueError` unless `name` is a non-empty string."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            "`name` must be a non-empty dataset name such as 'cifar10'. "
            f"Received: name={name!r}"
        )


def tfds_builder(name, data_dir=None):
    """`tfds.builder`, with a clear `ValueError` for unknown names; TFDS's
    `ImageFolder` builder for an image folder (`data_dir` unused)."""
    if image_folder.is_image_folder(name):
        return image_folder.builder(name)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        pass
    choices = tfds.list_builders(with_community_datasets=False) + ["digits"]
    close = difflib.get_close_matches(base_name(name), choices, n=3)
    hint = (
        f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    )
    raise ValueError(
        f"Unknown dataset: name={name!r}. It is neither 'digits', an image "
        "folder ('image_folder:/path/to/root') nor a TFDS builder; list the "
        "valid TFDS names with `tensorflow_datasets.list_builders()`." + hint
    )


def supervised_features(builder, name):
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


def get(name):
    """The `Spec` of dataset `name`, from `_KNOWN`, TFDS's metadata or the
    image folder (`image_folder.describe`, which notices a changed folder).

    Example:

    >>> get("cifar10").recipe, get("cifar10").max_value
    ('cifar', 255)
    """
    check_name(name)
    if image_folder.is_image_folder(name):
        return _folder_spec(image_folder.describe(name))
    return _tfds_spec(name)


@functools.lru_cache(maxsize=None)
def _folder_spec(info):
    """An image folder: no geometric augmentation unless a `recipe` option
    asks for one, the training pixels' mean and std."""
    return Spec(
        recipe="generic",
        num_classes=len(info.classes),
        input_shape=info.image_shape,
        mean=info.mean,
        std=info.std,
        max_value=255,
        cache=False,  # decided from the split's size
        shuffle_buffer=min(dict(info.splits)["train"], 10_000),
        splits=info.splits,
    )


@functools.lru_cache(maxsize=None)
def _tfds_spec(name):
    base = base_name(name)
    if base in _KNOWN:
        return _KNOWN[base]
    image, label = supervised_features(tfds_builder(name), name)
    channels = image.shape[-1] or 3
    return Spec(
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
        name: `"digits"`, a TFDS dataset name (`"cifar10"`, ...) or an
            image folder (`"image_folder:<root>"`).

    Returns:
        An int: 10 for CIFAR-10 and digits, 100 for CIFAR-100, 1000 for
        ImageNet, the `ClassLabel` size of other TFDS datasets, the number
        of class folders of an image folder.

    Example:

    >>> num_classes("cifar100")
    100
    """
    return get(name).num_classes


def input_shape(name, image_size=None):
    """Shape `(height, width, channels)` of the images `build_dataset` yields.

    Works without loading data. For generic TFDS datasets whose images vary
    in size the unknown dimensions are `None` (pass `image_size` to
    `build_dataset` to fix them). An image folder's is its first training
    image's size (`image_folder.describe`).

    Args:
        name: `"digits"`, a TFDS dataset name or an image folder.
        image_size: The `image_size` option given to `build_dataset`, if
            any (an int or `(height, width)`): the size it yields then.

    Returns:
        A tuple: `(32, 32, 3)` for CIFAR, `(224, 224, 3)` for ImageNet,
        `(8, 8, 1)` for digits.

    Example:

    >>> input_shape("digits")
    (8, 8, 1)
    >>> input_shape("imagenet2012", image_size=160)
    (160, 160, 3)
    """
    shape = tuple(get(name).input_shape)
    if image_size is None:
        return shape
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    return tuple(int(s) for s in image_size) + shape[-1:]


def num_examples(name, split, data_dir=None):
    """Number of examples in a split, without reading any data.

    Known for the datasets ft_keras names (CIFAR, Fashion-MNIST, ImageNet,
    digits) whether or not they are prepared, and for image folders; for
    other TFDS datasets, read from the prepared dataset's metadata in
    `data_dir`.

    Returns:
        An int, or None when it cannot be known without the data.

    Example:

    >>> num_examples("cifar10", "train")
    50000
    """
    known = dict(get(name).splits)
    if split in known:
        return known[split]
    if get(name).recipe == "digits" or image_folder.is_image_folder(name):
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
    For `digits` and image folders they are computed from the train split.

    Example:

    >>> mean, std = normalization_stats("cifar10")
    >>> mean
    (0.4914, 0.4822, 0.4465)
    """
    spec = get(name)
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
    return get(name).max_value, mean, std


# --------------------------------------------------------------------------
# digits: scikit-learn's bundled handwritten digits.


@functools.lru_cache(maxsize=None)
def digits_splits():
    """Returns `{"train": (x, y), "test": (x, y)}`; x uint8 in [0, 16].

    Example:

    >>> x, y = digits_splits()["test"]
    >>> x.shape, x.dtype.name, y.dtype.name
    ((360, 8, 8, 1), 'uint8', 'int32')
    """
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
    x_train = digits_splits()["train"][0].astype(np.float64) / 16.0
    return (float(x_train.mean()),), (float(x_train.std()),)
