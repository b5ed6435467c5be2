"""A measured results table: teacher, student alone, KD, AT and FT over seeds.

For each seed, trains the teacher once, then the student four ways from that
same teacher (alone, Hinton KD, attention transfer, Factor Transfer), each
through the experiment runner in its own workdir, and prints a markdown table
of test top-1 (mean and standard deviation over seeds) and training wall time
per method. Finished runs are reused, so an interrupted table resumes.

    python benchmarks/reproduce.py --gin_file=gin/quickstart.gin --seeds 0 1 2 3 4
    python benchmarks/reproduce.py --gin_file=gin/quickstart.gin --methods AT \
        --gin_bindings="distillation.at_weight = 62.5" --workdir runs/reproduce_at
    python benchmarks/reproduce.py --gin_file=gin/paper/cifar100_resnet56_resnet20.gin \\
        --seeds 0 1 2 --workdir runs/reproduce_cifar100    # on a GPU machine
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# method -> (gin bindings, stages whose wall time counts, evaluated role)
METHODS = {
    "teacher": ([], ["teacher"], "teacher"),
    "student alone": ([], ["baseline"], "baseline"),
    "KD": (["distillation.method = 'kd'"], ["student"], "student"),
    "AT": (["distillation.method = 'at'"], ["student"], "student"),
    "FT": (["distillation.method = 'ft'"], ["paraphraser", "student"], "student"),
}


def stages(method):
    """The runner's stages of a method: a distilled student also runs the
    teacher stage, which loads the seed's trained teacher."""
    _, timed, role = METHODS[method]
    return (["teacher"] if role == "student" else []) + timed + ["evaluate"]


def run(gin_files, bindings, workdir):
    command = [sys.executable, "-m", "ft_keras.train", f"--workdir={workdir}"]
    command += [f"--gin_file={f}" for f in gin_files]
    command += [f"--gin_bindings={b}" for b in bindings]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n"
                 f"{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs",
                                                          "reproduce"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=list(METHODS), help="which rows (the teacher "
                        "is always trained: the others start from it)")
    args = parser.parse_args()

    methods = ["teacher"] + [m for m in args.methods if m != "teacher"]
    top1 = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    for seed in args.seeds:
        base = args.gin_bindings + [f"experiment.seed = {seed}"]
        teacher_dir = os.path.join(args.workdir, f"seed{seed}", "teacher")
        teacher_model = os.path.join(teacher_dir, "teacher", "model.keras")
        for method in methods:
            extra, timed, role = METHODS[method]
            workdir = os.path.join(args.workdir, f"seed{seed}",
                                   method.replace(" ", "_"))
            bindings = base + extra + [
                f"experiment.stages = {stages(method)}"]
            if method != "teacher":
                bindings.append(
                    f"experiment.teacher_checkpoint = '{teacher_model}'")
            results = run(args.gin_file, bindings, workdir)
            top1[method].append(100 * results["evaluation"][role]["top1"])
            seconds[method].append(
                sum(results["stages"][s]["wall_time_s"] for s in timed))
            print(f"seed {seed} {method}: top-1 {top1[method][-1]:.2f}",
                  file=sys.stderr, flush=True)

    def mean_std(values):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {std:.2f}"

    print(f"\n{', '.join(args.gin_file)}; seeds {args.seeds}\n")
    print("| method | test top-1 (%) | training wall time (s) |")
    print("|---|---|---|")
    for method in methods:
        print(f"| {method} | {mean_std(top1[method])} | "
              f"{statistics.mean(seconds[method]):.1f} |")


if __name__ == "__main__":
    main()
