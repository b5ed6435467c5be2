"""What an exact, crash-safe checkpoint costs: its size, and the time to save
and to restore it (`ft_keras.checkpoint.ResumableCheckpoint`).

For each network: built as the runner builds it, compiled with SGD with
momentum (one slot per weight, as the recipes use), trained one step so
that the optimizer holds its state, then saved `--saves` times (the median
is kept: each save writes the weights and optimizer to a temporary file,
flushes it to disk, hashes it, renames it and rewrites checkpoint.json) and
restored once (hash check, weights, optimizer and random-layer states).
The checkpoint of the student stage also holds the frozen teacher's weights
(no optimizer slots for them).

    python benchmarks/results/record.py benchmarks/results/commands/checkpoint_cost.txt -- \
        python benchmarks/checkpoint_cost.py

writes benchmarks/results/checkpoint_cost.json (every measurement, the
machine and the versions) and keeps the printed summary, which
docs/reproducibility.md quotes, in benchmarks/results/commands/.

Keep it short (well under a minute on 2 CPU cores) and run it alone: other
work on the machine slows the disk writes it times.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ft_keras  # noqa: E402,F401 - first: the quiet console
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ft_keras import _console  # noqa: E402
from ft_keras import checkpoint as ft_checkpoint  # noqa: E402
from ft_keras import models  # noqa: E402
from ft_keras import precision  # noqa: E402

OUTPUT = os.path.join(REPO, "benchmarks", "results", "checkpoint_cost.json")
# (network, input shape, classes): the quickstart's teacher and student on
# digits, and the paper's CIFAR-100 teacher.
NETWORKS = [
    ("wrn16_2", (8, 8, 1), 10),
    ("wrn10_1", (8, 8, 1), 10),
    ("resnet56", (32, 32, 3), 100),
]


def trained_one_step(name, shape, classes):
    """The network, compiled as a stage compiles it, after one step."""
    keras.utils.set_random_seed(0)
    model = models.get(name, num_classes=classes, input_shape=shape)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    model.fit(x, np.arange(8) % classes, epochs=1, verbose=0)
    return model


def measure(name, shape, classes, saves):
    """Size and save/restore seconds of one network's checkpoint."""
    model = trained_one_step(name, shape, classes)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = ft_checkpoint.ResumableCheckpoint(directory)
        checkpoint.set_model(model)
        seconds = []
        for _ in range(saves):
            start = time.perf_counter()
            checkpoint.save()
            seconds.append(time.perf_counter() - start)
        files = {f: os.path.getsize(os.path.join(directory, f))
                 for f in sorted(os.listdir(directory))}
        restored = ft_checkpoint.ResumableCheckpoint(directory)
        restored.set_model(trained_one_step(name, shape, classes))
        start = time.perf_counter()
        restored.on_train_begin()
        restore_seconds = time.perf_counter() - start
    return {
        "network": name,
        "input_shape": list(shape),
        "classes": classes,
        "parameters": int(model.count_params()),
        "checkpoint_bytes": files[ft_checkpoint.LATEST]
        + files[ft_checkpoint.MANIFEST],
        "directory_bytes": sum(files.values()),
        "save_seconds": statistics.median(seconds),
        "save_seconds_all": seconds,
        "restore_seconds": restore_seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args(argv)
    if args.saves < 1:
        parser.error(f"--saves must be at least 1. Received: {args.saves}")
    _console.quiet_python_logging()
    load = os.getloadavg()[0]
    results = [measure(*network, args.saves) for network in NETWORKS]
    record = {
        "command": "python benchmarks/checkpoint_cost.py",
        "saves_per_network": args.saves,
        "load_average_1min_at_start": load,
        "machine": precision.machine_info(),
        "networks": results,
    }
    with open(args.output, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    for r in results:
        print(f"{r['network']:>9}: {r['parameters']:>9,} parameters, "
              f"checkpoint {r['checkpoint_bytes'] / 1e6:.2f} MB, save "
              f"{1000 * r['save_seconds']:.0f} ms, restore "
              f"{1000 * r['restore_seconds']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
