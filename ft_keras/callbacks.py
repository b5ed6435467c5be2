"""Callbacks the runner adds to every stage."""

import math
import statistics
import time

import keras


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops a stage with `NonFiniteLossError` naming stage, epoch and step.

    Like `keras.callbacks.TerminateOnNaN(raise_error=True)` it raises, so
    `fit` does not reach `on_train_end` and `BackupAndRestore` keeps the last
    good checkpoint; what it adds is the message: the stage, epoch and step,
    and what to do, one line that the runner prints as its error (exit
    status 1).

    Example:

    ```python
    model.fit(ds, epochs=10, callbacks=[StopOnNonFiniteLoss("teacher")])
    ```
    """

    def __init__(self, stage):
        super().__init__()
        self.stage = stage
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"Stage {self.stage!r}: the loss became {float(loss)} at "
                f"epoch {self._epoch + 1}, step {batch + 1}. The last good "
                "checkpoint is kept; lower the learning rate (or fix the "
                "data) and rerun the same command to resume from it."
            )


class Throughput(keras.callbacks.Callback):
    """Measures wall time and images per second of a `fit` call.

    `images_per_second` is the median over epochs after the first (which
    includes tracing), or the first epoch's rate if there is only one.
    """

    def __init__(self, global_batch_size, steps_per_epoch):
        super().__init__()
        self.images_per_epoch = global_batch_size * steps_per_epoch
        self.epoch_seconds = []
        self._start = None
        self._epoch_start = None
        self.wall_time = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_train_end(self, logs=None):
        self.wall_time = time.perf_counter() - self._start

    @property
    def images_per_second(self):
        if not self.epoch_seconds:
            return None
        seconds = self.epoch_seconds[1:] or self.epoch_seconds
        return self.images_per_epoch / statistics.median(seconds)
