"""Is the CIFAR-10 input pipeline fast enough to keep a ResNet busy?

Measures, on this machine's CPU:

1. images/second produced by the `ft_keras.data` CIFAR-10 training pipeline
   (pad + crop + flip + normalise, batch 128, in-memory cache, shuffle over
   the whole split), read through TFDS's normal path: from `--data_dir` (a
   prepared CIFAR-10), or, by default, from a CIFAR-10 of `--examples`
   random-pixel images in the official archive layout, prepared offline in
   a temporary directory by `ft_keras.data.prepare` (the pipeline's speed
   does not depend on the pixels). Epoch 1 (filling the cache) is the warm-up
   and is reported separately; the figure is the median over the following
   full epochs.
2. images/second consumed by a compiled `model.fit` train step of ResNet-20
   and ResNet-56 (SGD momentum 0.9, sparse categorical cross-entropy, batch
   128, random data), median over several blocks of steps timed between
   batch ends inside one `fit` call, after warm-up steps that trace it.

and prints the ratio pipeline / ResNet-20 (target: >= 5x).

Run:

    python benchmarks/input_pipeline.py

(about 1.5-2 minutes on 2 cores; `--help` lists the knobs.)
"""

import argparse
import io
import os
import pickle
import platform
import statistics
import tarfile
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

import _timing  # noqa: E402
from ft_keras import data, models  # noqa: E402
from ft_keras.data import prepare  # noqa: E402

BATCH = 128


def random_cifar10(examples, data_dir, seed=0):
    """Prepares a CIFAR-10 of `examples` random training images (and 100
    test images) in `data_dir`, from an archive in the official python
    layout (`ft_keras.data.prepare`, TFDS's own builder)."""
    if examples % 5:
        raise SystemExit(f"--examples must be a multiple of 5, got {examples}.")
    rng = np.random.default_rng(seed)
    archive = os.path.join(data_dir, "cifar-10-python.tar.gz")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [examples // 5] * 5 + [100]

    def add(tar, name, payload):
        entry = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        entry.size = len(payload)
        tar.addfile(entry, io.BytesIO(payload))

    with tarfile.open(archive, "w:gz") as tar:
        for name, size in zip(names, sizes):
            add(tar, name, pickle.dumps({
                b"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, size).tolist()}))
        add(tar, "batches.meta", pickle.dumps(
            {b"label_names": [f"class{i}".encode() for i in range(10)]}))
    prepare.prepare("cifar10", archive, data_dir=data_dir, verbose=False)
    os.remove(archive)


def pipeline_throughput(data_dir, epochs, augment, autotune):
    """Returns (warm-up epoch images/s, [images/s of each timed epoch])."""
    ds = data.build_dataset(
        "cifar10",
        "train",
        batch_size=BATCH,
        training=True,
        data_dir=data_dir,
        augment=augment,
        autotune=autotune,
    )
    rates = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        images = 0
        for x, _ in ds:
            images += x.shape[0]
        rates.append(images / (time.perf_counter() - start))
    return rates[0], rates[1:]


def train_step_throughput(name, steps, runs):
    """Returns ([images/s of each timed block of steps], jit_compile)."""
    model = models.get(name, num_classes=10, input_shape=(32, 32, 3))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * 4, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, BATCH * 4).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _, blocks = _timing.fit_step_seconds(model, ds, steps, runs, warmup=3)
    return [BATCH / seconds for seconds in blocks], model.jit_compile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=50_000,
        help="random-pixel CIFAR-10 training examples prepared for the run "
        "(a multiple of 5; without --data_dir)",
    )
    parser.add_argument(
        "--data_dir",
        help="TFDS data_dir holding a prepared cifar10 (default: a random-"
        "pixel one, prepared in a temporary directory)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="timed pipeline epochs (after 1 warm-up epoch)",
    )
    parser.add_argument(
        "--augment",
        nargs="*",
        default=[],
        help="extra augmentations, e.g. randaugment",
    )
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="turn tf.data autotuning on (build_dataset's default is off)",
    )
    parser.add_argument(
        "--steps20",
        type=int,
        default=15,
        help="train steps per timed ResNet-20 fit",
    )
    parser.add_argument(
        "--steps56",
        type=int,
        default=6,
        help="train steps per timed ResNet-56 fit",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="timed blocks per network"
    )
    args = parser.parse_args()
    absl_logging.set_verbosity(absl_logging.ERROR)
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")

    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{cores} CPU cores (os.cpu_count()={os.cpu_count()}), "
        f"{len(tf.config.list_physical_devices('GPU'))} GPUs, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"tensorflow-datasets {tfds.__version__}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            random_cifar10(args.examples, tmp)
            data_dir = tmp
        warm, rates = pipeline_throughput(
            data_dir, args.epochs, args.augment, args.autotune
        )
    pipeline = statistics.median(rates)
    label = "+".join(["pad-crop-flip"] + args.augment)
    print(
        f"input pipeline (cifar10 train, {label}, batch {BATCH}, "
        f"autotune={args.autotune}, "
        f"{'data_dir ' + args.data_dir if args.data_dir else f'{args.examples} random-pixel examples'}): "
        f"{pipeline:,.0f} images/s "
        f"(median of {len(rates)} epochs: "
        f"{', '.join(f'{r:,.0f}' for r in rates)}; warm-up epoch 1 "
        f"incl. reading + cache fill: {warm:,.0f})"
    )

    results = {}
    for name, steps in (("resnet20", args.steps20), ("resnet56", args.steps56)):
        rates, jit = train_step_throughput(name, steps, args.runs)
        results[name] = statistics.median(rates)
        print(
            f"{name} train step (SGD, sparse CE, batch {BATCH}, "
            f"jit_compile={jit}): {results[name]:,.0f} images/s (median of "
            f"{len(rates)} blocks x {steps} steps: "
            f"{', '.join(f'{r:,.0f}' for r in rates)})"
        )

    for name, rate in results.items():
        print(f"ratio pipeline / {name}: {pipeline / rate:.1f}x")
    ratio = pipeline / results["resnet20"]
    print(
        f"target pipeline >= 5x resnet20: "
        f"{'MET' if ratio >= 5 else 'NOT MET'} ({ratio:.1f}x)"
    )


if __name__ == "__main__":
    main()
