"""The raw pixel scale: a dataset's test-pipeline normalisation
`(x / pixel_max - mean) / std`, and a pipeline's images back at the raw
pixel scale as uint8, the images the exported files take."""

import numpy as np

from ft_keras import data


def normalization(dataset, options=None):
    """`(pixel_max, mean, std)`: the test pipeline's `(x / pixel_max - mean)
    / std` for `dataset`, with any `mean`/`std` of `options` (the
    `build_dataset` options of its test split).

    Example:

    ```python
    normalization("cifar10")   # (255, (0.4914, 0.4822, 0.4465), (0.247, ...))
    ```
    """
    pixel_max, mean, std = data.pixel_normalization(dataset)
    options = options or {}
    return pixel_max, options.get("mean", mean), options.get("std", std)


def to_raw(images, pixel_max, mean, std):
    """Images a pipeline normalised as `(x / pixel_max - mean) / std`, back
    at the raw pixel scale as uint8."""
    raw = (np.asarray(images) * np.asarray(std) + np.asarray(mean)) * pixel_max
    return np.clip(np.round(raw), 0, pixel_max).astype(np.uint8)


def raw_images(batches, pixel_max, mean, std, count=None):
    """The images of `(images, labels)` batches of a pipeline that
    normalised them, back at the raw pixel scale as uint8 (at most
    `count`)."""
    images = np.concatenate([np.asarray(x) for x, _ in batches])[:count]
    return to_raw(images, pixel_max, mean, std)
