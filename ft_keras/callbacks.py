"""Callbacks the runner adds to every stage, and the check that a trained
network does not test at chance (`chance_warning`)."""

import math
import statistics
import time

import keras


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops a stage with `NonFiniteLossError` naming stage, epoch and step.

    Like `keras.callbacks.TerminateOnNaN(raise_error=True)` it raises, so
    `fit` does not reach `on_train_end` and the checkpoint callback after it
    (`ft_keras.checkpoint.ResumableCheckpoint`) neither saves the bad step
    nor deletes the last good checkpoint; what it adds is the message: the
    stage, epoch and step, and what to do, one line that the runner prints
    as its error (exit status 1).

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


def chance_warning(name, test_top1, train_top1, num_classes, split="test"):
    """One line when a trained network scores near chance on `split` while
    its training accuracy is high; None otherwise.

    Such a result cannot be right: the network learned, and something
    between training and testing differs. Near chance is at most a tenth of
    the way from chance (`1 / num_classes`) to 100%; high is at least half
    of the way.

    Arguments:
        name: What to call the network in the line (e.g. `"student"`).
        test_top1: Its top-1 accuracy on `split`, in [0, 1].
        train_top1: Its training top-1 accuracy (last epoch), or None.
        num_classes: The number of classes.
        split: `"test"` or `"validation"`.

    Example:

    ```python
    chance_warning("student", 0.1056, 0.8658, 10)   # a warning line
    chance_warning("student", 0.8250, 0.8729, 10)   # None
    ```
    """
    if train_top1 is None or num_classes < 2:
        return None
    chance = 1.0 / num_classes
    if test_top1 > chance + 0.1 * (1 - chance):
        return None
    if train_top1 < chance + 0.5 * (1 - chance):
        return None
    return (
        f"[ft_keras] warning: the {name} scores {100 * test_top1:.2f}% top-1 "
        f"on the {split} split, chance for {num_classes} classes, while its "
        f"training top-1 reached {100 * train_top1:.2f}%: not a usable model. "
        "Likely causes: BatchNormalization moving statistics that lag the "
        "weights (a momentum too high for the run's steps: set "
        "`network.bn_momentum`, e.g. 0.9, or `models.get(..., "
        "bn_momentum=0.9)`), or test images normalised differently from the "
        "training ones."
    )


class ChanceAccuracyWarning(keras.callbacks.Callback):
    """Prints `chance_warning`'s line once when the validation top-1 stays
    near chance while the training top-1 is high: for `patience`
    consecutive epochs, or at the last epoch. The sign of BatchNormalization
    statistics that lag the weights, or of test data normalised
    differently.

    Arguments:
        num_classes: The number of classes.
        metric: The accuracy metric's name in the logs (`"accuracy"`, or
            `"top1"` as the runner names it); `val_<metric>` is read too.
        name: What to call the network in the line.
        patience: Epochs in a row that make it warn before the end.

    Example:

    ```python
    model.fit(train, validation_data=test, epochs=5,
              callbacks=[ChanceAccuracyWarning(num_classes=10)])
    ```
    """

    def __init__(self, num_classes, metric="accuracy", name="model", patience=3):
        super().__init__()
        self.num_classes = num_classes
        self.metric = metric
        self.name = name
        self.patience = patience
        self.warning = None
        self._last = None
        self._in_a_row = 0

    def _check(self, logs):
        validation = logs.get(f"val_{self.metric}")
        if validation is None:
            return None
        return chance_warning(
            self.name,
            float(validation),
            float(logs.get(self.metric, 0.0)),
            self.num_classes,
            split="validation",
        )

    def _warn(self, line):
        if line and self.warning is None:
            self.warning = line
            print(line, flush=True)

    def on_epoch_end(self, epoch, logs=None):
        self._last = self._check(logs or {})
        self._in_a_row = self._in_a_row + 1 if self._last else 0
        if self._in_a_row >= self.patience:
            self._warn(self._last)

    def on_train_end(self, logs=None):
        self._warn(self._last)
