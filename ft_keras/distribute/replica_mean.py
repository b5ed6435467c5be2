"""The replica-mean state: BatchNormalization's moving statistics kept by
each replica and read as their mean.

`scope` makes it; `sync_replica_means` gives every replica the mean before
a stage's models are saved. Each replica's own copy, which checkpoints
keep, is `ft_keras.checkpoint.replica_copies`.
"""

import contextlib

import tensorflow as tf


def _replica_mean_state(next_creator, **kwargs):
    dtype = kwargs.get("dtype")
    if (
        not kwargs.get("trainable", True)
        and kwargs.get("aggregation") in (None, tf.VariableAggregation.NONE)
        and kwargs.get("synchronization")
        in (
            None,
            tf.VariableSynchronization.AUTO,
            tf.VariableSynchronization.ON_WRITE,
        )
        and dtype is not None
        and tf.as_dtype(dtype).is_floating
    ):
        kwargs["synchronization"] = tf.VariableSynchronization.ON_READ
        kwargs["aggregation"] = tf.VariableAggregation.MEAN
    return next_creator(**kwargs)


@contextlib.contextmanager
def scope(strategy):
    """`strategy.scope()` in which the networks and models are created.

    With several replicas, non-trainable float state updated during training
    (BatchNormalization's moving mean and variance) becomes the mean over
    the replicas: each replica updates its own copy, at no cost per step,
    and reading it outside a replica (saving, checkpoints, `get_weights`)
    averages the copies over all replicas. As the moving averages are linear
    in the batch statistics, this is the moving average of the replicas'
    mean statistics. Keras 3 creates this state without aggregation, so
    each worker would otherwise save statistics of its own shard only and
    the workers' models would differ. Batch statistics themselves stay per
    replica (no SyncBN), and validation during `fit` uses each replica's
    own copy.

    Every worker must read such state together (it is a collective op), as
    the runner does: all workers save every model.
    """
    with strategy.scope():
        if strategy.num_replicas_in_sync > 1:
            with tf.variable_creator_scope(_replica_mean_state):
                yield
        else:
            yield


def sync_replica_means(model):
    """Sets every replica's copy of `model`'s replica-mean state (`scope`:
    BatchNormalization's moving statistics) to the mean of the copies,
    which is what saving writes and loading gives every replica.

    The runner calls it before it saves a stage's models, so that the next
    stage's frozen teacher is the saved one on every replica, in the run
    that goes on as in a run resumed there. Every worker must call it together
    (the mean is a collective op), as every worker saves. Does nothing with
    one replica.

    ```python
    with distribute.scope(strategy):
        model = models.get("resnet20", num_classes=10)
    ...  # model.fit(...) under a 2-replica strategy
    distribute.sync_replica_means(model)
    ```
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return
    for state in replica_mean_variables(model):
        mean = state.read_value()
        for copy in state.values:
            copy.assign(mean)


def replica_mean_variables(model):
    """The `tf.Variable`s of `model`'s replica-mean state (`scope`)."""
    states = []
    for variable in model.non_trainable_variables:
        state = getattr(variable, "value", variable)
        if (
            getattr(state, "synchronization", None) == tf.VariableSynchronization.ON_READ
            and getattr(state, "aggregation", None) == tf.VariableAggregation.MEAN
        ):
            states.append(state)
    return states
