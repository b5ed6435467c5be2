"""The callbacks every stage gets."""

import math

import keras
import numpy as np
import pytest

from ft_keras import callbacks


def test_stop_on_non_finite_loss_names_stage_epoch_and_step():
    stop = callbacks.StopOnNonFiniteLoss("student")
    stop.on_epoch_begin(2)
    stop.on_train_batch_end(0, {"loss": 1.5})
    with pytest.raises(callbacks.NonFiniteLossError) as info:
        stop.on_train_batch_end(6, {"loss": float("nan")})
    message = str(info.value)
    assert "Stage 'student'" in message and "nan" in message
    assert "epoch 3, step 7" in message and "\n" not in message
    with pytest.raises(callbacks.NonFiniteLossError, match="inf"):
        stop.on_train_batch_end(0, {"loss": math.inf})


def test_stop_on_non_finite_loss_stops_fit_before_on_train_end():
    ended = []

    class Ended(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            ended.append(True)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e30), "mse")
    x = np.full((8, 1), 1e20, np.float32)
    with pytest.raises(callbacks.NonFiniteLossError):
        model.fit(x, x, epochs=3, verbose=0,
                  callbacks=[callbacks.StopOnNonFiniteLoss("teacher"), Ended()])
    assert not ended


def test_throughput_is_the_median_epoch_after_the_first():
    throughput = callbacks.Throughput(global_batch_size=10, steps_per_epoch=5)
    throughput.epoch_seconds = [9.0, 1.0, 2.0, 4.0]
    assert throughput.images_per_second == 50 / 2.0
    throughput.epoch_seconds = [5.0]
    assert throughput.images_per_second == 10.0
    throughput.epoch_seconds = []
    assert throughput.images_per_second is None


def test_throughput_records_wall_time_and_epochs_of_a_fit():
    throughput = callbacks.Throughput(global_batch_size=4, steps_per_epoch=2)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=4, epochs=3,
              verbose=0, callbacks=[throughput])
    assert len(throughput.epoch_seconds) == 3
    assert throughput.wall_time >= sum(throughput.epoch_seconds)
