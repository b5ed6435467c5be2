"""Each trained network's exported files, for a deployment report.

Each network is exported with `ft_keras.export.export_for_dataset` into
`<workdir>/deployment/<role>/`, all calibrated on the export stage's images
(`ft_keras.export.representative_images_for`: `experiment.
representative_batches` batches of the training split). The student's
`<workdir>/export/` of the export stage is used as it is when it holds every
file asked for, and so is an earlier report's export of an unchanged
`model.keras` (`SOURCE_FILE` records which). The files are named `student_*`
for every network: the names `export_student` writes.
"""

import os

from ft_keras import workdir as ft_workdir
from ft_keras.deployment.trained import OUT_DIR

# Beside each network's files in `<workdir>/deployment/<role>/`: the
# fingerprint of the model.keras they were exported from.
SOURCE_FILE = "source.json"


def _wanted(onnx, full_integer):
    """The `FILES` keys an export with these options writes."""
    from ft_keras import export as ft_export

    wanted = {"saved_model", "tflite_float", "tflite_int8"}
    if full_integer:
        wanted.add("tflite_int8_full")
    if onnx or (onnx is None and ft_export.onnx_available()):
        wanted.add("onnx")
    return wanted


def _holds(export_dir, keys):
    from ft_keras import export as ft_export

    return all(
        os.path.exists(os.path.join(export_dir, ft_export.FILES[key]))
        for key in keys
    ) and os.path.exists(os.path.join(export_dir, "student.keras"))


def _exported_from(export_dir, model_path):
    """Whether `export_dir` was exported from `model_path` as it is now."""
    source = os.path.join(export_dir, SOURCE_FILE)
    return (os.path.exists(source)
            and ft_workdir.read_json(source) == ft_workdir.fingerprint(model_path))


def export_models(workdir, models, settings, onnx=None, full_integer=False):
    """Exports each of `{role: model.keras path}` into
    `<workdir>/deployment/<role>/`, all calibrated on the same images; the
    student's `<workdir>/export/`, and an earlier report's export of the
    same model.keras, are kept when they hold every file asked for.
    Returns `{role: export directory}`."""
    import keras

    from ft_keras import export as ft_export

    wanted = _wanted(onnx, full_integer)
    runner_export = os.path.join(workdir, "export")
    dirs, images = {}, None
    for role, path in models.items():
        if role == "student" and _holds(runner_export, wanted):
            dirs[role] = runner_export
            continue
        dirs[role] = os.path.join(workdir, OUT_DIR, role)
        if _holds(dirs[role], wanted) and _exported_from(dirs[role], path):
            continue
        if images is None:
            images = ft_export.representative_images_for(settings)
        ft_export.export_for_dataset(
            keras.models.load_model(path, compile=False),
            settings.dataset.name,
            dirs[role],
            representative=images,
            eval_options=settings.dataset.eval_options,
            onnx=onnx,
            full_integer=full_integer,
        )
        ft_workdir.write_json(os.path.join(dirs[role], SOURCE_FILE),
                              ft_workdir.fingerprint(path))
    return dirs
