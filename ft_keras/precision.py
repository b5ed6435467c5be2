"""Whether a mixed precision policy is faster here: measured, not guessed.

`experiment.precision = 'mixed_bfloat16'` (or `'mixed_float16'`) is faster
only where the device has a fast path for it, and no CPU flag says so for
sure. On the Factor Transfer step (ResNet-56 -> ResNet-20, batch 128) bf16
ran 2.0x the speed of float32 on an Intel Xeon with AMX and 1.5x on an AMD
Zen 5 (AVX512-BF16, no AMX), but 0.72x on the same Xeon with oneDNN capped
below AMX (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`) and 0.31x without bf16
instructions (`ONEDNN_MAX_CPU_ISA=AVX512_CORE`). So the runner measures:

- `measure_speedup(policy)` times a small convolution stack forward and
  backward under float32 and under `policy`, alternating, on the device the
  run uses (the first GPU, else the CPU), in about a second, and returns
  the ratio of their speeds (above 1: the policy is faster). It tracks
  the real step: on that Xeon it gives 2.2-2.3x with AMX, 0.61-0.64x
  capped at AVX512_CORE_BF16 and 0.26x at AVX512_CORE (3 runs each);
- `check(policy, mode)` is what `experiment.precision_check` does with it:
  `'warn'` prints one line when the policy measures slower than float32,
  `'fallback'` trains in float32 instead (and says so), `'off'` does
  neither. The runner calls it once per run (never in a dry run).

`machine_info()` records what decides such speeds (CPU model and flags,
cores, threads, oneDNN settings, library versions) for benchmark results.

This module is part of the runner: it uses TensorFlow.
"""

import importlib.metadata
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

from ft_keras import _onednn
from ft_keras import _validation
from ft_keras._cpu import read_cpuinfo  # noqa: F401  (also ours to callers)

# `experiment.precision_check`.
CHECKS = ("warn", "fallback", "off")
# A policy measured below this fraction of float32's speed is "slower". The
# micro-benchmark's medians move by a few percent from run to run, and a
# policy within 5% of float32 still halves activation memory: not worth a
# warning, nor a switch.
MARGIN = 0.95
# `measure_speedup` stops at its one-image probe below this ratio.
PROBE_RATIO = 0.2
# The /proc/cpuinfo flags that decide bf16 (and fp16) speed on a CPU.
CPU_FLAGS = ("amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx2")
# The environment that caps or turns off oneDNN, TensorFlow's CPU kernels.
ONEDNN_ENV = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")
THREAD_ENV = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS")


def cpu_info(path="/proc/cpuinfo"):
    """The CPU's model name and its `CPU_FLAGS`, from `/proc/cpuinfo`.

    Returns:
        `{"model": str, "flags": {flag: bool}}`; where the file cannot be
        read (not Linux), the model is `platform.processor()` (or
        `"unknown"`) and every flag is None (unknown).

    Example:

    ```python
    info = cpu_info()
    info["flags"]["amx_bf16"]  # True on a Xeon with AMX, None off Linux
    ```
    """
    model, flags = read_cpuinfo(path)
    return {
        "model": model or platform.processor() or "unknown",
        "flags": {
            name: None if flags is None else name in flags for name in CPU_FLAGS
        },
    }


def machine_info():
    """What decides a speed measured here, as a JSON-serialisable dict: the
    CPU model and flags (`cpu_info`), cores, the thread and oneDNN settings
    of the environment (None: not set) and whether TensorFlow runs oneDNN
    (`onednn.enabled`, None before TensorFlow loads), TensorFlow's thread pools and GPUs
    (when TensorFlow is loaded) and the library versions.

    Example:

    ```python
    import json
    record = {"images_per_second": 812.0, "machine": machine_info()}
    print(json.dumps(record))
    ```
    """
    info = cpu_info()
    usable = (len(os.sched_getaffinity(0))
              if hasattr(os, "sched_getaffinity") else os.cpu_count())
    threads = {name: os.environ.get(name) for name in THREAD_ENV}
    gpus = None
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        # 0: TensorFlow's default (as many as usable cores).
        threads["intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        threads["inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
        gpus = len(tf.config.list_physical_devices("GPU"))
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": info["model"],
        "flags": info["flags"],
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "onednn": {**{name: os.environ.get(name) for name in ONEDNN_ENV},
                   "enabled": _onednn.enabled()},
        "gpus": gpus,
        "versions": versions,
    }


def _train_step(tf, kernels, dtype):
    """A traced forward + backward pass of a 3x3 convolution stack computing
    in `dtype` with float32 variables, as a Keras mixed policy runs it."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            h = tf.cast(x, dtype)
            for kernel in kernels:
                h = tf.nn.relu(tf.nn.conv2d(h, tf.cast(kernel, dtype), 1, "SAME"))
            loss = tf.reduce_mean(tf.square(tf.cast(h, "float32")))
        return tape.gradient(loss, kernels)[0]

    return step


def measure_speedup(policy, batch_size=None, image_size=32, channels=64,
                    depth=2, rounds=7, max_seconds=1.5):
    """Measures `policy`'s training speed relative to float32, here.

    Times the forward and backward pass of `depth` 3x3 convolutions of
    `channels` channels on `image_size` x `image_size` images, once under
    float32 and once under `policy`'s compute dtype (float32 variables, as
    Keras's mixed policies keep them), on the device TensorFlow places ops
    on by default (the first GPU, else the CPU). The two alternate for up
    to `rounds` rounds (fewer once `max_seconds` have passed), after one
    warm-up call each (tracing, oneDNN's kernel selection); the medians
    are compared. A policy that has no fast kernels at all is told first,
    in milliseconds, on one 8x8 image (fastest of 3 calls): one under
    `PROBE_RATIO` (0.2) of float32's speed there returns that ratio (an
    upper bound: float16 on the Xeon above probes at 0.1x, runs at
    0.003x); so does one whose warm-up call alone takes over
    `max_seconds`. It touches no Keras or random
    state: the run it precedes builds and seeds as without it.

    Args:
        policy: A Keras dtype policy name, e.g. `"mixed_bfloat16"`.
        batch_size: Images per step; None: 16 on a CPU, 256 on a GPU (where
            a small batch times kernel launches, not arithmetic).
        image_size, channels, depth: The convolution stack's shape.
        rounds: Most alternating float32 / `policy` rounds.
        max_seconds: Rounds stop after this long (from the first timed one).

    Raises:
        tf.errors.OpError: Where `policy`'s compute dtype has no kernel at
            all (e.g. float16 convolutions under
            `ONEDNN_MAX_CPU_ISA=AVX512_CORE`).

    Returns:
        float32's median step time over `policy`'s: 2.0 means twice as fast,
        0.5 half as fast.

    Example:

    ```python
    speedup = measure_speedup("mixed_bfloat16")
    print(f"bf16 trains {speedup:.2f}x the speed of float32 here")
    ```
    """
    import tensorflow as tf

    compute = keras.DTypePolicy(policy).compute_dtype
    if batch_size is None:
        batch_size = 256 if tf.config.list_logical_devices("GPU") else 16
    x, kernels = _conv_stack(tf, batch_size, image_size, channels, depth)
    steps = {"float32": _train_step(tf, kernels, "float32"),
             compute: _train_step(tf, kernels, compute)}
    speedup = _probe(steps, x[:1, :8, :8], compute)
    if speedup < PROBE_RATIO:
        return speedup
    seconds = {dtype: _seconds(step, x) for dtype, step in steps.items()}
    if seconds[compute] > max_seconds:  # Its warm-up call alone.
        return seconds["float32"] / seconds[compute]
    return _alternate(steps, x, compute, rounds, max_seconds)


def _conv_stack(tf, batch_size, image_size, channels, depth):
    """`(images, kernels)` of `measure_speedup`: a batch of normal images
    and `depth` He-initialised 3x3 kernels, from a generator seeded 0."""
    rng = np.random.default_rng(0)
    shape = (batch_size, image_size, image_size, channels)
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    scale = (2.0 / (9 * channels)) ** 0.5
    kernels = [
        tf.Variable(scale * rng.standard_normal(
            (3, 3, channels, channels), dtype=np.float32))
        for _ in range(depth)
    ]
    return x, kernels


def _alternate(steps, x, compute, rounds, max_seconds):
    """float32's median step time over `compute`'s, the two alternating
    for up to `rounds` rounds (fewer once `max_seconds` have passed)."""
    seconds = {dtype: [] for dtype in steps}
    start = time.perf_counter()
    for i in range(max(rounds, 1)):
        order = list(steps) if i % 2 == 0 else list(steps)[::-1]
        for dtype in order:
            seconds[dtype].append(_seconds(steps[dtype], x))
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(seconds["float32"]) / statistics.median(
        seconds[compute])


def _probe(steps, image, compute):
    """float32's speed over `compute`'s on one small `image`, fastest of 3
    calls each (a stall of the machine cannot fake a slow policy): a policy
    without fast kernels here (float16 on most CPUs is hundreds of times
    slower) is told in milliseconds."""
    for step in steps.values():
        _seconds(step, image)  # Tracing.
    seconds = {dtype: min(_seconds(step, image) for _ in range(3))
               for dtype, step in steps.items()}
    return seconds["float32"] / seconds[compute]


def _seconds(step, x):
    """One call's wall time; `.numpy()` waits for the device."""
    begin = time.perf_counter()
    step(x).numpy()
    return time.perf_counter() - begin


def _device_description(compute_dtype):
    """`"GPU (<name>)"`, or `"CPU (<model>, <its units for compute_dtype>)"`
    with any oneDNN setting of the environment: what `check`'s line names."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU ({details.get('device_name', gpus[0].name)})"
    info = cpu_info()
    kind = "bf16" if compute_dtype == "bfloat16" else "fp16"
    units = [(f"amx_{kind}", f"AMX-{kind.upper()}"),
             (f"avx512_{kind}", f"AVX512-{kind.upper()}")]
    if info["flags"][units[0][0]] is None:
        where = f"{kind} units unknown: no /proc/cpuinfo"
    else:
        where = ", ".join(
            label if info["flags"][flag] else f"no {label}"
            for flag, label in units
        )
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if cap:
        where += f", oneDNN capped by ONEDNN_MAX_CPU_ISA={cap}"
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") is not None:
        where += f", TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}"
    return f"CPU ({info['model']}, {where})"


def check(policy, mode="warn", speedup=None):
    """What `experiment.precision_check` does: returns the policy to train
    under, after measuring whether `policy` is slower than float32 here.

    A policy that measures below `MARGIN` (0.95) of float32's speed
    (`measure_speedup`), or cannot run here at all: with `mode="warn"` one
    line says so with the measured ratio and the device (the CPU's model,
    its AMX and AVX512 units for the policy's dtype, any oneDNN cap of the
    environment), and `policy` is returned; with `mode="fallback"` one line
    says so and `"float32"` is returned. A policy
    that is not slower, `"float32"` itself and `mode="off"` return `policy`
    silently (`"off"` and `"float32"` measure nothing).

    Args:
        policy: A Keras dtype policy name (`experiment.precision`).
        mode: One of `CHECKS`: `"warn"`, `"fallback"` or `"off"`.
        speedup: `policy`'s measured speed over float32's, if known; None
            measures it (about a second).

    Returns:
        `policy`, or `"float32"` when `mode="fallback"` and `policy` is
        slower.

    Example:

    ```python
    import keras
    policy = check("mixed_bfloat16", "fallback")  # "float32" where slower
    keras.mixed_precision.set_global_policy(policy)
    ```
    """
    _validation.one_of("experiment.precision_check", mode, CHECKS)
    compute = keras.DTypePolicy(policy).compute_dtype
    if mode == "off" or compute == "float32":
        return policy
    import tensorflow as tf

    measured, consequence = None, "training will be slower"
    if speedup is None:
        try:
            speedup = measure_speedup(policy)
        except tf.errors.OpError as e:  # No kernel at all: training fails.
            measured = f"could not run ({type(e).__name__})"
            consequence = "training would fail"
    if measured is None and speedup >= MARGIN:
        return policy
    measured = measured or f"measured {speedup:.2g}x the speed of float32"
    line = (f"[ft_keras] precision: {policy} {measured} on this "
            f"{_device_description(compute)}")
    if mode == "fallback":
        print(f"{line}: training in float32 instead "
              f"(experiment.precision_check = 'fallback'; 'warn' keeps "
              f"{policy})", flush=True)
        return "float32"
    print(f"{line}: {consequence}; set experiment.precision = 'float32' (or "
          "experiment.precision_check = 'fallback' to switch automatically)",
          flush=True)
    return policy
