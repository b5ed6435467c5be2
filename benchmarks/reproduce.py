"""A measured results table: teacher, student alone and every method, over seeds.

For each seed, trains the teacher once (or, with `--shared_teacher`, one
teacher for all seeds; with `--teacher FILE`, none: every student distils
from that trained `.keras` teacher), then the student every way from it
(alone, Hinton KD, attention transfer, Factor Transfer, FT+KD, DKD, DIST,
FitNets, ReviewKD, CRD; `--methods` picks rows),
each through the experiment runner in its own workdir
(`<workdir>/seed<S>/<method>/`), and prints a markdown table of test top-1
(mean and standard deviation over seeds) and training wall time per
method, with the CPU each run trained on.

It resumes: a finished run is reused (its bindings are kept in
`reproduce.json` beside its `results.json`), and an interrupted one resumes
from its last epoch checkpoint, so kill it and start the same command again
at any time. `--report_only` writes the table from the runs finished so far
without training anything.

Outputs in `--results_dir` (default `--workdir`): with `--shared_teacher`,
`shared_teacher.keras` (the teacher's weights, restored into a new workdir
so the table continues elsewhere); `summary.json` (every run's top-1, wall time and
per-epoch test accuracy, the table's figures, the command), `table.md`, and,
when the config validates every epoch (`experiment.validate = True`),
`curves.png` (per-epoch test top-1 of each method, mean over seeds).
`--readme FILE` also replaces the text between
`<!-- reproduce:NAME -->` and `<!-- /reproduce:NAME -->` in FILE (NAME:
`--name`) with the table, so a README quotes the command's output.

    python benchmarks/reproduce.py --gin_file=gin/quickstart.gin --seeds 0 1 2 3 4
    python benchmarks/reproduce.py --gin_file=gin/fashion_mnist/wrn16_2_wrn10_1.gin \\
        --seeds 0 1 2 --shared_teacher --workdir runs/fmnist \\
        --results_dir benchmarks/results/fashion_mnist --readme README.md \\
        --name fashion_mnist
    python benchmarks/reproduce.py --gin_file=gin/quickstart.gin --methods AT \\
        --gin_bindings="attention_transfer.weight = 62.5" --workdir runs/reproduce_at
    # The Fashion-MNIST students in bfloat16, from the float32 table's teacher:
    python benchmarks/reproduce.py --gin_file=gin/fashion_mnist/wrn16_2_wrn10_1.gin \\
        --gin_bindings="experiment.precision = 'mixed_bfloat16'" --seeds 0 \\
        --teacher benchmarks/results/fashion_mnist/shared_teacher.keras \\
        --workdir runs/fmnist_bf16 --results_dir benchmarks/results/fashion_mnist_bf16

The table's last row is the total training wall time of the runs in it
(with `--teacher`, the given teacher's training is not among them).
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# method -> (gin bindings, stages whose wall time counts, evaluated role)
METHODS = {
    "teacher": ([], ["teacher"], "teacher"),
    "student alone": ([], ["baseline"], "baseline"),
    "KD": (["include 'gin/methods/kd.gin'"], ["student"], "student"),
    "AT": (["include 'gin/methods/at.gin'"], ["student"], "student"),
    "FT": (["include 'gin/methods/ft.gin'"], ["paraphraser", "student"], "student"),
    "FT+KD": (["include 'gin/methods/ft_kd.gin'"], ["paraphraser", "student"],
              "student"),
    "DKD": (["include 'gin/methods/dkd.gin'"], ["student"], "student"),
    "DIST": (["include 'gin/methods/dist.gin'"], ["student"], "student"),
    "FitNets": (["include 'gin/methods/fitnets.gin'"], ["student"], "student"),
    "ReviewKD": (["include 'gin/methods/review_kd.gin'"], ["student"],
                 "student"),
    "CRD": (["include 'gin/methods/crd.gin'"], ["student"], "student"),
}
# Methods whose term warms up, by its gin configurable. Each reference warms
# up over 20 of its 240 epochs (DKD: mdistiller's `CFG.DKD.WARMUP`; ReviewKD:
# `CFG.REVIEWKD.WARMUP_EPOCHS`; `CFG.SOLVER.EPOCHS` 240); a table whose
# recipe trains the student for other epochs keeps that fraction of its run
# (at least one epoch), as it shortens every method's schedule alike.
WARMUP = {"DKD": "decoupled_kd", "ReviewKD": "review_kd"}
REFERENCE_WARMUP_FRACTION = 20 / 240
# The stage whose log.csv holds a method's per-epoch test accuracy.
_CURVE_STAGE = {"teacher": "teacher", "baseline": "baseline",
                "student": "student"}


def stages(method):
    """The runner's stages of a method: a distilled student also runs the
    teacher stage, which loads the seed's trained teacher."""
    _, timed, role = METHODS[method]
    return (["teacher"] if role == "student" else []) + timed + ["evaluate"]


def run_dir(workdir, seed, method):
    """`seed=None`: the teacher shared by every seed (`--shared_teacher`)."""
    if seed is None:
        return os.path.join(workdir, "shared_teacher")
    return os.path.join(workdir, f"seed{seed}", method.replace(" ", "_")
                        .replace("+", "_"))


def teacher_seed(args, seed):
    """The teacher a run of `seed` distils from: the seed of its own, None
    for the shared teacher, or the `--teacher` file."""
    if args.teacher:
        return os.path.abspath(args.teacher)
    return None if args.shared_teacher else seed


def given_teacher(results, directory):
    """The teacher row of a `--teacher` table: the given teacher's test
    top-1 as a distilled student's run evaluated it (the student alone's
    run does not load the teacher); it was not trained here."""
    return {"method": "teacher", "seed": None,
            "top1": 100 * results["evaluation"]["teacher"]["top1"],
            "wall_time_s": None, "curve": [], "workdir": directory}


def teacher_model(workdir, teacher):
    """The trained teacher a student distils from: `teacher` is a `.keras`
    file (`--teacher`), the seed of the teacher, or None for the shared one."""
    if isinstance(teacher, str):
        return teacher
    return os.path.join(run_dir(workdir, teacher, "teacher"), "teacher",
                        "model.keras")


def warmup_epochs(student_epochs):
    """The warm-up of a table whose students train `student_epochs`: the
    references' fraction of the run, at least one epoch."""
    return max(1, round(student_epochs * REFERENCE_WARMUP_FRACTION))


def student_epochs(gin_files, extra):
    """The student stage's epochs in the table's config."""
    import gin

    from ft_keras import cli
    from ft_keras import config

    cli.parse_config(gin_files, extra)
    try:
        return config.from_gin().training["student"].epochs
    finally:
        gin.clear_config()


def bindings_of(method, seed, workdir, extra, teacher=None, epochs=None):
    """Runner bindings of one run; `teacher`: see `teacher_model`; `epochs`:
    the student's (`student_epochs`), for a method in `WARMUP`."""
    bindings = list(extra) + [f"experiment.seed = {seed}"]
    bindings += METHODS[method][0] + [f"experiment.stages = {stages(method)}"]
    if method in WARMUP:
        bindings.append(f"{WARMUP[method]}.warmup_epochs = "
                        f"{warmup_epochs(epochs)}")
    if method != "teacher":
        bindings.append("experiment.teacher_checkpoint = "
                        f"'{teacher_model(workdir, teacher)}'")
    return bindings


def finished(directory, gin_files, bindings):
    """The results of a run finished with these settings, or None."""
    try:
        with open(os.path.join(directory, "reproduce.json")) as f:
            done = json.load(f)
        with open(os.path.join(directory, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    if done != {"gin_files": list(gin_files), "bindings": list(bindings)}:
        return None
    return results


def train(gin_files, bindings, directory):
    """Runs (or resumes) one run of the experiment runner; returns its
    results. Its output goes to `<directory>/train.log`."""
    results = finished(directory, gin_files, bindings)
    if results is not None:
        return results
    command = [sys.executable, "-m", "ft_keras.train", f"--workdir={directory}"]
    command += [f"--gin_file={f}" for f in gin_files]
    command += [f"--gin_bindings={b}" for b in bindings]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    os.makedirs(directory, exist_ok=True)
    log = os.path.join(directory, "train.log")
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        run = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
        try:
            code = run.wait()
        except BaseException:
            # This driver is being stopped (SIGTERM, Ctrl-C): stop the run
            # with it. Left running, it would finish beside whatever runs
            # next, and the next invocation would record it as a finished
            # run with a wall time measured under contention. It resumes
            # from its last checkpoint instead.
            run.terminate()
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
            raise
    if code:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"failed ({code}): {shlex.join(command)}\n{tail}")
    with open(os.path.join(directory, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(directory, "reproduce.json"), "w") as f:
        json.dump({"gin_files": list(gin_files), "bindings": list(bindings)},
                  f, indent=2)
    return results


def keep_teacher(directory, out):
    """Saves the shared teacher (weights, no optimizer state) beside the
    summary, so that a table interrupted on one machine finishes on another
    without training it again."""
    import keras

    import ft_keras  # noqa: F401  (registers its layers for loading)

    model = keras.models.load_model(
        os.path.join(directory, "teacher", "model.keras"), compile=False)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "shared_teacher.keras")
    model.save(path + ".tmp.keras")
    os.replace(path + ".tmp.keras", path)


def curve(directory, role):
    """Per-epoch test top-1 (%) of a run, from its stage's log.csv; empty if
    the config did not validate every epoch."""
    from ft_keras import report

    path = os.path.join(directory, _CURVE_STAGE[role], "log.csv")
    if not os.path.exists(path):
        return []
    values = report.read_log(path).get("val_top1", [])
    return [100 * v for v in values if v is not None]


def cpu_kind():
    """The CPU a run trained on, as the table names it: its model and the
    widest instruction set its kernels use (AMX, AVX512-BF16, AVX-512,
    AVX2), and its usable cores."""
    from ft_keras import precision

    info = precision.cpu_info()
    flags = info.get("flags", {})
    widest = next((name for flag, name in [
        ("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"),
        ("avx512f", "AVX-512"), ("avx2", "AVX2")] if flags.get(flag)), None)
    cores = len(os.sched_getaffinity(0))
    return f"{info.get('model') or 'unknown CPU'}" + (
        f", {widest}" if widest else "") + f", {cores} cores"


def record(method, seed, directory, results):
    """One finished run's row entry, with the CPU it trained on (this
    process runs where the run ran)."""
    _, timed, role = METHODS[method]
    return {
        "method": method,
        "seed": seed,
        "top1": 100 * results["evaluation"][role]["top1"],
        "wall_time_s": sum(results["stages"][s]["wall_time_s"] for s in timed),
        "curve": curve(directory, role),
        "workdir": directory,
        "cpu": cpu_kind(),
    }


def mean_std(values):
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std


def table(summary):
    lines = [
        "| method | test top-1 (%), mean ± std | seeds | training wall time "
        "per run (s), mean | CPU |",
        "|---|---|---|---|---|",
    ]
    for method, row in summary["methods"].items():
        if not row["runs"]:
            lines.append(f"| {method} | not yet measured | 0 | | |")
            continue
        # Runs recorded before the CPU was: "not recorded".
        cpus = "; ".join(sorted({r.get("cpu", "not recorded")
                                 for r in row["runs"]}))
        # One run has no spread to show.
        spread = (f" ± {row['top1_std']:.2f}" if len(row["runs"]) > 1
                  else "")
        wall = row["wall_time_s_mean"]
        wall = "not trained here" if wall is None else f"{wall:.0f}"
        lines.append(
            f"| {method} | {row['top1_mean']:.2f}{spread} | "
            f"{len(row['runs'])} | {wall} | {cpus} |"
        )
    timed = [r["wall_time_s"] for row in summary["methods"].values()
             for r in row["runs"] if r["wall_time_s"] is not None]
    if timed:
        lines.append(f"| all {len(timed)} runs | | | total "
                     f"{sum(timed):.0f} | |")
    return "\n".join(lines)


def plot(summary, path):
    """Per-epoch test top-1 of each method (mean over seeds) as a PNG,
    drawn by `ft_keras.report.plot_curves`."""
    from ft_keras import report

    series = {}
    for method, row in summary["methods"].items():
        curves = [r["curve"] for r in row["runs"] if r["curve"]]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
        series[f"{method} ({seeds})"] = [
            statistics.mean(c[e] for c in curves) for e in range(epochs)]
    if not series:
        return False
    # The y range of the runs themselves, not of their means.
    runs = {str(i): r["curve"] for i, r in enumerate(
        r for row in summary["methods"].values() for r in row["runs"])
        if r["curve"]}
    return report.plot_curves(series, path, summary["title"],
                              "test top-1 (%)", report.accuracy_ylim(runs))


def write_readme(path, name, text):
    """Replaces the block between the `reproduce:name` markers of `path`."""
    start, end = f"<!-- reproduce:{name} -->", f"<!-- /reproduce:{name} -->"
    with open(path) as f:
        content = f.read()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no {start} ... {end} block to fill.")
    content = pattern.sub(lambda _: f"{start}\n{text}\n{end}", content)
    with open(path, "w") as f:
        f.write(content)


def summarize(args, methods, runs, elapsed):
    summary = {
        "command": shlex.join(["python", "benchmarks/reproduce.py"]
                              + sys.argv[1:]),
        "title": f"{', '.join(args.gin_file)}; seeds {args.seeds}",
        "gin_files": args.gin_file,
        "gin_bindings": args.gin_bindings,
        "seeds": args.seeds,
        "teachers": (
            f"the trained teacher {args.teacher} (not trained here); the "
            "students of every seed distil from it"
            if args.teacher else
            f"one teacher, trained once with seed {args.seeds[0]}; the "
            "students of every seed distil from it" if args.shared_teacher
            else "one teacher per seed, trained once; every student of "
            "that seed distils from it"),
        "elapsed_s_this_invocation": elapsed,
        "methods": {},
    }
    for method in methods:
        row = {"runs": runs[method]}
        if runs[method]:
            top1 = [r["top1"] for r in runs[method]]
            row["top1_mean"], row["top1_std"] = mean_std(top1)
            walls = [r["wall_time_s"] for r in runs[method]
                     if r["wall_time_s"] is not None]
            row["wall_time_s_mean"] = (statistics.mean(walls) if walls
                                       else None)
        summary["methods"][method] = row
    return summary


def key_of(args, seed, method):
    """What identifies a run across machines and sessions."""
    key = {"gin_files": args.gin_file, "gin_bindings": args.gin_bindings,
           "seed": seed, "method": method}
    if args.teacher:
        # The file's content, not its path: the key holds on another machine.
        key["teacher_sha256"] = args.teacher_sha256
    elif args.shared_teacher and method != "teacher":
        key["teacher_seed"] = args.seeds[0]
    return json.dumps(key, sort_keys=True)


def load_records(path):
    """`{key: record}` of the runs a previous invocation finished, from its
    summary.json (which may be committed, while the runs' workdirs are
    gone)."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}
    return {r["key"]: r for row in summary.get("methods", {}).values()
            for r in row["runs"] if "key" in r}


def write(args, methods, runs, records, elapsed):
    """Writes summary.json, table.md and curves.png of `runs` and of the
    `records` not among them; returns the summary and the table."""
    # The rows of this invocation's methods and of every method recorded
    # before (`--methods AT` adds a row; it does not drop the others).
    methods = [m for m in METHODS if m in methods
               or any(r.get("method") == m for r in records.values())]
    merged = {m: list(runs.get(m, [])) for m in methods}
    seen = {r.get("key") for m in methods for r in merged[m]}
    for key, r in records.items():
        if key not in seen and r.get("method") in merged:
            merged[r["method"]].append(r)
    for m in methods:
        merged[m].sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
    summary = summarize(args, methods, merged, elapsed)
    # The machine and versions of the invocation that wrote the file (runs
    # kept from earlier invocations were measured where those ran).
    from ft_keras import precision

    summary["machine"] = precision.machine_info()
    summary["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.results_dir or args.workdir
    os.makedirs(out, exist_ok=True)
    text = table(summary)
    figure = os.path.join(out, "curves.png")
    summary["curves_png"] = (os.path.relpath(figure, out)
                             if plot(summary, figure) else None)
    tmp = os.path.join(out, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(out, "summary.json"))
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    return summary, text


def _exit_on_sigterm(signum, frame):
    # SIGTERM (`kill`, a job scheduler, the end of a session) unwinds like
    # Ctrl-C, so that `train` stops the run it started.
    raise SystemExit(128 + signum)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs",
                                                          "reproduce"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=list(METHODS), help="which rows (the teacher "
                        "is always trained: the others start from it)")
    parser.add_argument("--shared_teacher", action="store_true",
                        help="train one teacher (with the first seed) and "
                        "distil every seed's students from it")
    parser.add_argument("--teacher", default=None, metavar="FILE",
                        help="a trained teacher (.keras) every student "
                        "distils from; no teacher is trained, and its row "
                        "is its test top-1")
    parser.add_argument("--report_only", action="store_true",
                        help="write the table of the runs finished so far; "
                        "train nothing")
    parser.add_argument("--readme", default=None,
                        help="file whose reproduce:NAME block gets the table")
    parser.add_argument("--name", default="results",
                        help="NAME of the README block (default 'results')")
    parser.add_argument("--results_dir", default=None,
                        help="where summary.json, table.md and curves.png "
                        "go (default: --workdir); runs recorded in its "
                        "summary.json are not trained again")
    args = parser.parse_args(argv)
    args.workdir = os.path.abspath(args.workdir)
    if args.teacher:
        if args.shared_teacher:
            parser.error("--teacher FILE and --shared_teacher both say where "
                         "the teacher comes from: pass one of them")
        if not os.path.isfile(args.teacher):
            parser.error(f"--teacher {args.teacher}: no such file; pass a "
                         "trained teacher's .keras file")
        with open(args.teacher, "rb") as f:
            args.teacher_sha256 = hashlib.sha256(f.read()).hexdigest()

    start = time.perf_counter()
    methods = ["teacher"] + [m for m in args.methods if m != "teacher"]
    records = load_records(os.path.join(args.results_dir or args.workdir,
                                        "summary.json"))
    runs = {m: [] for m in methods}
    # (seed, method, directory, teacher seed) in order; one teacher first
    # when it is shared.
    plan = []
    for seed in args.seeds:
        for method in methods:
            if method == "teacher":
                if args.teacher:
                    continue  # given; its row comes from a student's run
                if args.shared_teacher and seed != args.seeds[0]:
                    continue
                directory = run_dir(args.workdir,
                                    teacher_seed(args, seed), method)
            else:
                directory = run_dir(args.workdir, seed, method)
            plan.append((seed, method, directory, teacher_seed(args, seed)))
    out = args.results_dir or args.workdir
    epochs = (student_epochs(args.gin_file, args.gin_bindings)
              if any(m in WARMUP for m in methods) else None)
    for seed, method, directory, teacher in plan:
        key = key_of(args, seed, method)
        bindings = bindings_of(method, seed, args.workdir, args.gin_bindings,
                               teacher, epochs)
        if method == "teacher":
            students = [key_of(args, s, m) for s, m, _, t in plan
                        if m != "teacher" and t == teacher]
            model = os.path.join(directory, "teacher", "model.keras")
            kept = os.path.join(out, "shared_teacher.keras")
            if (key in records and not args.report_only
                    and any(k not in records for k in students)
                    and not os.path.exists(model)):
                if args.shared_teacher and os.path.exists(kept):
                    # The teacher kept beside the summary by an earlier
                    # invocation (on another machine, perhaps).
                    os.makedirs(os.path.dirname(model), exist_ok=True)
                    shutil.copyfile(kept, model)
                else:
                    # Retrain the recorded teacher for the students still
                    # to run: a seeded run repeats exactly on the CPU.
                    train(args.gin_file, bindings, directory)
        if key in records:
            runs[method].append(records[key])
            continue
        if args.report_only:
            results = finished(directory, args.gin_file, bindings)
            if results is None:
                continue
        else:
            results = train(args.gin_file, bindings, directory)
        runs[method].append(dict(record(method, seed, directory, results),
                                 key=key))
        if (args.teacher and not runs["teacher"]
                and "teacher" in results["evaluation"]):
            runs["teacher"].append(dict(given_teacher(results, directory),
                                        key=key_of(args, None, "teacher")))
        if method == "teacher" and args.shared_teacher:
            keep_teacher(directory, out)
        print(f"seed {seed} {method}: top-1 {runs[method][-1]['top1']:.2f}",
              file=sys.stderr, flush=True)
        if not args.report_only:
            write(args, methods, runs, records, time.perf_counter() - start)

    summary, text = write(args, methods, runs, records, time.perf_counter() - start)
    print(f"\n{summary['title']}\n\n{text}")
    if args.readme:
        write_readme(args.readme, args.name, text)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
