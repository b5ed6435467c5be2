"""Makes the deployment report of a workdir: exports every trained network,
measures each file on the full test split in its own runtime
(`ft_keras.export.measure_export`), and writes the report.

Written into `<workdir>/deployment/`:

- `deployment.md`: a header line naming the machine (CPU, cores), threads
  and runtime versions, then one table row per network and format
  (`ft_keras.deployment.table`).
- `deployment.json`: the same as a dict (`deployment()`'s return value),
  also stored under the key `"deployment"` of `<workdir>/results.json`.
- `deployment.png`: top-1 against batch-1 latency (log axis), one colour
  per network and one marker per format (`ft_keras.deployment.figure`).
"""

import dataclasses
import os

from ft_keras import stages
from ft_keras import workdir as ft_workdir
from ft_keras.deployment.exports import export_models
from ft_keras.deployment.figure import plot
from ft_keras.deployment.rows import build_rows
from ft_keras.deployment.rows import read_keras_top1
from ft_keras.deployment.rows import summary
from ft_keras.deployment.table import markdown
from ft_keras.deployment.trained import OUT_DIR
from ft_keras.deployment.trained import load_settings
from ft_keras.deployment.trained import trained_models


def write_report(workdir, report):
    """Writes `deployment.md`, `deployment.json`, `deployment.png` (with
    matplotlib) and `results.json`'s `"deployment"`; returns their paths."""
    out = os.path.join(workdir, OUT_DIR)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "deployment.md"),
             os.path.join(out, "deployment.json")]
    with open(paths[0], "w") as f:
        f.write(markdown(report))
    ft_workdir.write_json(paths[1], report)
    png = os.path.join(out, "deployment.png")
    if plot(report, png):
        paths.append(png)
    results_path = os.path.join(workdir, "results.json")
    results = (ft_workdir.read_json(results_path)
               if os.path.exists(results_path) else {})
    results["deployment"] = report
    ft_workdir.write_json(results_path, results)
    return paths + [results_path]


def deployment(workdir, settings=None, onnx=None, command=None, **options):
    """Exports and measures every trained network of `workdir`, and writes
    the deployment report (see `ft_keras.deployment`).

    Args:
        workdir: A workdir of `python -m ft_keras.train` with a trained
            student; the teacher and the student alone when present.
        settings: Its `ft_keras.config.Settings`; None reads
            `<workdir>/config.gin` (`load_settings`, which clears gin's
            config).
        onnx: Export ONNX files: True, False, or None for "if `tf2onnx` is
            installed".
        command: What made the report, kept in it (the command line);
            None: `"ft_keras.deployment.deployment()"`.
        **options: Override `settings.deployment`
            (`ft_keras.config.DeploymentConfig`) for this report:
            `latency_runs`, `batch`, `threads`, `full_integer` (also export
            and measure full-integer int8 LiteRT files).

    Returns:
        A JSON-serialisable dict: `command`, `date` (UTC), `dataset`,
        `test_images`, `batch`,
        `latency_runs`, `threads`, `machine`, `runtimes` (as
        `measure_export`), `models` (`{role: {"export_dir", "keras_top1",
        "reference", "params", "macs", "size_bytes"}}`) and `rows` (one per
        network and format: `model`, `format`, `params`, `macs`,
        `size_bytes`, `top1`, `top1_change`, `latency_ms` `{"median",
        "p90"}`, `images_per_second`, `speedup_vs_teacher`, ...).

    Raises:
        DeploymentError: No trained student, or no `config.gin`.
        ImportError: A runtime is missing (names `pip install
            'ft_keras[export]'`).
        ft_keras.workdir.WorkdirError: The workdir is in use by a run, or a
            model file is not whole.
        TypeError, ValueError: an unknown or bad option (named).

    Example:

    ```python
    report = deployment("runs/quickstart", latency_runs=20, threads=1)
    [(r["model"], r["format"], r["top1"]) for r in report["rows"]]
    ```
    """
    workdir = os.path.abspath(workdir)
    trained_models(workdir)  # a missing student fails before the settings
    settings = settings or load_settings(workdir)
    if options:
        settings = dataclasses.replace(
            settings,
            deployment=dataclasses.replace(settings.deployment, **options),
        )
    with ft_workdir.WorkdirLock(workdir):
        return measure(workdir, settings, onnx,
                       command or "ft_keras.deployment.deployment()")


def measure(workdir, settings, onnx=None, command=None):
    """`deployment()` in a workdir this process holds (the runner's
    `deployment` stage): exports, measures and writes the report, with
    `settings.deployment`'s options; `command` (what made it) is kept in
    the report."""
    from ft_keras import export as ft_export

    options = settings.deployment
    models = trained_models(workdir)
    dirs = export_models(workdir, models, settings, onnx, options.full_integer)
    measured = {
        role: ft_export.measure_export(
            dirs[role], settings.dataset.name,
            eval_options=settings.dataset.eval_options,
            data_dir=settings.dataset.data_dir,
            latency_runs=options.latency_runs, batch=options.batch,
            threads=options.threads,
        )
        for role in dirs
    }
    keras_top1 = read_keras_top1(workdir)
    names = stages.network_names(settings.distillation.label)
    rows = build_rows(measured, names, keras_top1)
    report = summary(workdir, measured, dirs, keras_top1, rows, command)
    write_report(workdir, report)
    return report
