"""Timing of train steps inside one `fit` call, shared by the benchmarks.

A `fit` call's wall time includes starting and deleting its dataset
iterator; with TensorFlow 2.21 the deletion can block for seconds (see
`iterator_stall.py`). The step time here is measured between consecutive
batch ends inside one `fit`, so neither tracing nor iterator set-up and
tear-down is counted.
"""

import statistics
import time

import keras


class StepTimes(keras.callbacks.Callback):
    """Records the wall time at the start and end of every training batch."""

    def __init__(self):
        super().__init__()
        self.begins = []
        self.ends = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    @property
    def durations(self):
        """Seconds of each batch, from its start to its end."""
        return [end - begin for begin, end in zip(self.begins, self.ends)]


def fit_step_seconds(model, dataset, steps, repeats, warmup=2):
    """Seconds per train step of `model.fit`: the median over `repeats`
    blocks of `steps` consecutive steps, after `warmup` steps (tracing,
    first allocations) in the same `fit` call. Returns (median, blocks)."""
    timer = StepTimes()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps * repeats,
              verbose=0, callbacks=[timer])
    ends = timer.ends[warmup - 1:]
    blocks = [(ends[(i + 1) * steps] - ends[i * steps]) / steps
              for i in range(repeats)]
    return statistics.median(blocks), blocks
