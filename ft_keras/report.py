"""A report of finished runs: one Markdown table and PNG plots.

    python -m ft_keras.report runs/quickstart [runs/other ...] --out report/

For each workdir: the config (dataset, teacher -> student, terms), the
test top-1 / top-5 of every network it evaluated, and the wall time and
images per second of the stage that trained it (an FT student's
paraphraser stage has a column of its own), in `report.md`, with notes
under the table for cells it leaves out; and the PNG plots
`<run>_<stage>.png` (training loss and accuracy per epoch, and test
accuracy where the config validated every epoch), plus `students.png`
(the test top-1 per epoch of every student and student trained alone,
side by side) when any run validated. Everything is read from the files
the runner leaves (`results.json`, `operative_config.gin`, each stage's
`log.csv`), so a report is made at any time, also of a run in progress.
`benchmarks/reproduce.py` draws its figures with `plot_curves`.

Example:

```python
from ft_keras import report
runs = [report.load_run("runs/quickstart")]
print(report.markdown_table(runs))
report.write_report(runs, "report/")
```
"""

import argparse
import ast
import csv
import math
import os
import re
import sys

from ft_keras import rendering
from ft_keras import stages
from ft_keras import term_configs
from ft_keras import workdir as ft_workdir

# The training stages, each with the evaluation role of the network it
# trains ("paraphraser" trains none).
STAGES = stages.TRAINING
_BINDING = re.compile(r"^([\w/.]+) = (.+)$")
NO_PLOTS = "(No plots: they need matplotlib, `pip install 'ft_keras[report]'`.)"


class ReportError(ValueError):
    """A directory that holds no run of the experiment runner."""


def read_bindings(path):
    """`{"scope/name.field": value}` of a gin file the runner wrote
    (`operative_config.gin`); values that are not literals stay strings."""
    bindings = {}
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    # A value may continue on the next lines (long lists).
    for block in re.split(r"\n(?=\S)", text):
        match = _BINDING.match(" ".join(block.split()))
        if not match:
            continue
        name, value = match.groups()
        try:
            bindings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            bindings[name] = value
    return bindings


def read_log(path):
    """`{column: [value per epoch]}` of a stage's `log.csv` (a resumed stage
    may log an epoch again: the last row of each epoch counts); "NA" and
    empty cells are None."""
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    columns = {}
    for epoch in sorted(rows):
        for name, value in rows[epoch].items():
            if name == "epoch":
                continue
            columns.setdefault(name, []).append(
                None if value in ("", "NA", None) else float(value)
            )
    return columns


def load_run(workdir):
    """What a report shows of one workdir.

    Returns:
        A dict: `name` (the directory's name), `workdir`, `dataset`,
        `teacher`, `student`, `label`, `evaluation` (`{role: {"top1",
        "top5"}}`), `stages` (`{stage: stage.json's dict}`) and `logs`
        (`{stage: read_log(...)}`).

    Raises:
        ReportError: If `workdir` has neither `results.json` nor a stage.
    """
    workdir = os.path.abspath(workdir)
    results_path = os.path.join(workdir, "results.json")
    results = ft_workdir.read_json(results_path) if os.path.exists(results_path) else {}
    logs = {
        stage: read_log(os.path.join(workdir, stage, "log.csv"))
        for stage in STAGES
        if os.path.exists(os.path.join(workdir, stage, "log.csv"))
    }
    if not results and not logs:
        raise ReportError(
            f"{workdir} holds no run of ft_keras.train (no results.json and "
            "no stage's log.csv): give the --workdir of a run."
        )
    config_path = os.path.join(workdir, "operative_config.gin")
    bindings = read_bindings(config_path) if os.path.exists(config_path) else {}
    stages = dict(results.get("stages", {}))
    for stage in STAGES:
        stage_json = os.path.join(workdir, stage, "stage.json")
        if stage not in stages and os.path.exists(stage_json):
            stages[stage] = ft_workdir.read_json(stage_json)
    return {
        "name": os.path.basename(workdir.rstrip(os.sep)),
        "workdir": workdir,
        "dataset": bindings.get("dataset.name", "?"),
        "teacher": bindings.get("teacher/network.name", "?"),
        "student": bindings.get("student/network.name", "?"),
        "label": _label(bindings),
        "evaluation": results.get("evaluation", {}),
        "stages": stages,
        "logs": logs,
    }


def _label(bindings):
    """The distilled student's label: `distillation.label`, else its
    terms' (`ft_keras.term_configs.label`); a workdir written when
    `distillation.method` named the method, that name in capitals."""
    label = bindings.get("distillation.label")
    if isinstance(label, str):
        return label
    if isinstance(bindings.get("distillation.method"), str):
        return bindings["distillation.method"].upper()
    return term_configs.label(bindings.get("distillation.terms"))


def role_name(run, role):
    """How a table names a run's network: teacher, student alone, or the
    student of its method (e.g. "FT student")."""
    return stages.network_names(run["label"])[role]


TOP5_NOTE = (
    "top-5 is not computed for datasets of 5 classes or fewer "
    "(it would always be 100%)."
)
OWN_STAGE_NOTE = (
    "own stage: the stage that trained the network. An FT student's is the "
    "student stage alone; its paraphraser stage, trained before it, is timed "
    "in the paraphraser column, and the teacher's stage in the teacher's row."
)


def _percent(value):
    return "" if value is None else f"{100 * value:.2f}"


def stage_timing(stage):
    """`(wall time, images/s)` cells of one stage's `stage.json` dict.

    The wall time is of the stage's last `fit` call: for a resumed stage,
    the cell says how many of its epochs that call ran. A stage that
    recorded artifacts but no timing (a teacher loaded from
    `experiment.teacher_checkpoint`) was not trained in the run.
    """
    if not stage:
        return "not recorded", "-"
    wall = stage.get("wall_time_s")
    if wall is None:
        return "loaded, not trained here", "-"
    wall_cell = f"{wall:.0f}"
    ran, epochs = stage.get("epochs_run"), stage.get("epochs")
    if ran is not None and epochs is not None and ran < epochs:
        wall_cell += f" (last {ran} of {epochs} epochs: resumed)"
    speed = stage.get("images_per_second")
    return wall_cell, "-" if speed is None else f"{speed:,.0f}"


def _rows(runs):
    """`(run, role)` of every network a table shows, in table order."""
    return [
        (run, role)
        for run in runs
        for role in ("teacher", "baseline", "student")
        if role in run["evaluation"] or role in run["stages"]
    ]


def _has_paraphraser(run, role):
    return role == "student" and (
        "paraphraser" in run["stages"]
    )


def _top5_cell(scores):
    if not scores:
        return "not evaluated"
    return "n/a" if scores.get("top5") is None else _percent(scores["top5"])


def table_notes(runs):
    """The lines under `markdown_table`'s table that explain its cells: why
    top-5 is hidden or "n/a", and what an FT student's times cover."""
    scores = [run["evaluation"].get(role) for run, role in _rows(runs)]
    scores = [s for s in scores if s]
    notes = []
    if scores and all(s.get("top5") is None for s in scores):
        notes.append(f"No test top-5 column: {TOP5_NOTE}")
    elif any(s.get("top5") is None for s in scores):
        notes.append(f"n/a in test top-5 (%): {TOP5_NOTE}")
    if any(_has_paraphraser(run, role) for run, role in _rows(runs)):
        notes.append(OWN_STAGE_NOTE)
    return notes


def markdown_table(runs):
    """One row per evaluated network of each run, and the notes under it.

    Each row has the run's config, the network's test top-1 and top-5 (%),
    and the wall time and images/second of its own stage, the stage that
    trained it. An FT student's own stage is the student stage alone: its
    paraphraser stage's wall time has a column of its own (shown when any
    run has one). The top-5 column is left out when no network has a top-5
    (datasets of 5 classes or fewer); "n/a" marks one without, when others
    have it. `table_notes` lines, after a blank line, say so.
    """
    rows = _rows(runs)
    top5 = any(
        run["evaluation"].get(role, {}).get("top5") is not None
        for run, role in rows
    )
    paraphraser = any(_has_paraphraser(run, role) for run, role in rows)
    header = ["run", "dataset", "teacher -> student", "network", "test top-1 (%)"]
    header += ["test top-5 (%)"] if top5 else []
    header += ["own stage wall time (s)", "own stage images/s"]
    header += ["paraphraser stage wall time (s)"] if paraphraser else []
    table = []
    for run, role in rows:
        scores = run["evaluation"].get(role, {})
        cells = [
            run["name"],
            run["dataset"],
            f"{run['teacher']} -> {run['student']}",
            role_name(run, role),
            _percent(scores.get("top1")) or "not evaluated",
        ]
        cells += [_top5_cell(scores)] if top5 else []
        cells += stage_timing(run["stages"].get(role))
        if paraphraser:
            cells.append(
                stage_timing(run["stages"].get("paraphraser"))[0]
                if _has_paraphraser(run, role)
                else "-"
            )
        table.append(cells)
    lines = rendering.markdown_lines(header, table)
    notes = table_notes(runs)
    return "\n".join(lines + ([""] + notes if notes else []))


def plot_curves(series, path, title, ylabel, ylim=None):
    """Draws `{label: [value per epoch]}` (None: not measured that epoch)
    as lines over epochs 1..N into the PNG `path`; returns False, writing
    nothing, when no series has a value."""
    series = {
        label: values
        for label, values in series.items()
        if any(v is not None for v in values)
    }
    if not series:
        return False
    with rendering.figure(path, size=(7, 4.5)) as (_, axis):
        from matplotlib.ticker import MaxNLocator

        for label, values in series.items():
            _epoch_line(axis, values, label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if ylim is not None:
            axis.set_ylim(*ylim)
    return True


def _epoch_line(axis, values, label):
    """`values` (None: not measured that epoch) as a line over epochs
    1..N."""
    points = [(e + 1, v) for e, v in enumerate(values) if v is not None]
    axis.plot(*zip(*points), marker="o", markersize=3, label=label)


def accuracy_ylim(series):
    """A y range for accuracies (%) that shows where the curves are."""
    low = min(v for values in series.values() for v in values if v is not None)
    return max(0.0, 5 * math.floor(low / 5) - 1), 100


def _scaled(values):
    return [None if v is None else 100 * v for v in values]


def plot_stage(run, stage, path):
    """A stage's training loss (left) and accuracy (right, train and test
    top-1 in %) per epoch; False if its log has nothing to draw."""
    log = run["logs"].get(stage)
    if not log or not log.get("loss"):
        return False
    accuracy = {
        name: _scaled(log[column])
        for name, column in (("train top-1", "top1"), ("test top-1", "val_top1"))
        if column in log and any(v is not None for v in log[column])
    }
    panels = 2 if accuracy else 1
    with rendering.figure(path, panels, (5 * panels, 3.6)) as (figure, axes):
        from matplotlib.ticker import MaxNLocator

        axes = axes if panels > 1 else [axes]
        epochs = range(1, len(log["loss"]) + 1)
        losses = [c for c in log if c.endswith("loss") and not c.startswith("val_")]
        for column in losses:
            axes[0].plot(epochs, log[column], marker="o", markersize=3, label=column)
        axes[0].set_ylabel("training loss")
        axes[0].legend(fontsize=8)
        for name, values in accuracy.items():
            _epoch_line(axes[1], values, name)
        if accuracy:
            axes[1].set_ylabel("top-1 (%)")
            axes[1].legend(fontsize=8)
        for axis in axes:
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
        figure.suptitle(
            f"{run['name']}: {stage} ({run['teacher']} -> "
            f"{run['student']}, {run['dataset']})",
            fontsize=9,
        )
    return True


def student_curves(runs):
    """`{label: [test top-1 % per epoch]}` of every student and student
    trained alone that validated every epoch."""
    series = {}
    for run in runs:
        for role in ("baseline", "student"):
            log = run["logs"].get(role, {})
            values = _scaled(log.get("val_top1", []))
            if any(v is not None for v in values):
                series[f"{run['name']}: {role_name(run, role)}"] = values
    return series


def write_report(runs, out_dir):
    """Writes `report.md` and the PNG plots of `runs` into `out_dir`;
    returns the paths written. Without matplotlib, the table only, and a
    line that says how to get the plots."""
    table_runs = runs
    os.makedirs(out_dir, exist_ok=True)
    written = []
    figures = []
    if not rendering.can_plot():
        runs = []  # the table only
        figures.append((NO_PLOTS, None))
    for run in runs:
        for stage in STAGES:
            path = os.path.join(out_dir, f"{run['name']}_{stage}.png")
            if plot_stage(run, stage, path):
                written.append(path)
                figures.append((f"{run['name']}: {stage}", path))
    series = student_curves(runs)
    students = os.path.join(out_dir, "students.png")
    if series and plot_curves(
        series,
        students,
        "students: test top-1 per epoch",
        "test top-1 (%)",
        accuracy_ylim(series),
    ):
        written.append(students)
        figures.insert(0, ("students", students))
    lines = ["# ft_keras report", "", markdown_table(table_runs), ""]
    lines += [
        f"![{title}]({os.path.basename(path)})" if path else title
        for title, path in figures
    ]
    report = os.path.join(out_dir, "report.md")
    with open(report, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [report] + written


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.report",
        description="A Markdown table and PNG plots of finished runs.",
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    parser.add_argument(
        "--out", default="report", help="directory for report.md and the PNGs"
    )
    args = parser.parse_args(argv)
    try:
        runs = [load_run(w) for w in args.workdirs]
    except ReportError as e:
        print(f"ft_keras: error: {e}", file=sys.stderr)
        return 2
    names = [run["name"] for run in runs]
    for run in runs:
        if names.count(run["name"]) > 1:  # e.g. seed0/FT and seed1/FT
            run["name"] = os.path.relpath(run["workdir"]).replace(os.sep, "_")
    paths = write_report(runs, args.out)
    print(markdown_table(runs))
    if len(paths) == 1 and not rendering.can_plot():
        print(f"[ft_keras] {NO_PLOTS}")
    print(f"[ft_keras] report: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
