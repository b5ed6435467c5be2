"""What Factor Transfer costs: images/second of each step, and the overhead.

For CIFAR shapes (32x32x3, 10 classes) and a batch of 128, measures
(a) the student's plain train step, (b) the teacher's inference step,
(c) the paraphraser pre-training step and (d) the Factor Transfer
distillation step, then prints the overhead ratio

    time(d) / (time(a) + time(b))

whose ideal is 1.0: the connectors are small, and a distillation step is one
teacher inference plus one student train step. Each step kind runs in a
fresh subprocess, so its peak memory (max RSS) is its own; timings exclude
warm-up (tracing) and are the median of `--repeats` runs of `--steps` steps.

    python benchmarks/throughput.py                       # both pairs
    python benchmarks/throughput.py --pairs resnet56:resnet20 --steps 10
    python benchmarks/throughput.py --mixed_precision     # float16 compute
    python benchmarks/throughput.py --xla                 # jit_compile=True
    python benchmarks/throughput.py --profile /tmp/prof   # TF profile of (d)
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

KINDS = {
    "a": "student train step",
    "b": "teacher inference step",
    "c": "paraphraser pre-training step",
    "d": "Factor Transfer distillation step",
}
TAPS = {"resnet20": "stage3", "resnet56": "stage3", "resnet18": "stage4",
        "resnet50": "stage4"}


def measure(kind, teacher_name, student_name, batch, steps, repeats, xla,
            mixed_precision, profile):
    """Runs in the subprocess: times one step kind, returns a dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    import ft_keras
    from ft_keras import models

    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, size=(batch,)).astype(np.int32))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)  # noqa: E731
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = models.get(teacher_name, model_name="teacher")
    student = models.get(student_name, model_name="student")
    t_tap, s_tap = TAPS[teacher_name], TAPS[student_name]

    if kind == "b":
        forward = tf.function(lambda images: teacher(images, training=False),
                              jit_compile=xla)

        def run(n):
            for _ in range(n):
                out = forward(x)
            out.numpy()
    else:
        if kind == "a":
            model = student
            model.compile(sgd(), ce, jit_compile=xla)
        elif kind == "c":
            model = ft_keras.ParaphraserTrainer(
                teacher, ft_keras.Paraphraser(0.5), t_tap)
            model.compile(sgd(), jit_compile=xla)
        else:
            paraphraser = ft_keras.Paraphraser(0.5)
            channels = teacher.get_layer(t_tap).output.shape[-1]
            model = ft_keras.Distiller(
                teacher, student, paraphraser,
                ft_keras.Translator(ft_keras.layers.factor_channels(channels, 0.5)),
                t_tap, s_tap)
            model.compile(sgd(), jit_compile=xla)

        def run(n):
            model.fit(data, epochs=1, steps_per_epoch=n, verbose=0)

    run(2)  # warm-up: tracing and first allocations.
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        seconds.append((time.perf_counter() - start) / steps)
    if profile and kind == "d":
        tf.profiler.experimental.start(profile)
        run(2)
        tf.profiler.experimental.stop()
    step = statistics.median(seconds)
    return {
        "kind": kind,
        "seconds_per_step": step,
        "images_per_second": batch / step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "all_seconds_per_step": seconds,
    }


def machine():
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(gpus)} "
            f"GPUs, Python {platform.python_version()}, TensorFlow "
            f"{tf.__version__}, Keras {keras.__version__}, load average "
            f"{os.getloadavg()[0]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+",
                        default=["resnet56:resnet20", "resnet50:resnet18"],
                        help="teacher:student pairs")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per repeat (default: 10 for small "
                             "networks, 3 for ResNet-18/50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--mixed_precision", action="store_true")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        kind, teacher, student, steps = args._child.split(",")
        print(json.dumps(measure(kind, teacher, student, args.batch,
                                 int(steps), args.repeats, args.xla,
                                 args.mixed_precision, args.profile)))
        return

    print(f"machine: {machine()}")
    print(f"batch {args.batch}, CIFAR shapes, median of {args.repeats} "
          f"repeats, xla={args.xla}, mixed_precision={args.mixed_precision}")
    for pair in args.pairs:
        teacher, student = pair.split(":")
        steps = args.steps or (3 if "resnet50" in pair else 10)
        results = {}
        for kind in KINDS:
            command = [sys.executable, __file__, "--batch", str(args.batch),
                       "--repeats", str(args.repeats),
                       "--_child", f"{kind},{teacher},{student},{steps}"]
            command += ["--xla"] * args.xla
            command += ["--mixed_precision"] * args.mixed_precision
            if args.profile:
                command += ["--profile", args.profile]
            out = subprocess.run(command, check=True, capture_output=True,
                                 text=True).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
        print(f"\n{teacher} -> {student} ({steps} steps x {args.repeats})")
        for kind, name in KINDS.items():
            r = results[kind]
            print(f"  ({kind}) {name:<34} {r['images_per_second']:8.1f} img/s"
                  f"  {1000 * r['seconds_per_step']:8.1f} ms/step"
                  f"  peak RSS {r['peak_rss_mib']:7.0f} MiB")
        ratio = results["d"]["seconds_per_step"] / (
            results["a"]["seconds_per_step"] + results["b"]["seconds_per_step"])
        print(f"  overhead ratio time(d) / (time(a) + time(b)) = {ratio:.3f}"
              f"  (ideal 1.0, target <= 1.10)")


if __name__ == "__main__":
    main()
