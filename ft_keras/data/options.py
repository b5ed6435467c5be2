"""The options of `build_dataset`: each one's default, checks and meaning.

`PipelineOptions` is the one place an option is declared. `build_dataset`
accepts its fields as keyword arguments (gin configs pass
`dataset.options = {...}` dicts, which the runner spreads into the call),
so adding an option means adding a field here and using it in the pipeline.
"""

import dataclasses
import difflib

import numpy as np

from ft_keras.data import specs
from ft_keras.data import transforms

__all__ = ["OPTION_NAMES", "PipelineOptions", "SWAPPABLE_RECIPES", "is_int"]

# The recipes of decoded 0-255 images of any size: a dataset of one may take
# the other (`PipelineOptions.recipe`).
SWAPPABLE_RECIPES = ("generic", "cifar")


def _set(options, key, value):
    """Normalises a field of the frozen `options` in `__post_init__`."""
    object.__setattr__(options, key, value)


def is_int(value):
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How `build_dataset` reads, augments and batches a dataset.

    Every field accepts `None`, meaning its default; the defaults of `mean`,
    `std`, `shuffle_buffer`, `deterministic`, `seed`, `drop_remainder` and
    `image_size` depend on the dataset or on `training`, and `resolve` fills
    them in. Values are checked when the object is made (and against the
    dataset by `resolve`); a bad one raises a `ValueError` quoting it.

    Args:
        mean: Per-channel normalisation mean on the [0, 1] scale (a number
            or one value per channel). Default: see `normalization_stats`
            (0.5 for generic datasets).
        std: Per-channel standard deviation, same form as `mean`, all > 0.
            Default: see `normalization_stats` (0.5 for generic datasets).
        shuffle_buffer: int, 0 disables shuffling. Defaults to the whole
            train split for CIFAR, Fashion-MNIST and digits, 10000
            otherwise. Only used when training.
        seed: int seed of shuffling and augmentation.
        deterministic: bool, sets `tf.data.Options.deterministic` and makes
            the seeded pipeline repeatable (seed 0 if `seed` is not given).
            Defaults to False for training, True for evaluation.
        cache: True, False or "auto" (default: in memory when the decoded
            dataset is below 2 GiB: CIFAR and digits yes, ImageNet no).
        augment: list of extra training augmentations among `"randaugment"`,
            `"cutmix"`, `"mixup"` (Keras core layers
            `keras.layers.RandAugment` per image, `keras.layers.CutMix` /
            `keras.layers.MixUp` per batch), or `"keras_cv.randaugment"`,
            `"keras_cv.cutmix"`, `"keras_cv.mixup"` when keras-cv is
            installed (case-insensitive; one name alone is a list of one).
            RandAugment runs on raw pixels (before normalisation),
            CutMix/MixUp on normalised batches in the given order;
            CutMix/MixUp make labels one-hot, in the evaluation dataset of
            the same options too. Ignored when `training=False` (apart from
            the one-hot labels).
        drop_remainder: bool, defaults to `training`.
        repeat: bool, repeat forever (default False).
        download: bool, allow a TFDS download when the dataset is not
            prepared (default True).
        image_size: ImageNet crop side (default 224; evaluation resizes to
            `round(side * 256 / 224)` first) or the `(height, width)`
            generic datasets and image folders are resized to (default for
            an image folder: its first training image's size). An int means
            a square. Cannot change the size of CIFAR, Fashion-MNIST or
            digits.
        autotune: bool, sets `tf.data.Options.autotune.enabled` (default
            False). With TensorFlow 2.21, deleting an iterator of an
            autotuned pipeline sometimes blocks until the autotuner's next
            wake-up, whose period doubles from 10 ms: an epoch's iterator
            can then cost up to its own lifetime again (an epoch of 3 s
            stalled 2.1 s when it ended; see `benchmarks/iterator_stall.py`).
            Off, each `AUTOTUNE` parallelism stays at its initial value, the
            number of cores (at most 16).
        recipe: The training transform, among `specs.RECIPES`: default the
            dataset's own (`"generic"`, none, for image folders and other
            TFDS datasets). A dataset whose own is `"generic"` or `"cifar"`
            may take either: `"cifar"` is the 4-pixel zero pad, random crop
            back and horizontal flip of CIFAR (the padding of the dataset's
            own recipe if it is `"cifar"`). Evaluation is the same for both.
        index: bool (default False): yield `({"images": images, "index":
            indices}, labels)`, each example's position in the split
            (its files read in order), taken before shuffling and
            augmentation: what a term with a memory per training example
            needs (`ft_keras.CRD`; `split_labels` gives the labels in
            that order). Not with CutMix or MixUp, whose images mix two
            examples.

    Example:

    >>> options = PipelineOptions(augment="MixUp", seed=1)
    >>> options.augment
    ('mixup',)
    >>> resolved = options.resolve("cifar10", training=True)
    >>> resolved.shuffle_buffer, resolved.drop_remainder, resolved.std
    (50000, True, (0.247, 0.2435, 0.2616))
    """

    mean: object = None
    std: object = None
    shuffle_buffer: object = None
    seed: object = None
    deterministic: object = None
    cache: object = "auto"
    augment: tuple = ()
    drop_remainder: object = None
    repeat: bool = False
    download: bool = True
    image_size: object = None
    autotune: bool = False
    recipe: object = None
    index: bool = False

    def __post_init__(self):
        self._check_reading()
        self._check_transforms()

    def _check_reading(self):
        """Checks and normalises the options of reading: the flags, `seed`,
        `shuffle_buffer` and `cache`."""
        for key in ("deterministic", "download", "drop_remainder", "repeat"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ValueError(
                    f"`{key}` must be True or False. Received: {key}={value!r}"
                )
        _set(self, "repeat", self.repeat is True)
        _set(self, "download", self.download is not False)

        if self.seed is not None:
            if not is_int(self.seed):
                raise ValueError(
                    "`seed` must be an int or None. "
                    f"Received: seed={self.seed!r}"
                )
            _set(self, "seed", int(self.seed))

        if self.shuffle_buffer is not None:
            if not is_int(self.shuffle_buffer) or self.shuffle_buffer < 0:
                raise ValueError(
                    "`shuffle_buffer` must be an int >= 0 (0 disables "
                    "shuffling). "
                    f"Received: shuffle_buffer={self.shuffle_buffer!r}"
                )
            _set(self, "shuffle_buffer", int(self.shuffle_buffer))

        cache = "auto" if self.cache is None else self.cache
        if not (isinstance(cache, bool) or cache == "auto"):
            raise ValueError(
                "`cache` must be True, False or 'auto'. "
                f"Received: cache={cache!r}"
            )
        _set(self, "cache", cache)

    def _check_transforms(self):
        """Checks and normalises the options of the transforms: `augment`,
        `image_size`, `recipe`, `index` and `autotune`."""
        _set(self, "augment", _check_augment(self.augment))
        _set(self, "image_size", _check_image_size(self.image_size))

        if self.recipe is not None and self.recipe not in specs.RECIPES:
            raise ValueError(
                f"`recipe` must be one of {specs.RECIPES} or None (the "
                f"dataset's own). Received: recipe={self.recipe!r}"
            )

        if self.index is not None and not isinstance(self.index, bool):
            raise ValueError(
                f"`index` must be True or False. Received: index={self.index!r}")
        _set(self, "index", self.index is True)
        mixing = [a for a in self.augment if a.endswith(("cutmix", "mixup"))]
        if self.index and mixing:
            raise ValueError(
                f"`index=True` gives each example's index, but `augment` "
                f"mixes two examples into one image ({mixing[0]!r}): drop "
                f"one of them. Received: augment={list(self.augment)}")

        if self.autotune is not None and not isinstance(self.autotune, bool):
            raise ValueError(
                "`autotune` must be True or False. "
                f"Received: autotune={self.autotune!r}"
            )
        _set(self, "autotune", bool(self.autotune))

    @classmethod
    def from_kwargs(cls, options):
        """`PipelineOptions(**options)`, whose unknown names are a
        `TypeError` naming them, the valid ones and the close matches.

        Example:

        >>> PipelineOptions.from_kwargs({"shufle_buffer": 10})
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Unrecognized option(s) ... Did you mean shuffle_buffer?
        """
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            close = [
                m
                for key in unknown
                for m in difflib.get_close_matches(key, OPTION_NAMES, n=1)
            ]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise TypeError(
                f"Unrecognized option(s) for build_dataset: {unknown}. Valid "
                f"options are {list(OPTION_NAMES)}.{hint}"
            )
        return cls(**options)

    def resolve(self, name, training):
        """These options for dataset `name` and the training or evaluation
        split: the defaults that depend on them filled in, and the values
        checked against the dataset (channels, fixed image sizes).

        Only `seed` (unseeded) and `image_size` (the dataset's own) may stay
        `None`; `recipe` becomes the dataset's own if not given.
        """
        spec = specs.get(name)
        deterministic = self.deterministic
        if deterministic is None:
            deterministic = not training
        seed = self.seed
        if deterministic and seed is None and training:
            seed = 0
        self._check_image_size_of(name, spec)
        recipe = self._recipe_of(name, spec)
        mean, std = self._normalization_of(name, spec)
        return dataclasses.replace(
            self,
            mean=mean,
            std=std,
            shuffle_buffer=(
                spec.shuffle_buffer
                if self.shuffle_buffer is None
                else self.shuffle_buffer
            ),
            seed=seed,
            deterministic=deterministic,
            drop_remainder=(
                training if self.drop_remainder is None else self.drop_remainder
            ),
            recipe=recipe,
        )

    def _check_image_size_of(self, name, spec):
        """Raises a `ValueError` if `image_size` does not suit dataset
        `name` (of spec `spec`): ImageNet crops squares, and CIFAR,
        Fashion-MNIST and digits keep their size."""
        image_size = self.image_size
        if image_size is not None:
            if spec.recipe == "imagenet" and image_size[0] != image_size[1]:
                raise ValueError(
                    "`image_size` for ImageNet is the side of the square "
                    f"crop. Received: image_size={image_size!r}"
                )
            if (
                spec.recipe in ("cifar", "digits")
                and image_size != spec.input_shape[:2]
            ):
                raise ValueError(
                    f"`image_size` cannot be changed for {name!r}: its images "
                    f"are {spec.input_shape[:2]}. "
                    f"Received: image_size={image_size!r}"
                )

    def _recipe_of(self, name, spec):
        """`recipe` for dataset `name`: its own if not given, or the other
        of `SWAPPABLE_RECIPES`."""
        recipe = spec.recipe if self.recipe is None else self.recipe
        if recipe != spec.recipe and not {recipe, spec.recipe} <= set(
            SWAPPABLE_RECIPES
        ):
            raise ValueError(
                f"`recipe` {recipe!r} cannot be used for {name!r}, whose "
                f"recipe is {spec.recipe!r}: only datasets of recipe "
                f"{' or '.join(map(repr, SWAPPABLE_RECIPES))} may take the "
                f"other one. Received: recipe={self.recipe!r}"
            )
        return recipe

    def _normalization_of(self, name, spec):
        """`(mean, std)` for dataset `name`, one value per channel: the
        given ones, or the dataset's (`specs.normalization_stats`)."""
        channels = spec.input_shape[-1]
        default_mean, default_std = specs.normalization_stats(name)
        mean = _per_channel(
            "mean", default_mean if self.mean is None else self.mean, channels
        )
        std = _per_channel(
            "std", default_std if self.std is None else self.std, channels
        )
        if any(s <= 0 for s in std):
            raise ValueError(
                f"`std` values must be > 0. Received: std={std!r}"
            )
        return mean, std


OPTION_NAMES = tuple(
    sorted(field.name for field in dataclasses.fields(PipelineOptions))
)


def _check_augment(augment):
    received = augment
    augment = augment or ()
    if isinstance(augment, str):
        augment = (augment,)
    if not isinstance(augment, (list, tuple)):
        raise ValueError(
            "`augment` must be a list or tuple of names among "
            f"{list(transforms.AUGMENTATIONS)}. Received: augment={received!r}"
        )
    augment = tuple(a.lower() if isinstance(a, str) else a for a in augment)
    for item in augment:
        if item not in transforms.AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {item!r}. `augment` entries must be "
                f"among {list(transforms.AUGMENTATIONS)}. "
                f"Received: augment={augment!r}"
            )
    if len(set(augment)) != len(augment):
        raise ValueError(
            "`augment` lists an augmentation twice. "
            f"Received: augment={augment!r}"
        )
    return augment


def _check_image_size(image_size):
    """`None`, or the `(height, width)` of an int or a pair of ints."""
    if image_size is None:
        return None
    if is_int(image_size):
        image_size = (int(image_size), int(image_size))
    if (
        not isinstance(image_size, (list, tuple))
        or len(image_size) != 2
        or not all(is_int(s) and s > 0 for s in image_size)
    ):
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) "
            f"pair. Received: image_size={image_size!r}"
        )
    return tuple(int(s) for s in image_size)


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
