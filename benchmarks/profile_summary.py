"""Where the time of a profiled step goes, by network part.

Reads the TensorFlow profile (`*.xplane.pb`) that `throughput.py --profile
DIR` writes for the distillation step (or any `tf.profiler` trace), sums the
duration of every TensorFlow op executed on the host, and attributes each op
to a part of a distillation step by its name:

- teacher / paraphraser / student / translator forward: ops under that
  model's name scope;
- ... backward: the same under `gradient_tape/`;
- optimizer: the SGD update and the variable writes it makes;
- losses, metrics and the rest: everything else.

Op times are summed over threads; on several cores the total can exceed
the wall time of the steps, and their ratio is the average number of ops
running at once.

    python benchmarks/profile_summary.py DIR [--steps N] [--top 10]
"""

import argparse
import collections
import glob
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_PARTS = ("paraphraser", "translator", "teacher", "student")
# Ops that call a function: their time is that of the ops inside, which the
# trace holds too.
_CALLS = {"StatefulPartitionedCall", "PartitionedCall", "While", "If",
          "StatelessIf", "StatelessWhile", "Case", "StatelessCase"}
_OPTIMIZER = re.compile(r"(^|/)(sgd|SGD|adam|Adam|adamw|AdamW|"
                        r"loss_scale_optimizer)(_\d+)?/")


def part_of(op_name):
    """The part of a distillation step an op (`scope/.../name`) belongs to."""
    backward = "gradient_tape/" in op_name
    scopes = op_name.split("/")
    for part in _PARTS:
        if any(s == part or s.startswith(part + "_") for s in scopes):
            return f"{part} {'backward' if backward else 'forward'}"
    if backward:
        return "other backward"
    if _OPTIMIZER.search(op_name):
        return "optimizer"
    return "losses, metrics, other"


def load_ops(directory):
    """[(op name, op type, duration in ps, start ps)] of the newest trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"),
                             recursive=True), key=os.path.getmtime)
    if not paths:
        raise SystemExit(f"No *.xplane.pb under {directory!r}: run "
                         "`python benchmarks/throughput.py --profile DIR`.")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    ops = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # executor and thread-pool bookkeeping
                op, op_type = name.rsplit(":", 1)
                if op_type in _CALLS:
                    continue
                start = line.timestamp_ns * 1000 + event.offset_ps
                ops.append((op, op_type, event.duration_ps, start))
    return ops


def summarize(directory, steps=None, top=10):
    """Prints the time per part (and the `top` ops) of the newest trace."""
    ops = load_ops(directory)
    if not ops:
        raise SystemExit(f"The trace under {directory!r} holds no TF ops.")
    wall = (max(s + d for _, _, d, s in ops) - min(s for *_, s in ops)) / 1e9
    total = sum(d for _, _, d, _ in ops) / 1e9
    per = f" per step (of {steps})" if steps else ""
    n = steps or 1
    parts = collections.Counter()
    for op, _, duration, _ in ops:
        parts[part_of(op)] += duration / 1e9
    print(f"profile {directory}: {len(ops)} ops, op time {total / n:.1f} ms"
          f"{per}, wall {wall / n:.1f} ms{per}, on average "
          f"{total / wall:.2f} ops at once")
    print("| part | op time (ms) | share |")
    print("|---|---|---|")
    for part, ms in parts.most_common():
        print(f"| {part} | {ms / n:.1f} | {100 * ms / total:.1f}% |")
    by_type = collections.Counter()
    for _, op_type, duration, _ in ops:
        by_type[op_type] += duration / 1e9
    print(f"top {top} op types: " + ", ".join(
        f"{t} {ms / n:.1f} ms" for t, ms in by_type.most_common(top)))
    return parts, total, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps in the trace, to print per-step times")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    summarize(args.directory, args.steps, args.top)


if __name__ == "__main__":
    main()
