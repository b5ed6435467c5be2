"""The representative images: the training images that calibrate the int8
LiteRT files, read as the test pipeline yields them and back at the raw
pixel scale as uint8.

`representative_images` reads them for a dataset; `representative_images_for`
for an experiment's settings, the one set the runner's `export` stage and
the deployment report (`ft_keras.deployment`) both calibrate on.
"""

from ft_keras import data
from ft_keras.export.pixels import normalization
from ft_keras.export.pixels import raw_images

# How many training images calibrate the int8 file when only a dataset is
# given.
DEFAULT_CALIBRATION_IMAGES = 256


def representative_images(
    dataset, count=DEFAULT_CALIBRATION_IMAGES, split="train", batch_size=None,
    data_dir=None, **options
):
    """The first `count` images of `split` as the test pipeline yields them
    (resized, no augmentation), back at the raw pixel scale as uint8: what
    int8 calibration feeds the exported model.

    Arguments:
        dataset: A `build_dataset` name (`"image_folder:<root>"` too).
        count: How many images.
        split: The split to read (the training split by default).
        batch_size: The pipeline's batch (None: `count`); the images are
            the same for any batch.
        data_dir: TFDS's data directory.
        **options: `build_dataset` options of the test pipeline
            (`image_size`, `mean`, `std`, `seed`, ...).

    Example:

    ```python
    images = representative_images("digits", count=64)
    images.shape, images.dtype   # (64, 8, 8, 1), uint8
    ```
    """
    pixel_max, mean, std = normalization(dataset, options)
    batches = data.build_dataset(
        dataset,
        split,
        batch_size=batch_size or count,
        training=False,
        data_dir=data_dir,
        # Not cached: a cache read in part warns and is thrown away.
        cache=False,
        **options,
    )
    batch_size = batch_size or count
    return raw_images(
        batches.take(-(-count // batch_size)), pixel_max, mean, std, count
    )


def representative_images_for(settings):
    """The int8 calibration images of an experiment (`ft_keras.config.
    Settings`): the first `experiment.representative_batches *
    dataset.eval_batch_size` images of its training split as its test
    pipeline yields them (`dataset.eval_options`, seeded with
    `experiment.seed` unless they say otherwise), as raw uint8."""
    cfg = settings.dataset
    options = dict(cfg.eval_options)
    options.setdefault("seed", settings.experiment.seed)
    return representative_images(
        cfg.name,
        count=settings.experiment.representative_batches * cfg.eval_batch_size,
        split=cfg.train_split,
        batch_size=cfg.eval_batch_size,
        data_dir=cfg.data_dir,
        **options,
    )
