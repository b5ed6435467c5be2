"""Exports a trained student: its SavedModel, LiteRT, ONNX and `.keras`
files, written into one directory that replaces the last export whole.

`export_for_dataset` does it for a student of a `ft_keras.data` dataset
(its normalisation, and int8 calibration on its training images);
`export_student` for any normalisation and calibration images.
"""

import os
import shutil

import numpy as np

from ft_keras.export import onnx as onnx_file
from ft_keras.export.calibration import DEFAULT_CALIBRATION_IMAGES
from ft_keras.export.calibration import representative_images
from ft_keras.export.litert import write_litert
from ft_keras.export.pixels import normalization
from ft_keras.export.serving import serving_model
from ft_keras.export.serving import write_saved_model


def export_student(
    student,
    export_dir,
    pixel_max,
    mean,
    std,
    representative_images=None,
    onnx=None,
    full_integer=False,
):
    """Writes the student's SavedModel, LiteRT, ONNX and `.keras` files.

    Args:
        student: The trained Keras student (input: normalised float images).
        export_dir: Directory to (re)create.
        pixel_max: The raw images' maximum value (255; 16 for digits).
        mean, std: Per-channel normalisation on the [0, 1] scale.
        representative_images: uint8 array `(N, H, W, C)` of training images
            to calibrate the int8 LiteRT model; no int8 model without it.
        onnx: Write `student.onnx`: True, False, or None (the default) for
            "if `tf2onnx` is installed".
        full_integer: Also write `student_int8_full.tflite`, int8 kernels
            only, calibrated on `representative_images`: raw uint8 images
            in, int8 `logits` and `probabilities` out
            (`ft_keras.export.litert.convert` says why).

    Returns:
        A dict of the written paths.

    Raises:
        ValueError: `full_integer` without `representative_images`, or a
            student with an op that has no int8 kernel (one line each).

    Example:

    ```python
    paths = export_student(distiller.student, "export", 255,
                           mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                           representative_images=uint8_train_images[:256])
    ```
    """
    onnx = _checked_options(representative_images, onnx, full_integer)
    return _replace_directory(export_dir, lambda directory: _write_files(
        student, serving_model(student, pixel_max, mean, std), directory,
        representative_images, full_integer, onnx))


def _checked_options(representative_images, onnx, full_integer):
    """`onnx` as True or False, after checking the options go together."""
    if full_integer and representative_images is None:
        raise ValueError(
            "full_integer=True calibrates on representative_images: pass "
            "uint8 training images (export_for_dataset: representative > 0)."
        )
    if onnx is None:
        return onnx_file.onnx_available()
    if onnx and not onnx_file.onnx_available():
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install "
            "'ft_keras[export]' (or pass onnx=False)."
        )
    return onnx


def _replace_directory(export_dir, write):
    """Runs `write(directory)` into a fresh `<export_dir>.tmp`, then puts
    that directory in the place of `export_dir`; returns the paths `write`
    returned, in `export_dir`."""
    tmp_dir = f"{os.fspath(export_dir).rstrip(os.sep)}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    try:
        paths = write(tmp_dir)
    except BaseException:
        # A refused or failed export leaves the old one as it was.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp_dir, export_dir)
    return {
        key: os.path.join(export_dir, os.path.basename(path))
        for key, path in paths.items()
    }


def _write_files(student, served, directory, representative_images,
                 full_integer, onnx):
    """Writes every exported file into `directory`; returns their paths."""
    paths = {
        "saved_model": os.path.join(directory, "saved_model"),
        "keras": os.path.join(directory, "student.keras"),
    }
    student.save(paths["keras"])
    write_saved_model(served, paths["saved_model"])
    paths.update(write_litert(
        directory, paths["saved_model"], representative_images, full_integer
    ))
    if onnx:
        paths["onnx"] = os.path.join(directory, "student.onnx")
        onnx_file.write_onnx(served, paths["onnx"])
    return paths


def export_for_dataset(
    student, dataset, export_dir, representative=DEFAULT_CALIBRATION_IMAGES,
    data_dir=None, eval_options=None, onnx=None, full_integer=False,
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
        full_integer: Also write `student_int8_full.tflite`, int8 kernels
            only, calibrated on the same images (`export_student`).

    Returns:
        `{"saved_model", "tflite_float", "tflite_int8", "onnx", "keras"}`
        (and `"tflite_int8_full"`): the written paths.

    Example:

    ```python
    from ft_keras import export
    paths = export.export_for_dataset(distiller.student, "digits", "export")
    logits = export.tflite_predict(paths["tflite_int8"], uint8_images)
    ```
    """
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
        full_integer=full_integer,
    )
