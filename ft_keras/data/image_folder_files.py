"""The files of an image folder: its layout checked, its images decoded.

`ft_keras.data.image_folder` describes a folder through these:
`split_folders` and `list_files` check the layout (a split folder per
split, the same class folders in each, images in every class folder),
`folder_fingerprint` and `directory_stamp` say whether a file changed, and
`channels_of` and `pixel_sums` decode images as TFDS's `ImageFolder`
builder does. A bad folder raises an `ImageFolderError` whose one-line
message names the path and the fix.
"""

import hashlib
import os

import tensorflow as tf
import tensorflow_datasets as tfds

__all__ = [
    "EXTENSIONS",
    "LAYOUT",
    "ImageFolderError",
    "channels_of",
    "directory_stamp",
    "folder_fingerprint",
    "images_in",
    "list_files",
    "pixel_sums",
    "split_folders",
]

# The files TFDS's `ImageFolder` reads; it skips every other file.
EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg"


class ImageFolderError(ValueError):
    """A folder that cannot be a dataset; the message is one line naming
    the path and the fix."""


# --------------------------------------------------------------------------
# Listing and checking the layout.


def _subfolders(path):
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def split_folders(root):
    """`{split: [class folder names]}` of the split folders that hold
    class folders; raises if the layout is wrong."""
    if not os.path.exists(root):
        raise ImageFolderError(
            f"Image folder {root} does not exist: set dataset.path (or "
            f"name='image_folder:<root>') to the folder holding {LAYOUT}."
        )
    if not os.path.isdir(root):
        raise ImageFolderError(
            f"Image folder {root} is not a directory: set dataset.path to "
            f"the folder holding {LAYOUT}."
        )
    found = _subfolders(root)
    if "train" not in found:
        raise ImageFolderError(
            f"Image folder {root} has no train/ folder (it holds "
            f"{', '.join(f + '/' for f in found) or 'no folder'}): put the "
            f"training images in {root}/train/<class>/, as {LAYOUT}."
        )
    splits = {}
    for split in ["train"] + [f for f in found if f != "train"]:
        classes = _subfolders(os.path.join(root, split))
        if classes:
            splits[split] = classes
        elif split == "train" or images_in(os.path.join(root, split)):
            raise ImageFolderError(
                f"{os.path.join(root, split)} has no class folders: put "
                f"each class's images in {root}/{split}/<class>/."
            )
    if len(splits) < 2:
        raise ImageFolderError(
            f"Image folder {root} has no evaluation split: no "
            "test/<class>/ folders (nor another split folder's beside "
            f"train/): put the evaluation images in {root}/test/<class>/."
        )
    train = splits["train"]
    if len(train) < 2:
        raise ImageFolderError(
            f"{root}/train holds one class folder ({train[0]}/): a "
            "classifier needs two or more, one folder per class."
        )
    for split, classes in splits.items():
        missing = sorted(set(train) - set(classes))
        extra = sorted(set(classes) - set(train))
        if missing or extra:
            what = (
                f"class {missing[0]!r} is in train/ but not in {split}/"
                if missing
                else f"class {extra[0]!r} is in {split}/ but not in train/"
            )
            others = len(missing) + len(extra) - 1
            more = f" ({others} more differ)" if others else ""
            raise ImageFolderError(
                f"Image folder {root}: {what}{more}; every split folder "
                "needs the same class folders: add the missing ones or "
                "remove the extra ones."
            )
    return splits


def images_in(folder):
    """Names of the files in `folder` that TFDS reads as images, sorted."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name for e in entries if e.name.lower().endswith(EXTENSIONS)
        )


def directory_stamp(root):
    """Modification times of the root, split and class folders: a file
    added, removed or renamed changes one of them."""
    splits = split_folders(root)
    folders = [root] + [
        os.path.join(root, split, *label)
        for split, classes in splits.items()
        for label in [()] + [(c,) for c in classes]
    ]
    return tuple((f, os.stat(f).st_mtime_ns) for f in folders)


def list_files(root, splits):
    """`{split: [(path, label index), ...]}` of `split_folders`' splits,
    files sorted by class then name."""
    files = {}
    for split, classes in splits.items():
        files[split] = []
        for index, label in enumerate(classes):
            folder = os.path.join(root, split, label)
            names = images_in(folder)
            if not names:
                with os.scandir(folder) as entries:
                    others = sorted(e.name for e in entries)
                seen = (
                    f" (it holds {len(others)} other file(s), e.g. "
                    f"{others[0]}: convert them)"
                    if others
                    else ""
                )
                raise ImageFolderError(
                    f"{folder} holds no .jpg, .jpeg or .png image{seen}: "
                    "add images to it or remove the folder."
                )
            files[split].extend(
                (os.path.join(folder, n), index) for n in names
            )
    return files


def folder_fingerprint(root, files):
    digest = hashlib.sha256()
    for split, examples in files.items():
        for path, _ in examples:
            try:
                stat = os.stat(path)
            except OSError as error:
                raise ImageFolderError(
                    f"{path} cannot be read ({error.strerror}): replace or "
                    "remove it."
                ) from None
            relative = os.path.relpath(path, root)
            digest.update(
                f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Decoding every image once.


def _decode_error(path, error):
    reason = " ".join(str(getattr(error, "message", error)).split())
    return ImageFolderError(
        f"{path} cannot be read as an image ({reason[:200]}): replace or "
        "remove it."
    )


def channels_of(path):
    """1 for a grey (or grey + alpha) image, else 3."""
    try:
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=0, expand_animations=False
        )
    except (tf.errors.OpError, ValueError) as error:
        raise _decode_error(path, error) from None
    return 1 if image.shape[-1] in (1, 2) else 3


def pixel_sums(paths, channels):
    """`(sum, sum of squares, pixel count, first image's (h, w))` of the
    images at `paths`, decoded as the `ImageFolder` builder decodes them;
    the first file that fails is named."""
    feature = tfds.features.Image(shape=(None, None, channels), dtype=tf.uint8)

    def decode(path):
        return feature.decode_example(tf.io.read_file(path))

    def sums(path):
        image = decode(path)
        pixels = tf.cast(tf.reshape(image, [-1, channels]), tf.float64)
        return (
            tf.reduce_sum(pixels, 0),
            tf.reduce_sum(pixels * pixels, 0),
            tf.shape(pixels, out_type=tf.int64)[0],
            tf.shape(image)[:2],
        )

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        sums, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    total, squares, count, first = 0.0, 0.0, 0, None
    done = 0
    iterator = iter(ds.prefetch(tf.data.AUTOTUNE))
    while True:
        try:
            s, sq, n, size = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:
            # Results come in order, so a file from `done` on failed: the
            # first one that fails alone is named.
            for path in paths[done:]:
                try:
                    decode(tf.constant(path))
                except (tf.errors.OpError, ValueError) as own_error:
                    raise _decode_error(path, own_error) from None
            raise _decode_error(paths[done], error) from None
        total, squares, count = (
            total + s.numpy(),
            squares + sq.numpy(),
            count + n,
        )
        if first is None:
            first = tuple(int(d) for d in size.numpy())
        done += 1
    return total, squares, int(count), first
