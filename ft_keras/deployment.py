"""What distillation bought, deployed: every trained network of a workdir,
exported and measured side by side.

    python -m ft_keras.deployment --workdir=runs/quickstart [--latency_runs 50]
        [--threads 4] [--full_integer]

For a finished workdir, each trained network (the teacher, `teacher/
model.keras`; the student of the distillation method, `student/model.keras`;
the student trained alone, `baseline/model.keras`, when that stage ran) is
exported with `ft_keras.export.export_for_dataset` into
`<workdir>/deployment/<role>/` (the student's `<workdir>/export/` of the
export stage is used as it is when it holds every file asked for, and so
is an earlier report's export of an unchanged `model.keras`), and
measured with `ft_keras.export.measure_export` on the full test split, each
file in its own runtime. The files are named `student_*` for every network:
the names `export_student` writes.

The runner does the same as its last stage, `deployment`
(`experiment.stages = [..., 'export', 'deployment']`), with the options of
gin's `deployment.*` (`ft_keras.config.DeploymentConfig`: `latency_runs`,
`batch`, `threads`, `full_integer`); the flags here override the workdir's
for one report.

Written into `<workdir>/deployment/`:

- `deployment.md`: a header line naming the machine (CPU, cores), threads
  and runtime versions, then one table row per network and format: params,
  multiply-accumulates, file size, top-1, top-1 change, batch-1 latency
  (median, p90) and speed-up over the teacher in the same format.
- `deployment.json`: the same as a dict (`deployment()`'s return value),
  also stored under the key `"deployment"` of `<workdir>/results.json`.
- `deployment.png`: top-1 against batch-1 latency (log axis), one colour
  per network and one marker per format (with matplotlib, `pip install
  'ft_keras[report]'`).

The top-1 change of a file is against its network's float Keras accuracy:
the top-1 the evaluate stage measured of its `model.keras` on the same test
split (`results.json`'s `"evaluation"`), so the SavedModel row shows what
exporting cost and the int8 rows what quantization cost. A workdir whose
evaluate stage did not run has no Keras figure; its SavedModel row (float32,
the same weights) is the reference then, and `"reference"` says which.

The dataset, its test options, the int8 calibration images (the export
stage's: `experiment.representative_batches` batches of the training split)
and the method's name come from the workdir's own `config.gin`, unless
`settings` are given.

Example:

```python
from ft_keras import deployment
report = deployment.deployment("runs/quickstart", latency_runs=20)
print(open("runs/quickstart/deployment/deployment.md").read())
```
"""

import argparse
import dataclasses
import datetime
import os
import shlex
import sys

from ft_keras import rendering
from ft_keras import stages
from ft_keras import workdir as ft_workdir

# The trained networks, in the order the table lists them.
ROLES = ("teacher", "student", "baseline")
FORMATS = {
    "saved_model": "SavedModel",
    "tflite_float": "LiteRT float",
    "tflite_int8": "LiteRT int8",
    "tflite_int8_full": "LiteRT int8 (full integer)",
    "onnx": "ONNX",
}
_MARKERS = {"saved_model": "o", "tflite_float": "s", "tflite_int8": "^",
            "tflite_int8_full": "v", "onnx": "D"}
OUT_DIR = "deployment"
NO_PLOT = ("(No plot: deployment.png needs matplotlib, "
           "`pip install 'ft_keras[report]'`.)")


class DeploymentError(ValueError):
    """A workdir without what a deployment report needs (one line)."""


def trained_models(workdir):
    """`{role: path of model.keras}` of the networks `workdir` trained,
    each checked whole against the fingerprint its stage recorded.

    Raises:
        DeploymentError: No trained student (`student/model.keras`).
        ft_keras.workdir.WorkdirError: A model file that is not whole.
    """
    workdir = os.path.abspath(workdir)
    paths = {
        role: os.path.join(workdir, role, "model.keras") for role in ROLES
    }
    present = {
        role: path for role, path in paths.items()
        if os.path.isdir(workdir) and ft_workdir.check_artifact(path)
    }
    if "student" not in present:
        raise DeploymentError(
            f"{workdir} holds no trained student ({paths['student']}): train "
            "it first with python -m ft_keras.train --gin_file=... "
            f"--workdir={workdir}."
        )
    return present


def load_settings(workdir):
    """The `ft_keras.config.Settings` of `<workdir>/config.gin`. Clears
    gin's global config first (`gin.clear_config()`) and leaves the
    workdir's in it."""
    import gin

    from ft_keras import cli
    from ft_keras import config

    path = os.path.join(os.path.abspath(workdir), "config.gin")
    if not os.path.exists(path):
        raise DeploymentError(
            f"{workdir} has no config.gin, so its dataset is unknown: give "
            "the workdir of a run of python -m ft_keras.train."
        )
    gin.clear_config()
    cli.parse_config([path], [])
    return config.from_gin()


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


# Beside each network's files in `<workdir>/deployment/<role>/`: the
# fingerprint of the model.keras they were exported from.
SOURCE_FILE = "source.json"


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


def _keras_top1(workdir):
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


def _summary(workdir, measured, dirs, keras_top1, rows, command):
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


def _count(value):
    if value is None:
        return ""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.2f}{suffix}"
    return str(value)


def _size(value):
    for limit, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= limit:
            return f"{value / limit:.1f} {suffix}"
    return f"{value} B"


def header_line(report):
    """The line above the table: machine, threads, runtimes, what ran."""
    cpu = report["machine"]
    runtimes = ", ".join(
        f"{name} {version}" for name, version in report["runtimes"].items()
        if version
    )
    return (
        f"Measured on {cpu['cpu']} ({cpu['usable_cores']} usable of "
        f"{cpu['cores']} cores); LiteRT and ONNX Runtime on "
        f"{report['threads']} thread{'s' if report['threads'] != 1 else ''}, "
        f"TensorFlow on its own thread pools; {runtimes}. "
        f"{report['dataset']} test split, {report['test_images']} images; "
        f"latency: batch 1, median and p90 of {report['latency_runs']} runs."
    )


def markdown(report):
    """`deployment.md`'s text: the header line, the table (one line per
    row) and what its columns mean."""
    cells = ["Model", "Format", "Params", "MACs", "Size", "Top-1 (%)",
             "Top-1 change (points)", "Latency median (ms)",
             "Latency p90 (ms)", "Speed-up vs teacher"]
    table = []
    for row in report["rows"]:
        change, speedup = row["top1_change"], row["speedup_vs_teacher"]
        table.append([
            row["model"], row["format"], _count(row["params"]),
            _count(row["macs"]), _size(row["size_bytes"]),
            f"{100 * row['top1']:.2f}",
            "" if change is None else f"{round(100 * change, 2) + 0.0:+.2f}",
            f"{row['latency_ms']['median']:.3f}",
            f"{row['latency_ms']['p90']:.3f}",
            "" if speedup is None else f"{speedup:.2f}x",
        ])
    lines = [header_line(report), ""] + rendering.markdown_lines(cells, table)
    lines += ["", _NOTES]
    return "\n".join(lines) + "\n"


_NOTES = (
    "Top-1 change: against the network's float Keras top-1 (the evaluate "
    "stage's, of model.keras), or its SavedModel's where the evaluate stage "
    "did not run. Speed-up: the teacher's batch-1 median latency in the "
    "same format over this row's. MACs: multiply-accumulates per image of "
    "the convolutions and dense layers."
)


def _scatter(axis, report, x_of, xlabel, colours):
    """One panel: top-1 (%) against `x_of(row)` on a log axis."""
    for row in report["rows"]:
        axis.scatter(x_of(row), 100 * row["top1"], s=40,
                     color=colours[row["model"]],
                     marker=_MARKERS[row["file_key"]])
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("top-1 (%)")
    axis.grid(alpha=0.3, which="both")


def plot(report, path):
    """Draws top-1 (%) against batch-1 median latency (ms) and against file
    size (bytes), both on log axes, into the PNG `path`: one colour per
    network, one marker per format. Returns False, writing nothing, without
    matplotlib."""
    if not rendering.can_plot():
        return False
    with rendering.figure(path, 2, (11, 4.5)) as (figure, (by_latency, by_size)):
        from matplotlib.lines import Line2D

        models = list(dict.fromkeys(row["model"] for row in report["rows"]))
        colours = {name: f"C{i}" for i, name in enumerate(models)}
        _scatter(by_latency, report, lambda row: row["latency_ms"]["median"],
                 "batch-1 latency, median (ms, log scale)", colours)
        _scatter(by_size, report, lambda row: row["size_bytes"],
                 "file size (bytes, log scale)", colours)
        formats = list(dict.fromkeys(row["file_key"] for row in report["rows"]))
        handles = [Line2D([], [], color=colours[m], marker="o", ls="", label=m)
                   for m in models] + [
            Line2D([], [], color="grey", marker=_MARKERS[k], ls="",
                   label=FORMATS[k]) for k in formats]
        by_size.legend(handles=handles, fontsize=8)
        figure.suptitle(f"{report['dataset']}: {report['machine']['cpu']}, "
                        f"{report['threads']} threads", fontsize=9)
    return True


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
    the deployment report (see the module docstring).

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
    keras_top1 = _keras_top1(workdir)
    names = stages.network_names(settings.distillation.label)
    rows = build_rows(measured, names, keras_top1)
    report = _summary(workdir, measured, dirs, keras_top1, rows, command)
    write_report(workdir, report)
    return report


def main(argv=None):
    """`python -m ft_keras.deployment`: returns the exit status (2 with one
    line on stderr when the report cannot be made)."""
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.deployment",
        description="Export and measure every trained network of a workdir.",
    )
    parser.add_argument("--workdir", required=True)
    # Unset flags keep the workdir's `deployment.*` (DeploymentConfig).
    parser.add_argument("--latency_runs", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--full_integer", action="store_const", const=True)
    args = parser.parse_args(argv)
    options = {
        name: getattr(args, name)
        for name in ("latency_runs", "batch", "threads", "full_integer")
        if getattr(args, name) is not None
    }
    try:
        trained_models(args.workdir)  # before TensorFlow loads
        from ft_keras import _console

        _console.quiet_python_logging()
        command = shlex.join(["python", "-m", "ft_keras.deployment",
                              *(sys.argv[1:] if argv is None else argv)])
        report = deployment(args.workdir, command=command, **options)
    except (DeploymentError, ImportError, ValueError, FileNotFoundError) as e:
        if os.environ.get("FT_KERAS_TRACEBACK"):
            raise
        print(f"ft_keras: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(markdown(report), end="")
    print(f"[ft_keras] deployment report: "
          f"{os.path.join(os.path.abspath(args.workdir), OUT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
