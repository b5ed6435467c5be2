"""`deployment.md`'s text: a header line naming the machine (CPU, cores),
threads and runtime versions, then one table row per network and format:
params, multiply-accumulates, file size, top-1, top-1 change, batch-1
latency (median, p90) and speed-up over the teacher in the same format."""

from ft_keras import rendering


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
