"""Exports a trained student for deployment.

`export_student` writes, into one directory:

- `saved_model/`: a SavedModel whose `serving_default` signature takes raw
  uint8 images `(N, H, W, C)` (the dataset's pixel scale) and returns
  `logits` and `probabilities`; the normalisation runs inside the graph.
- `student_float.tflite`: the same signature as a float TFLite model.
- `student_int8.tflite`: int8 post-training quantization, calibrated on a
  representative sample of training images (float fallback where an op has
  no int8 kernel; input stays raw uint8).
- `student.keras`: the Keras student (expects normalised float images).

Run as a stage of an experiment: `python -m ft_keras.export --gin_file=...
--workdir=...` (`ft_keras/export/__main__.py`).
"""

import os
import shutil

import keras
import numpy as np
import tensorflow as tf

SERVING = "serving_default"


def serving_function(model, pixel_max, mean, std):
    """`uint8 images -> {"logits", "probabilities"}` with the normalisation
    `(x / pixel_max - mean) / std` inside the graph."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)

    def serve(images):
        x = (tf.cast(images, tf.float32) / float(pixel_max) - mean) / std
        logits = tf.cast(model(x, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    return serve


def _write_saved_model(model, path, serve):
    input_shape = tuple(model.input_shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SERVING,
        fn=serve,
        input_signature=[
            tf.TensorSpec((None,) + input_shape, tf.uint8, name="images")
        ],
    )
    archive.write_out(path, verbose=False)


def _tflite(saved_model_dir, representative_images=None):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SERVING]
    )
    if representative_images is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative_dataset():
            for image in representative_images:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
    return converter.convert()


def export_student(
    student, export_dir, pixel_max, mean, std, representative_images=None
):
    """Writes the student's SavedModel, TFLite files and `.keras` file.

    Args:
        student: The trained Keras student (input: normalised float images).
        export_dir: Directory to (re)create.
        pixel_max: The raw images' maximum value (255; 16 for digits).
        mean, std: Per-channel normalisation on the [0, 1] scale.
        representative_images: uint8 array `(N, H, W, C)` of training images
            to calibrate the int8 TFLite model; no int8 model without it.

    Returns:
        A dict of the written paths.

    Example:

    ```python
    paths = export_student(distiller.student, "export", 255,
                           mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                           representative_images=uint8_train_images[:256])
    ```
    """
    tmp_dir = f"{os.fspath(export_dir).rstrip(os.sep)}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    paths = {
        "saved_model": os.path.join(tmp_dir, "saved_model"),
        "tflite_float": os.path.join(tmp_dir, "student_float.tflite"),
        "keras": os.path.join(tmp_dir, "student.keras"),
    }
    student.save(paths["keras"])
    _write_saved_model(
        student, paths["saved_model"], serving_function(student, pixel_max, mean, std)
    )
    with open(paths["tflite_float"], "wb") as f:
        f.write(_tflite(paths["saved_model"]))
    if representative_images is not None:
        paths["tflite_int8"] = os.path.join(tmp_dir, "student_int8.tflite")
        images = np.asarray(representative_images, np.uint8)
        with open(paths["tflite_int8"], "wb") as f:
            f.write(_tflite(paths["saved_model"], images))
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp_dir, export_dir)
    return {
        key: os.path.join(export_dir, os.path.basename(path))
        for key, path in paths.items()
    }


def tflite_predict(path, images):
    """Runs a TFLite file's serving signature on uint8 images, one at a time;
    returns the logits as a float array."""
    interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    runner = interpreter.get_signature_runner(SERVING)
    return np.concatenate(
        [runner(images=image[None])["logits"] for image in np.asarray(images)]
    )
