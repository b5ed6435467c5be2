"""How the cost of the Factor Transfer step grows with the work: a curve.

For each teacher:student pair, batch, precision and backend, measures (as
`throughput.py` does, each step kind in a fresh subprocess, timings the
median of `--repeats` blocks of `--steps` steps after warm-up) the images per
second of (a) the student's train step, (b) the frozen teacher's inference
step (batch normalization folded) and (d) the Factor Transfer distillation
step, and splits the cost of (d) beyond (a) + (b):

    overhead ratio   = time(d) / (time(a) + time(b))          (ideal 1.0)
    MAC fraction     = connector MACs / student forward MACs
                       (connector MACs: paraphraser encoder forward on the
                       teacher's tap + translator forward on the student's)
    connectors' time = the connectors' MACs in a step (encoder forward,
                       translator forward and backward: 3x its forward,
                       as a train step counts 3x the forward) at the MAC rate
                       of (a), 3 x student forward MACs x batch / time(a);
                       for a mixed-precision row, the rate of (a) in the
                       float32 row of the same pair and batch, as the
                       connectors compute in float32 under a mixed policy
    framework overhead = time(d) - time(a) - time(b) - connectors' time

so the method's own cost (the connectors' arithmetic) is told apart from what
the framework adds. The kinds alternate in `--rounds` rounds (a, b, d in
fresh processes, round after round, per configuration); a row keeps every
round, and its overhead ratio is the median of the rounds' ratios.

Pairs named `imagenet_*` run at ImageNet shapes (224x224x3, 1000 classes)
with `--imagenet_batches`; the others at CIFAR shapes (32x32x3, 10 classes)
with `--batches`. `--precisions` are Keras dtype policies for the TensorFlow
backend; the JAX backend (`KERAS_BACKEND=jax`, every step jit-compiled, the
teacher's inference as `jax.jit(model.stateless_call)`) runs in float32.

    python benchmarks/cost_curve.py                  # everything: about
                                                     # 3.5 h on 2 CPU cores
    python benchmarks/cost_curve.py --batches 32 256 --imagenet_batches 32 \\
        --steps 2 --repeats 3 --rounds 1             # about 25 min there
    python benchmarks/cost_curve.py --pairs resnet56:resnet20 \\
        --batches 32 128 --precisions float32 --backends tensorflow \\
        --steps 3 --repeats 3 --rounds 1 --name resnet56_quick
    python benchmarks/cost_curve.py --from_json \\
        benchmarks/results/cost_curve/NAME.json     # table and plot again

writes benchmarks/results/cost_curve/NAME.json (every measurement, with the
header `results/record.py` writes: command, date, CPU and its flags, oneDNN
and thread settings, load average, versions, revision) and NAME.png (images
per second of (d) against the batch, one line per pair and precision or
backend, and the overhead ratio), and prints the markdown table. NAME
defaults to the CPU's model. The JSON is rewritten after each row
(`"complete": false` until the last), so a stopped run keeps its rows, and
the same command run again on the same machine measures only the rows
still missing (its wall time adds up).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "results"))

import record  # noqa: E402
import throughput  # noqa: E402

RESULTS = os.path.join(HERE, "results", "cost_curve")
PAIRS = ["resnet56:resnet20", "wrn40_2:wrn16_2", "resnet50:resnet18",
         "imagenet_resnet34:imagenet_resnet18"]
KINDS = ("a", "b", "d")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BACKENDS = ("tensorflow", "jax")
CIFAR, IMAGENET = (32, 10), (224, 1000)  # (image size, classes)


def shape_of(pair):
    """(image size, classes) of a `teacher:student` pair."""
    return IMAGENET if pair.startswith("imagenet_") else CIFAR


def default_steps(pair):
    """Timed steps per repeat: fewer for the large networks."""
    return 3 if "resnet50" in pair or pair.startswith("imagenet_") else 10


def configurations(args):
    """(pair, batch, precision, backend) of every row, in order."""
    rows = []
    for pair in args.pairs:
        batches = (args.imagenet_batches if shape_of(pair) == IMAGENET
                   else args.batches)
        for backend in args.backends:
            precisions = args.precisions if backend == "tensorflow" else [
                "float32"]
            for precision in precisions:
                rows += [(pair, batch, precision, backend)
                         for batch in batches]
    return rows


def child_command(kind, pair, batch, precision, steps, repeats):
    teacher, student = pair.split(":")
    size, classes = shape_of(pair)
    command = [sys.executable, os.path.join(HERE, "throughput.py"),
               "--batch", str(batch), "--repeats", str(repeats),
               "--image_size", str(size), "--classes", str(classes),
               "--_child", f"{kind},{teacher},{student},{steps}"]
    if precision != "float32":
        command += ["--mixed_precision", precision]
    return command


def run_child(command, backend):
    """Runs one measuring subprocess on `backend`; the dict it printed."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} (KERAS_BACKEND={backend}) "
                           f"failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def derived(row):
    """Adds the ratios and the split of time(d) to a row of measurements."""
    t = row["seconds_per_step"]
    macs = row["macs"]
    row["images_per_second"] = {k: row["batch"] / s for k, s in t.items()}
    row["overhead"] = statistics.median(r["overhead"] for r in row["rounds"])
    row["connector_macs"] = macs["encoder"] + macs["translator"]
    row["mac_fraction"] = row["connector_macs"] / macs["student"]
    row["connector_step_macs"] = macs["encoder"] + 3 * macs["translator"]
    row["student_macs_per_second"] = (3 * macs["student"] * row["batch"]
                                      / t["a"])
    return row


def split(rows):
    """Splits each row's time(d) - time(a) - time(b) into the connectors'
    arithmetic (their MACs in a step at a student step's MAC rate) and the
    rest, framework overhead. The connectors compute in float32 under a
    mixed policy (`ft_keras.layers`), so a mixed-precision row takes the
    rate of the float32 row of its pair, batch and backend where the run
    has one (`connector_rate` says which), else its own student's."""
    float32 = {(r["pair"], r["batch"], r["backend"]): r for r in rows
               if r["precision"] == "float32"}
    for row in rows:
        rate_row = float32.get((row["pair"], row["batch"], row["backend"]),
                               row)
        row["connector_rate"] = ("own student step" if rate_row is row
                                 else "float32 student step")
        t = row["seconds_per_step"]
        row["connector_seconds"] = (row["connector_step_macs"] * row["batch"]
                                    / rate_row["student_macs_per_second"])
        row["framework_overhead_seconds"] = (t["d"] - t["a"] - t["b"]
                                             - row["connector_seconds"])
    return rows


def measure_row(config, args, macs):
    """Every round of one (pair, batch, precision, backend); a dict."""
    pair, batch, precision, backend = config
    steps = args.steps or default_steps(pair)
    rounds, rss = [], {k: 0.0 for k in KINDS}
    for _ in range(args.rounds):
        seconds = {}
        for kind in KINDS:
            result = args.run_child(child_command(
                kind, pair, batch, precision, steps, args.repeats), backend)
            seconds[kind] = result["seconds_per_step"]
            rss[kind] = max(rss[kind], result["peak_rss_mib"])
        seconds["overhead"] = seconds["d"] / (seconds["a"] + seconds["b"])
        rounds.append(seconds)
    teacher, student = pair.split(":")
    size, classes = shape_of(pair)
    return derived({
        "pair": pair, "teacher": teacher, "student": student,
        "image_size": size, "classes": classes, "batch": batch,
        "precision": precision, "backend": backend, "steps": steps,
        "repeats": args.repeats, "rounds": rounds,
        "seconds_per_step": {k: statistics.median(r[k] for r in rounds)
                             for k in KINDS},
        "peak_rss_mib": rss, "macs": macs,
    })


def table(rows):
    """The markdown table of the rows."""
    lines = [
        "| pair | input | batch | precision, backend | (a) img/s | "
        "(b) img/s | (d) img/s | overhead d/(a+b) | connector MACs / "
        "student fwd | connectors' time (ms) | framework overhead (ms, "
        "% of d) |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ips, t = r["images_per_second"], r["seconds_per_step"]
        lines.append(
            f"| {r['teacher']} -> {r['student']} | {r['image_size']}x"
            f"{r['image_size']}, {r['classes']} classes | {r['batch']} | "
            f"{r['precision']}, {r['backend']} | {ips['a']:.1f} | "
            f"{ips['b']:.1f} | {ips['d']:.1f} | {r['overhead']:.3f} | "
            f"{r['mac_fraction']:.3f} | {1000 * r['connector_seconds']:.1f} | "
            f"{1000 * r['framework_overhead_seconds']:.1f} "
            f"({100 * r['framework_overhead_seconds'] / t['d']:.0f}%) |")
    return "\n".join(lines)


def plot(rows, path):
    """(d)'s images/second and the overhead ratio against the batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {}
    for r in rows:
        lines.setdefault((r["pair"], r["precision"], r["backend"]), []).append(r)
    # A colour per pair, a line style and marker per precision and backend.
    pairs = list(dict.fromkeys(key[0] for key in lines))
    kinds = list(dict.fromkeys(key[1:] for key in lines))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    figure, (speed, ratio) = plt.subplots(1, 2, figsize=(13, 5))
    for (pair, precision, backend), points in lines.items():
        points = sorted(points, key=lambda r: r["batch"])
        batches = [r["batch"] for r in points]
        linestyle, marker = styles[kinds.index((precision, backend)) % 4]
        style = dict(color=f"C{pairs.index(pair) % 10}", linestyle=linestyle,
                     marker=marker, label=f"{pair.replace(':', ' -> ')}, "
                                          f"{precision}, {backend}")
        speed.plot(batches, [r["images_per_second"]["d"] for r in points],
                   **style)
        ratio.plot(batches, [r["overhead"] for r in points], **style)
    batches = sorted({r["batch"] for r in rows})
    for axes in (speed, ratio):
        axes.set_xscale("log", base=2)
        axes.set_xticks(batches, [str(b) for b in batches])
        axes.minorticks_off()
        axes.set_xlabel("batch")
        axes.grid(True, alpha=0.3)
    speed.set_yscale("log")
    speed.set_ylabel("images/s of the FT distillation step (d)")
    ratio.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ratio.set_ylabel("overhead ratio time(d) / (time(a) + time(b))")
    ratio.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def header(command, start, load_before):
    """The header `results/record.py` writes, as a dict."""
    load_after = os.getloadavg()
    return {
        "command": command,
        "wall time": f"{time.monotonic() - start:.1f} s",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        "machine": record.machine(),
        **record.cpu_lines(),
        "load average (1 min) before, after": f"{load_before[0]:.2f}, "
                                               f"{load_after[0]:.2f}",
        "versions": record.versions() + jax_version(),
        "revision": record.revision(),
    }


def jax_version():
    """", jax X" where JAX is installed (record.py does not list it)."""
    try:
        return f", jax {importlib.metadata.version('jax')}"
    except importlib.metadata.PackageNotFoundError:
        return ""


def default_name():
    """The CPU's model, as a file name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", record.cpu()[0]).strip("_").lower()


def measure_all(args, path):
    """Measures every configuration; rewrites `path` after each row (a run
    stopped midway keeps its rows, and the same command continues it:
    `kept_rows`) and returns the result dict."""
    start, load = time.monotonic(), os.getloadavg()
    configs = configurations(args)
    macs = {}
    settings = {key: getattr(args, key) for key in (
        "pairs", "batches", "imagenet_batches", "precisions", "backends",
        "steps", "repeats", "rounds")}
    command = shlex.join(["python", "benchmarks/cost_curve.py"] + args.argv)
    rows, earlier_seconds = kept_rows(path, settings, configs)
    result = {"settings": settings, "rows": rows}
    print(f"{len(configs)} configurations x {args.rounds} rounds x "
          f"{len(KINDS)} kinds", flush=True)
    if rows:
        print(f"continuing the unfinished run in {path}: {len(rows)} of "
              f"{len(configs)} rows kept", flush=True)
    for config in configs[len(rows):]:
        pair = config[0]
        if pair not in macs:
            macs[pair] = throughput.connector_mac_counts(
                *pair.split(":"), *shape_of(pair))
        result["rows"].append(measure_row(config, args, macs[pair]))
        split(result["rows"])
        print(table(result["rows"][-1:]).splitlines()[-1], flush=True)
        result["header"] = header(command, start - earlier_seconds, load)
        result["complete"] = len(result["rows"]) == len(configs)
        with open(path + ".tmp", "w") as f:  # a kill mid-write keeps the
            json.dump(result, f, indent=2)   # last complete file
            f.write("\n")
        os.replace(path + ".tmp", path)
    return result


def kept_rows(path, settings, configs):
    """`(rows, wall seconds)` of an unfinished run at `path` with these
    settings, on this machine: what a rerun keeps; `([], 0.0)` otherwise
    (a finished run, other settings or another machine start afresh)."""
    try:
        with open(path) as f:
            earlier = json.load(f)
        rows, old = earlier["rows"], earlier["header"]
    except (OSError, ValueError, KeyError):
        return [], 0.0
    done = [(r["pair"], r["batch"], r["precision"], r["backend"]) for r in rows]
    if (earlier.get("complete") or earlier.get("settings") != settings
            or done != [tuple(c) for c in configs[:len(done)]]
            or old.get("machine") != record.machine()
            or old.get("cpu flags") != record.cpu_lines()["cpu flags"]):
        return [], 0.0
    return rows, float(old["wall time"].split()[0])


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=PAIRS,
                        help="teacher:student pairs; imagenet_* networks run "
                             "at 224x224, 1000 classes")
    parser.add_argument("--batches", nargs="+", type=int,
                        default=[32, 64, 128, 256], help="CIFAR-shape batches")
    parser.add_argument("--imagenet_batches", nargs="+", type=int,
                        default=[32, 64], help="ImageNet-shape batches")
    parser.add_argument("--precisions", nargs="+",
                        default=["float32", "mixed_bfloat16"],
                        help=f"TensorFlow's: {', '.join(PRECISIONS)}")
    parser.add_argument("--backends", nargs="+",
                        default=["tensorflow", "jax"])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per repeat (default 10; 3 for "
                             "ResNet-50 and ImageNet shapes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default=None,
                        help="result file name (default: the CPU's model)")
    parser.add_argument("--results_dir", default=RESULTS)
    parser.add_argument("--from_json", default=None,
                        help="a result file: print its table and plot it "
                             "again, measuring nothing")
    args = parser.parse_args(argv)
    validate(parser, args)
    args.argv = list(argv)
    return args


def validate(parser, args):
    """One clear line per bad flag (`parser.error` exits with status 2)."""
    for pair in args.pairs:
        names = pair.split(":")
        if len(names) != 2 or not all(names):
            parser.error(f"--pairs: {pair!r} is not teacher:student, e.g. "
                         f"resnet56:resnet20.")
        unknown = [n for n in names if n not in throughput.TAPS]
        if unknown:
            parser.error(f"--pairs: no tap known for {unknown[0]!r} in "
                         f"{pair!r}; use one of {', '.join(throughput.TAPS)} "
                         f"(or add it to TAPS in throughput.py).")
        if len({n.startswith("imagenet_") for n in names}) > 1:
            parser.error(f"--pairs: {pair!r} mixes ImageNet and CIFAR "
                         f"networks; pair imagenet_* with imagenet_*.")
    for flag in ("batches", "imagenet_batches"):
        for batch in getattr(args, flag):
            if batch < 2 or batch % 2:
                parser.error(f"--{flag} must be even and at least 2, got "
                             f"{batch}.")
    for flag in ("steps", "repeats", "rounds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be at least 1, got {value}.")
    for flag, allowed in (("precisions", PRECISIONS), ("backends", BACKENDS)):
        for value in getattr(args, flag):
            if value not in allowed:
                parser.error(f"--{flag}: unknown {value!r}; use "
                             f"{' or '.join(allowed)}.")
    if args.name is not None and not re.fullmatch(r"[\w.-]+", args.name):
        parser.error(f"--name {args.name!r} is not a file name; use letters, "
                     f"digits, '_', '-' and '.'.")
    if args.from_json and not os.path.isfile(args.from_json):
        parser.error(f"--from_json: no file {args.from_json!r}; give a result "
                     f"file, e.g. {RESULTS}/NAME.json.")


def main(argv=None, run=run_child):
    """`run(command, backend)` runs a measuring child and returns its dict."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        path = os.path.splitext(args.from_json)[0]
        split(result["rows"])
    else:
        args.run_child = run
        os.makedirs(args.results_dir, exist_ok=True)
        path = os.path.join(args.results_dir, args.name or default_name())
        result = measure_all(args, path + ".json")
    print("\n" + table(result["rows"]))
    plot(result["rows"], path + ".png")
    print(f"\n{path}.json, {path}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
