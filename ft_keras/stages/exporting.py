"""The `export` stage: the student as SavedModel, LiteRT (float, int8) and
ONNX files that take raw uint8 images (`ft_keras.export`); the `deployment`
stage: every trained network exported and measured (`ft_keras.deployment`).

Each function takes the run's `ft_keras.stages.context.RunContext`.
"""

import os

from ft_keras import export as ft_export
from ft_keras import workdir as ft_workdir
from ft_keras.stages import inputs


def _representative_images(context):
    """The int8 calibration images: `ft_keras.export.representative_images_for`
    the run's settings, the deployment report's too; in a dry run, its
    synthetic test batches, back at the raw pixel scale."""
    if not context.dry_run:
        return ft_export.representative_images_for(context.settings)
    cfg = context.settings.dataset
    batches = context.settings.experiment.representative_batches
    return ft_export.raw_images(
        inputs.synthetic_dataset(context, training=False).take(batches),
        *ft_export.normalization(cfg.name, cfg.eval_options),
        count=batches * cfg.eval_batch_size,
    )


def run(context):
    """Exports the student into `<workdir>/export/` (the chief only) and
    records the files in results.json."""
    if not context.is_chief:
        return
    student = context.load(
        context.workdir.require("student", "model.keras"), compile=False)
    paths = ft_export.export_for_dataset(
        student,
        context.settings.dataset.name,
        context.workdir.path("export"),
        representative=_representative_images(context),
        eval_options=context.settings.dataset.eval_options,
        full_integer=context.settings.deployment.full_integer,
    )
    context.workdir.update_results(export=paths)
    if context.dry_run:
        names = ", ".join(sorted(os.path.basename(p) for p in paths.values()))
        print(
            f"[ft_keras] dry run: stage export: wrote {names} (in the "
            "temporary workdir, removed at the end)",
            flush=True,
        )
        return
    results = ft_workdir.read_json(context.workdir.output("results.json"))
    suspect = (
        " (the student tests at chance: see the warning of the evaluate stage)"
        if "student" in results.get("warnings", {})
        else ""
    )
    print(f"[ft_keras] exported to {context.workdir.path('export')}{suspect}", flush=True)


def deployment(context):
    """Exports every trained network and measures each file on the test
    split (`ft_keras.deployment.measure`, the chief only); prints the
    table. A dry run measures nothing: its test split is synthetic."""
    if not context.is_chief:
        return
    if context.dry_run:
        print(
            "[ft_keras] dry run: stage deployment: skipped (it measures the "
            "exported files on the real test split; python -m "
            "ft_keras.deployment does it for a finished workdir)",
            flush=True,
        )
        return
    from ft_keras import deployment as ft_deployment

    report = ft_deployment.measure(
        context.workdir.root, context.settings,
        command="the deployment stage of python -m ft_keras.train")
    print(ft_deployment.markdown(report), end="", flush=True)
    print(
        "[ft_keras] deployment report: "
        f"{context.workdir.path(ft_deployment.OUT_DIR)}",
        flush=True,
    )
