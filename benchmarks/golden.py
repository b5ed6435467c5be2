"""The quickstart's first steps, recorded: every logged loss and the weights.

Runs the seeded quickstart (gin/quickstart.gin: digits, WRN-16-2 ->
WRN-10-1, `experiment.seed = 0`) through the real runner
(`ft_keras.cli.parse_config`, then `ft_keras.experiment.Experiment(...).run()`)
on the CPU, short: one epoch per stage at batch 256, i.e. the first 5
steps. Five runs, in order:

    shared    stages teacher, baseline, evaluate: the teacher every method
              distils from, and the student trained alone
    ft        stages teacher (the shared run's teacher, through
    ft+kd     `experiment.teacher_checkpoint`), paraphraser (FT methods
    kd        only), student, evaluate; the method's gin/methods file
    at        bound

For every stage a run trained it records the rows of its log.csv (every
logged loss, top1, top5), a SHA-256 of the weights of each `.keras` file
the stage saved, and the evaluate stage's scores; with them the machine
(CPU model and features, the CPUs TensorFlow may use, the environment
variables that pick its kernels) and the TensorFlow and Keras versions.

    python benchmarks/golden.py            # compare with the golden file
    python benchmarks/golden.py --write    # regenerate it

Comparing, every recorded number must agree within the tolerances below;
on the machine that wrote the file (`machine()` equal) the weights must be
bit-identical as well. tests/test_golden.py does the same. Exit status: 0
when they match (or after `--write`), 1 when not.
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile

from ft_keras import config
from ft_keras import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden", "quickstart_short.json")
GIN_FILES = ["gin/quickstart.gin"]
COMMAND = "python benchmarks/golden.py --write"

# The quickstart's first steps: 5 per stage (1,437 training digits).
SHORT = [
    "experiment.seed = 0",
    "training.epochs = 1",
    "paraphraser/training.epochs = 1",
    "dataset.batch_size = 256",
]
_DISTIL = ["teacher", "paraphraser", "student", "evaluate"]
# run -> (bindings, stages). A method's run loads the shared run's teacher
# (`bindings_of` adds `experiment.teacher_checkpoint`); KD and AT skip the
# paraphraser stage themselves.
RUNS = {
    "shared": ([], ["teacher", "baseline", "evaluate"]),
    "ft": (["include 'gin/methods/ft.gin'"], _DISTIL),
    "ft+kd": (["include 'gin/methods/ft_kd.gin'"], _DISTIL),
    "kd": (["include 'gin/methods/kd.gin'"], _DISTIL),
    "at": (["include 'gin/methods/at.gin'"], _DISTIL),
}
# The files a training stage may save (the stage table, `ft_keras.stages`,
# for Factor Transfer: the others save fewer).
ARTIFACTS = stages.artifacts([config.FactorTransferConfig("-", "-")])

# Tolerances against the golden file, measured on the recording machine
# (an "Intel(R) Xeon(R) Processor" with AMX, 2 CPUs):
# - two runs: bit-identical numbers and weights.
# - ONEDNN_MAX_CPU_ISA=AVX512_CORE: bit-identical too (float32 never uses
#   AMX); ONEDNN_MAX_CPU_ISA=AVX2: weights differ, largest relative loss
#   difference 9.6e-6 (at_loss), no accuracy changed.
# - TF_NUM_INTRAOP_THREADS=1 (another thread count: other reduction
#   orders): largest relative loss difference 4.3e-3 (ft+kd kd_loss),
#   largest accuracy difference 0.0167 (6 of the 360 test digits, the FT
#   student's evaluate top1).
# So: losses within 2e-2 relative, about 5x the largest; accuracies
# (top1, top5: fractions of 1,280 training or 360 test images) within 0.05
# absolute, 3x the largest. Changing `factor_transfer.beta` from 500 to 400
# moves the FT losses by ~20% (tests/test_golden.py).
# The file itself was last written on an AMD EPYC (Zen 4, AVX512-BF16, no
# AMX): its numbers agree with the Xeon's recording within 1.4e-6 relative
# (losses) and 0 (accuracies).
LOSS_RTOL = 2e-2
ACCURACY_ATOL = 0.05


def bindings_of(run, workdir):
    """The runner's bindings of `run` (one of `RUNS`) under `workdir`."""
    extra, stages = RUNS[run]
    bindings = SHORT + extra + [f"experiment.stages = {stages}"]
    if run != "shared":
        teacher = os.path.join(workdir, "shared", "teacher", "model.keras")
        bindings.append(f"experiment.teacher_checkpoint = '{teacher}'")
    return bindings


def _cpuinfo():
    """`(model name, flags)` of the first CPU in /proc/cpuinfo."""
    from ft_keras import precision

    model, flags = precision.read_cpuinfo()
    return model, flags or set()


def machine():
    """What decides the bits of a CPU run: the CPU kind, the CPUs
    TensorFlow sizes its thread pools by (the order of its reductions), the
    environment variables that pick kernels or threads, and the versions."""
    import keras
    import tensorflow as tf

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512f": "avx512f" in flags,
        "cpus": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count()),
        "environment": {name: os.environ.get(name) for name in (
            "ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS",
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")},
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def weights_sha256(path):
    """SHA-256 of a `.keras` file's weights: `get_weights()`' bytes in order."""
    import keras
    import numpy as np

    model = keras.models.load_model(path, compile=False)
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def read_log(path):
    """log.csv's rows, each value a float; columns a stage left empty
    ("NA": the validation columns without `experiment.validate`) left out."""
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != "NA"}
                for row in csv.DictReader(f)]


def run_one(run, workdir):
    """Runs `run` in `<workdir>/<run>`; returns what its stages trained."""
    import gin

    from ft_keras import cli
    from ft_keras import experiment

    directory = os.path.join(workdir, run)
    gin.clear_config()
    try:
        cli.parse_config(GIN_FILES, bindings_of(run, workdir))
        results = experiment.Experiment(directory).run()
    finally:
        gin.clear_config()
    stages = {}
    for stage in RUNS[run][1]:
        stage_dir = os.path.join(directory, stage)
        if stage not in ARTIFACTS or not os.path.exists(
                os.path.join(stage_dir, "log.csv")):
            continue  # evaluate; a loaded teacher; KD's and AT's paraphraser
        stages[stage] = {
            "log": read_log(os.path.join(stage_dir, "log.csv")),
            "weights": {name: weights_sha256(os.path.join(stage_dir, name))
                        for name in ARTIFACTS[stage]  # KD, AT: no translator
                        if os.path.exists(os.path.join(stage_dir, name))},
        }
    return {"stages": stages, "evaluation": results["evaluation"]}


def measure(workdir=None):
    """Runs every run of `RUNS` on the CPU (in `workdir`, or a temporary
    directory removed afterwards); returns the golden file's dict."""
    # The CPU's numbers, also where a GPU is visible. Read when TensorFlow
    # loads: call before anything imports it.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    own = workdir is None
    workdir = tempfile.mkdtemp(prefix="ft_keras_golden_") if own else workdir
    try:
        runs = {run: run_one(run, workdir) for run in RUNS}
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "command": COMMAND,
        "gin_files": GIN_FILES,
        "bindings": {run: bindings_of(run, "<workdir>") for run in RUNS},
        "machine": machine(),
        "runs": runs,
    }


def numbers(result):
    """`{'run/stage/epoch N/key': value}` of every logged number, and
    `{'run/evaluate/role/key': value}` of every evaluated one."""
    flat = {}
    for run, entry in result["runs"].items():
        for stage, recorded in entry["stages"].items():
            for row in recorded["log"]:
                for key, value in row.items():
                    if key != "epoch":
                        flat[f"{run}/{stage}/epoch {int(row['epoch'])}/{key}"] = value
        for role, scores in entry["evaluation"].items():
            for key, value in scores.items():
                flat[f"{run}/evaluate/{role}/{key}"] = value
    return flat


def hashes(result):
    """`{'run/stage/file': sha256}` of every saved file's weights."""
    return {f"{run}/{stage}/{name}": digest
            for run, entry in result["runs"].items()
            for stage, recorded in entry["stages"].items()
            for name, digest in recorded["weights"].items()}


def is_loss(key):
    return key.endswith("loss")


def difference(key, expected, actual):
    """How far `actual` is from `expected`, in the unit of `key`'s
    tolerance: relative for a loss, absolute for an accuracy."""
    if is_loss(key):
        return abs(actual - expected) / (abs(expected) or 1.0)
    return abs(actual - expected)


def compare_numbers(golden, measured):
    """One line per recorded number that `measured` misses or that is off
    by more than its tolerance (`LOSS_RTOL`, `ACCURACY_ATOL`)."""
    problems = []
    actual = numbers(measured)
    for key, value in sorted(numbers(golden).items()):
        tolerance = LOSS_RTOL if is_loss(key) else ACCURACY_ATOL
        kind = "relative" if is_loss(key) else "absolute"
        if key not in actual:
            problems.append(f"{key}: recorded {value!r}, not logged now")
        elif difference(key, value, actual[key]) > tolerance:
            problems.append(
                f"{key}: recorded {value!r}, now {actual[key]!r} ({kind} "
                f"difference {difference(key, value, actual[key]):.3g} > "
                f"{tolerance:g})")
    return problems


def compare_weights(golden, measured):
    """One line per saved file whose weights' SHA-256 differs."""
    actual = hashes(measured)
    return [f"{key}: weights differ (SHA-256 {digest[:12]}... recorded, "
            f"{str(actual.get(key))[:12]}... now)"
            for key, digest in sorted(hashes(golden).items())
            if actual.get(key) != digest]


def machine_differences(golden, measured):
    """The `machine()` entries in which two results differ: none means the
    weights must be bit-identical."""
    a, b = golden["machine"], measured["machine"]
    return [f"{key}: {a.get(key)!r} recorded, {b.get(key)!r} here"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def largest_differences(golden, measured):
    """`{'loss': (relative, key), 'accuracy': (absolute, key)}`: the
    largest difference of each kind of recorded number."""
    actual = numbers(measured)
    largest = {"loss": (0.0, None), "accuracy": (0.0, None)}
    for key, value in numbers(golden).items():
        if key in actual:
            kind = "loss" if is_loss(key) else "accuracy"
            largest[kind] = max(largest[kind],
                                (difference(key, value, actual[key]), key),
                                key=lambda pair: pair[0])
    return largest


def write_json(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="Regenerate the golden file instead of comparing.")
    parser.add_argument("--golden", default=GOLDEN,
                        help="The golden file (default: %(default)s).")
    parser.add_argument("--output",
                        help="Also write the measured numbers to this file.")
    parser.add_argument("--workdir", help="Keep the runs' workdirs here "
                        "(default: a temporary directory, removed).")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the gin files' includes are relative to the checkout
    measured = measure(args.workdir)
    if args.output:
        write_json(args.output, measured)
    if args.write:
        write_json(args.golden, measured)
        print(f"wrote {args.golden}")
        return 0
    with open(args.golden) as f:
        golden = json.load(f)
    largest = largest_differences(golden, measured)
    print(f"largest relative loss difference {largest['loss'][0]:.3g} "
          f"({largest['loss'][1]}), tolerance {LOSS_RTOL:g}")
    print(f"largest absolute accuracy difference {largest['accuracy'][0]:.3g} "
          f"({largest['accuracy'][1]}), tolerance {ACCURACY_ATOL:g}")
    problems = compare_numbers(golden, measured)
    other = machine_differences(golden, measured)
    if other:
        print("weights not compared: another machine (" + "; ".join(other) + ")")
    else:
        print("weights compared bit for bit: the recording machine")
        problems += compare_weights(golden, measured)
    for line in problems:
        print(line)
    print("match" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
