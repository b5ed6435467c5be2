"""From a trained student and its dataset to the files the runner ships.

`export_for_dataset(student, dataset, export_dir)` is the export stage of
`python -m ft_keras.train` as one call: it reads how the dataset's raw pixels
become the student's inputs (`normalization`) and a calibration sample of
its training images (`representative_images`), and writes the uint8-input
SavedModel, float and int8 LiteRT files, ONNX and `.keras`
(`ft_keras.export.export_student`).
"""

import numpy as np

from ft_keras import data

# How many training images calibrate the int8 file when only a dataset is
# given.
DEFAULT_CALIBRATION_IMAGES = 256


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


def raw_images(batches, pixel_max, mean, std, count=None):
    """The images of `(images, labels)` batches of a pipeline that
    normalised them, back at the raw pixel scale as uint8 (at most
    `count`)."""
    images = np.concatenate([np.asarray(x) for x, _ in batches])[:count]
    raw = (images * np.asarray(std) + np.asarray(mean)) * pixel_max
    return np.clip(np.round(raw), 0, pixel_max).astype(np.uint8)


def export_for_dataset(
    student,
    dataset,
    export_dir,
    representative=DEFAULT_CALIBRATION_IMAGES,
    data_dir=None,
    eval_options=None,
    onnx=None,
):
    """Writes what the runner's export stage writes, for `student` trained on
    `dataset`: `saved_model/` (raw uint8 images in, `logits` and
    `probabilities` out), `student_float.tflite`, `student_int8.tflite`
    (calibrated on training images), `student.onnx` (with the `export`
    extra) and `student.keras`.

    Arguments:
        student: The trained Keras student (normalised float input), e.g.
            `distiller.student`.
        dataset: The `build_dataset` name it was trained on.
        export_dir: Directory to (re)create.
        representative: How many training images calibrate the int8 file,
            or the uint8 images themselves; 0 or None: no int8 file.
        data_dir: TFDS's data directory.
        eval_options: The test split's `build_dataset` options, if any
            (`image_size`, `mean`, `std`).
        onnx: Write `student.onnx`: True, False, or None for "if `tf2onnx`
            is installed".

    Returns:
        `{"saved_model", "tflite_float", "tflite_int8", "onnx", "keras"}`:
        the written paths.

    Example:

    ```python
    from ft_keras import export
    paths = export.export_for_dataset(distiller.student, "digits", "export")
    logits = export.tflite_predict(paths["tflite_int8"], uint8_images)
    ```
    """
    from ft_keras.export import export_student

    eval_options = dict(eval_options or {})
    if representative is not None and np.ndim(representative) == 0:
        representative = (
            representative_images(
                dataset, int(representative), data_dir=data_dir, **eval_options
            )
            if representative
            else None
        )
    pixel_max, mean, std = normalization(dataset, eval_options)
    return export_student(
        student,
        export_dir,
        pixel_max,
        mean,
        std,
        representative_images=representative,
        onnx=onnx,
    )
