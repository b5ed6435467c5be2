"""Your own images: a folder of class subfolders as a dataset.

    <root>/train/<class>/*.jpg, *.jpeg, *.png
    <root>/test/<class>/...           (or val/, or any other split name)

is the layout `keras.utils.image_dataset_from_directory` and TFDS's
`tfds.folder_dataset.ImageFolder` read. Named `"image_folder:<root>"` it is
a dataset wherever ft_keras takes a dataset name (`build_dataset`,
`num_classes`, `input_shape`, `normalization_stats`, ...); in gin,
`dataset.name = 'image_folder'` with `dataset.path = '<root>'`. TFDS's
`ImageFolder` builder reads the files, so the images go through the same
`build_dataset` steps as every TFDS dataset.

What `describe` learns from the folder, and checks:

- the classes: the subfolders of `train/`, sorted (TFDS's label order);
  every other split folder must hold the same ones, each with images;
- the image shape: the first training image's (first class, first file
  name) height and width, with 1 channel if it is grey (or grey + alpha),
  else 3. Every image is decoded to those channels and resized to that
  size (or to `build_dataset`'s `image_size`);
- the per-channel mean and std of all training pixels on the [0, 1] scale
  (each image at its own size), the default normalisation;
- that every file of every split decodes.

A bad folder raises an `ImageFolderError` whose one-line message names the
path and the fix. Reading every image once takes time, so the result is
kept in memory (keyed by the folder's directory modification times) and in
`<root>/.ft_keras_image_folder.json` (keyed by the name, size and
modification time of every image): a folder is decoded once, not once per
process or cluster worker, until a file changes. The JSON file sits beside
the data so that whoever uses the data finds it, and outside every split
folder so no reader sees it; when `<root>` is read-only only the memory
copy is kept. Listing, checking and decoding the files is
`ft_keras.data.image_folder_files`'s work.
"""

import dataclasses
import json
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from ft_keras.data.image_folder_files import EXTENSIONS
from ft_keras.data.image_folder_files import LAYOUT as _LAYOUT
from ft_keras.data.image_folder_files import ImageFolderError
from ft_keras.data.image_folder_files import channels_of
from ft_keras.data.image_folder_files import directory_stamp
from ft_keras.data.image_folder_files import folder_fingerprint
from ft_keras.data.image_folder_files import list_files
from ft_keras.data.image_folder_files import pixel_sums
from ft_keras.data.image_folder_files import split_folders

__all__ = [
    "EXTENSIONS",
    "NAME",
    "FolderInfo",
    "ImageFolderError",
    "builder",
    "check_split",
    "dataset_name",
    "describe",
    "is_image_folder",
    "root_of",
]

NAME = "image_folder"
CACHE_FILE = ".ft_keras_image_folder.json"
_CACHE_VERSION = 1
# `describe`'s results by root: (directory modification times, FolderInfo).
_MEMORY = {}


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """What `describe` learned from an image folder.

    Attributes:
        root: The folder, an absolute path.
        classes: The class folder names, sorted: label `i` is `classes[i]`.
        splits: `((split name, number of images), ...)`, train first.
        image_shape: `(height, width, channels)` of the images
            `build_dataset` yields without `image_size`.
        mean, std: Per-channel statistics of the training pixels on the
            [0, 1] scale.
    """

    root: str
    classes: tuple
    splits: tuple
    image_shape: tuple
    mean: tuple
    std: tuple


def dataset_name(path):
    """The dataset name of the image folder at `path`.

    Example:

    >>> dataset_name("/data/flowers/")
    'image_folder:/data/flowers'
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ImageFolderError(
            "The path of an image folder must be a non-empty string, the "
            f"folder holding {_LAYOUT}. Received: path={path!r}"
        )
    return f"{NAME}:{os.path.abspath(os.path.expanduser(str(path)))}"


def is_image_folder(name):
    """Whether dataset `name` is an image folder (`"image_folder..."`).

    Example:

    >>> is_image_folder("image_folder:/data/flowers"), is_image_folder("cifar10")
    (True, False)
    """
    return isinstance(name, str) and name.split(":", 1)[0] == NAME


def root_of(name):
    """The folder of dataset `name` (`"image_folder:<root>"`).

    Example:

    >>> root_of("image_folder:/data/flowers")
    '/data/flowers'
    """
    root = name.split(":", 1)[1] if ":" in name else ""
    if not root:
        raise ImageFolderError(
            f"Dataset {name!r} names no folder: use "
            "name='image_folder:/path/to/root' (in gin: dataset.name = "
            "'image_folder' and dataset.path = '/path/to/root'), the folder "
            f"holding {_LAYOUT}."
        )
    return os.path.abspath(os.path.expanduser(root))


def describe(name):
    """Reads, checks and summarises the image folder of dataset `name`.

    Decodes every image the first time (see the module docstring for what
    is kept, and where), then answers from the caches while the folder is
    unchanged.

    Returns:
        A `FolderInfo`.

    Raises:
        ImageFolderError: the folder is missing, has no `train/` or no
            other split folder, no class folders, different classes in two
            splits, a class folder without images, or a file that cannot
            be read or decoded. The message is one line.

    Example:

    >>> import os, shutil, tempfile
    >>> import numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for split in ("train", "test"):
    ...     for label, grey in (("cat", 51), ("dog", 102)):
    ...         os.makedirs(os.path.join(root, split, label))
    ...         png = tf.io.encode_png(np.full((6, 4, 1), grey, np.uint8))
    ...         tf.io.write_file(os.path.join(root, split, label, "a.png"), png)
    >>> info = describe(dataset_name(root))  # doctest: +ELLIPSIS
    [ft_keras] reading the 4 images of ... once (...)
    >>> info.classes, info.splits, info.image_shape
    (('cat', 'dog'), (('train', 2), ('test', 2)), (6, 4, 1))
    >>> [round(x, 6) for x in info.mean + info.std]
    [0.3, 0.1]
    >>> shutil.rmtree(root)
    """
    root = root_of(name)
    stamp = directory_stamp(root)
    cached = _MEMORY.get(root)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    splits = split_folders(root)
    files = list_files(root, splits)
    fingerprint = folder_fingerprint(root, files)
    info = _read_cache(root, fingerprint)
    if info is None:
        info = _measure(root, splits["train"], files)
        _write_cache(root, fingerprint, info)
    _MEMORY[root] = (stamp, info)
    return info


def builder(name):
    """TFDS's `ImageFolder` builder of dataset `name`, decoding every image
    to the folder's channel count as uint8.

    Example:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     builder(dataset_name(root))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ft_keras.data.image_folder_files.ImageFolderError: Image folder /... has no train/ folder ...
    """
    channels = describe(name).image_shape[-1]
    return tfds.folder_dataset.ImageFolder(
        root_of(name), shape=(None, None, channels), dtype=tf.uint8
    )


def check_split(name, split):
    """Raises an `ImageFolderError` unless `split` is a split folder of
    dataset `name` (TFDS's `ImageFolder` reads whole splits only)."""
    info = describe(name)
    splits = [s for s, _ in info.splits]
    if split not in splits:
        raise ImageFolderError(
            f"Image folder {info.root} has no split folder {split!r} (its "
            f"splits: {', '.join(splits)}; slices such as 'train[:90%]' are "
            f"not supported): put those images in {info.root}/{split}/"
            "<class>/, or choose one of its splits (dataset.train_split, "
            "dataset.test_split)."
        )


# --------------------------------------------------------------------------
# Decoding every image once (`image_folder_files.pixel_sums`).


def _measure(root, classes, files):
    train = [path for path, _ in files["train"]]
    total = sum(len(examples) for examples in files.values())
    print(
        f"[ft_keras] reading the {total} images of {root} once (classes, "
        "image size, mean/std of train/)",
        flush=True,
    )
    channels = channels_of(train[0])
    total, squares, count, first = pixel_sums(train, channels)
    mean = total / (255.0 * count)
    variance = squares / (255.0**2 * count) - mean**2
    std = [max(float(v), 0.0) ** 0.5 for v in variance]
    for split, examples in files.items():
        if split != "train":
            pixel_sums([path for path, _ in examples], channels)
    if min(std) == 0:
        raise ImageFolderError(
            f"The training images of {root} are all one colour in some "
            f"channel (std {tuple(round(s, 4) for s in std)}), so they "
            "cannot be normalised: check the images, or give build_dataset "
            "`mean` and `std`."
        )
    return FolderInfo(
        root=root,
        classes=tuple(classes),
        splits=tuple(
            (split, len(examples)) for split, examples in files.items()
        ),
        image_shape=first + (channels,),
        mean=tuple(float(m) for m in mean),
        std=tuple(std),
    )


# --------------------------------------------------------------------------
# The file cache beside the data.


def _read_cache(root, fingerprint):
    try:
        with open(os.path.join(root, CACHE_FILE)) as f:
            saved = json.load(f)
        if (
            saved.get("version") != _CACHE_VERSION
            or saved.get("fingerprint") != fingerprint
        ):
            return None
        info = saved["info"]
        return FolderInfo(
            root=root,
            classes=tuple(info["classes"]),
            splits=tuple((s, int(n)) for s, n in info["splits"]),
            image_shape=tuple(int(d) for d in info["image_shape"]),
            mean=tuple(float(m) for m in info["mean"]),
            std=tuple(float(s) for s in info["std"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(root, fingerprint, info):
    path = os.path.join(root, CACHE_FILE)
    saved = {
        "version": _CACHE_VERSION,
        "fingerprint": fingerprint,
        "info": {
            k: v for k, v in dataclasses.asdict(info).items() if k != "root"
        },
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # a read-only folder: the memory copy is enough
        try:
            os.remove(tmp)
        except OSError:
            pass
