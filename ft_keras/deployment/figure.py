"""`deployment.png`: top-1 against batch-1 latency and against file size
(log axes), one colour per network and one marker per format (with
matplotlib, `pip install 'ft_keras[report]'`)."""

from ft_keras import rendering
from ft_keras.deployment.rows import FORMATS

_MARKERS = {"saved_model": "o", "tflite_float": "s", "tflite_int8": "^",
            "tflite_int8_full": "v", "onnx": "D"}
NO_PLOT = ("(No plot: deployment.png needs matplotlib, "
           "`pip install 'ft_keras[report]'`.)")


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
