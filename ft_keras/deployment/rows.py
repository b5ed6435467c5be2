"""The deployment report as data: one row per network and exported file,
and the report's dict (`deployment.json`).

The top-1 change of a file is against its network's float Keras accuracy:
the top-1 the evaluate stage measured of its `model.keras` on the same test
split (`results.json`'s `"evaluation"`), so the SavedModel row shows what
exporting cost and the int8 rows what quantization cost. A workdir whose
evaluate stage did not run has no Keras figure; its SavedModel row (float32,
the same weights) is the reference then, and `"reference"` says which.
"""

import datetime
import os

from ft_keras import workdir as ft_workdir
from ft_keras.deployment.trained import ROLES

# The exported files' formats, as the table names them.
FORMATS = {
    "saved_model": "SavedModel",
    "tflite_float": "LiteRT float",
    "tflite_int8": "LiteRT int8",
    "tflite_int8_full": "LiteRT int8 (full integer)",
    "onnx": "ONNX",
}


def read_keras_top1(workdir):
    """`{role: float Keras top-1}` the evaluate stage recorded."""
    path = os.path.join(workdir, "results.json")
    results = ft_workdir.read_json(path) if os.path.exists(path) else {}
    return {
        role: scores["top1"]
        for role, scores in results.get("evaluation", {}).items()
        if "top1" in scores
    }


def build_rows(measured, names, keras_top1):
    """The table's rows, teacher first, from `{role: measure_export dict}`,
    `{role: display name}` and `{role: float Keras top-1}`."""
    teacher = measured.get("teacher", {}).get("files", {})
    rows = []
    for role in (r for r in ROLES if r in measured):
        files = measured[role]["files"]
        reference = keras_top1.get(role)
        if reference is None and "saved_model" in files:
            reference = files["saved_model"]["top1"]
        network = measured[role]["student"] or {}
        for key, result in files.items():
            latency = result["latency_ms"]["median"]
            base = teacher.get(key, {}).get("latency_ms", {}).get("median")
            rows.append({
                "role": role,
                "model": names[role],
                "format": FORMATS[key],
                "file_key": key,
                "file": result["file"],
                "params": network.get("params"),
                "macs": network.get("macs"),
                "size_bytes": result["size_bytes"],
                "top1": result["top1"],
                # Rounded: a float32 Keras top-1 is off by ~1e-9.
                "top1_change": (None if reference is None
                                else round(result["top1"] - reference, 6)),
                "latency_ms": result["latency_ms"],
                "images_per_second": result["images_per_second"],
                "threads": result["threads"],
                "speedup_vs_teacher": (base / latency
                                       if base and latency else None),
            })
    return rows


def summary(workdir, measured, dirs, keras_top1, rows, command):
    """The JSON dict of `deployment()`."""
    first = next(iter(measured.values()))
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        **{key: first[key] for key in ("dataset", "test_images", "batch",
                                       "latency_runs", "threads", "machine",
                                       "runtimes")},
        "models": {
            role: {
                "export_dir": os.path.relpath(dirs[role], workdir),
                "keras_top1": keras_top1.get(role),
                "reference": ("keras" if role in keras_top1
                              else "saved_model"),
                **(result["student"] or {}),
            }
            for role, result in measured.items()
        },
        "rows": rows,
    }
