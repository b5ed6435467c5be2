"""How long deleting a `tf.data` iterator blocks, with and without autotune.

TensorFlow 2.21's autotuner runs a background loop per iterator whose sleep
doubles from 10 ms (10, 20, 40, ... ms). Deleting the iterator waits for that
loop's next wake-up when it misses the wake-up call, which happens in some
deletions and not others: an iterator that lived `t` seconds then blocks its
deleter until about the next `0.01 * (2**k - 1)` seconds. A `fit` epoch of
3 s can end with a stall of 2.1 s, and every Keras epoch makes a new
iterator. This script deletes iterators of a few lifetimes `--trials` times
each, with `tf.data.Options().autotune.enabled` True (TensorFlow's default)
and False (`ft_keras.data.build_dataset`'s default), and prints how many
deletions stalled (> 50 ms) and the mean and longest stall.

    python benchmarks/iterator_stall.py
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402


def stall(autotune, lifetime):
    """Seconds that `del iterator` blocks after `lifetime` seconds of use."""
    ds = (
        tf.data.Dataset.range(2**62)
        .map(lambda v: v + 1, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    options.autotune.enabled = autotune
    iterator = iter(ds.with_options(options))
    start = time.perf_counter()
    while time.perf_counter() - start < lifetime:
        next(iterator)
    start = time.perf_counter()
    del iterator
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lifetimes", type=float, nargs="+",
                        default=[1.0, 3.0])
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"{args.trials} deletions per row")
    print("| iterator lifetime (s) | autotune | deletions that stalled | "
          "mean stall (s) | longest stall (s) |")
    print("|---|---|---|---|---|")
    for lifetime in args.lifetimes:
        for autotune in (True, False):
            stalls = [stall(autotune, lifetime) for _ in range(args.trials)]
            slow = sum(s > 0.05 for s in stalls)
            print(f"| {lifetime:g} | {'on' if autotune else 'off'} | "
                  f"{slow} of {args.trials} | "
                  f"{sum(stalls) / len(stalls):.2f} | {max(stalls):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
