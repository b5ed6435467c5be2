"""Exports a trained student for deployment.

`export_student` writes, into one directory:

- `saved_model/`: a SavedModel whose `serving_default` signature takes raw
  uint8 images `(N, H, W, C)` (the dataset's pixel scale) and returns
  `logits` and `probabilities`; the normalisation runs inside the graph.
- `student_float.tflite`: the same signature as a float LiteRT (TFLite)
  model.
- `student_int8.tflite`: int8 post-training quantization, calibrated on a
  representative sample of training images (float fallback where an op has
  no int8 kernel; input stays raw uint8).
- `student.onnx`: the same model in ONNX (input `images`, outputs `logits`
  and `probabilities`), when `tf2onnx` is installed (`pip install
  "ft_keras[export]"`).
- `student.keras`: the Keras student (expects normalised float images).

All of them are one Keras model, `serving_model`: the student behind a
`Rescaling` layer that turns raw images into the normalised ones it was
trained on.

From Python, `export_for_dataset(student, "image_folder:<root>", "export")`
writes these files for a student trained on a dataset of
`ft_keras.data.build_dataset`: its normalisation, and int8 calibration on
its training images (`normalization`, `representative_images`). Run as a stage of an
experiment, the same call: `python -m ft_keras.export --gin_file=...
--workdir=...` (`ft_keras/export/__main__.py`).

One module per idea: `serving` (the serving model, its SavedModel),
`litert`, `onnx` (those files, and running them), `pixels` (the raw pixel
scale), `calibration` (the representative images), `student` (the export
directory) and `measure` (measuring the files).
"""

from ft_keras.export.calibration import DEFAULT_CALIBRATION_IMAGES
from ft_keras.export.calibration import representative_images
from ft_keras.export.calibration import representative_images_for
from ft_keras.export.litert import tflite_predict
from ft_keras.export.measure import FILES
from ft_keras.export.measure import count_macs
from ft_keras.export.measure import machine
from ft_keras.export.measure import measure_export
from ft_keras.export.measure import read_test_split
from ft_keras.export.measure import runtime_versions
from ft_keras.export.measure import size_bytes
from ft_keras.export.onnx import onnx_available
from ft_keras.export.onnx import onnx_predict
from ft_keras.export.pixels import normalization
from ft_keras.export.pixels import raw_images
from ft_keras.export.pixels import to_raw
from ft_keras.export.serving import SERVING
from ft_keras.export.serving import serving_model
from ft_keras.export.student import export_for_dataset
from ft_keras.export.student import export_student
