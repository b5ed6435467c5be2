"""A run stopped at a chosen step, as a kill or a scheduler's preemption
would stop it there: for the tests of exact resumption."""

import keras


class Killed(Exception):
    """Stands for a kill: the run stops, nothing is cleaned up."""


class StopAt(keras.callbacks.Callback):
    """At the start of batch `batch` of epoch `epoch` (both from 0), calls
    `action`; by default raises `Killed`, as a kill would stop the run
    there."""

    def __init__(self, epoch, batch, action=None):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None
        self.action = action

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            if self.action is None:
                raise Killed
            self.action()
