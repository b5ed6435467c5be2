"""Each replica's own BatchNormalization statistics, which a checkpoint keeps.

With several replicas, each keeps its own copy of the replica-mean state
(`ft_keras.distribute.scope`) and saving writes only their mean; a
checkpoint keeps every copy (`replica_copies`) and gives each replica its
own back (`restore_replica_copies`).
"""

import numpy as np
import tensorflow as tf

from ft_keras.distribute.replica_mean import replica_mean_variables
from ft_keras.distribute.workers import num_workers


def replica_copies(model):
    """Every replica's own copy of `model`'s replica-mean state
    (`ft_keras.distribute.scope`), over all workers: one array
    `[replicas, ...]` per variable, in replica order; `[]` with one replica. A collective op (every worker calls it,
    as every worker saves a checkpoint). Saving writes only their mean:
    `ft_keras.checkpoint` keeps these too, so that a run resumed at any
    step goes on from the very copies the uninterrupted run had there.

    ```python
    copies = checkpoint.replica_copies(model)
    ...
    checkpoint.restore_replica_copies(model, copies)
    ```
    """
    strategy = getattr(model, "distribute_strategy", None)
    states = replica_mean_variables(model)
    if strategy is None or strategy.num_replicas_in_sync == 1 or not states:
        return []
    if num_workers(strategy) == 1:  # every copy is here: no collective op
        return [
            np.stack([np.asarray(c) for c in strategy.experimental_local_results(state)])
            for state in states
        ]
    key = (id(strategy), tuple(id(state) for state in states))
    if key not in _gathers:

        @tf.function
        def gather_all():  # one graph: the collectives run back to back
            per_replica = strategy.run(
                lambda: [tf.expand_dims(tf.identity(s), 0) for s in states])
            return [strategy.gather(copies, axis=0) for copies in per_replica]

        _gathers.clear()  # one model's function at a time: no growth
        _gathers[key] = gather_all
    return [copies.numpy() for copies in _gathers[key]()]


_gathers = {}


def restore_replica_copies(model, copies):
    """Gives each replica its own copy from `replica_copies`' output.

    Raises:
        ValueError: `copies` are of another model or number of replicas.
    """
    strategy = getattr(model, "distribute_strategy", None)
    states = replica_mean_variables(model)
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    shapes = [(replicas, *state.shape) for state in states]
    if [tuple(np.shape(c)) for c in copies] != shapes:
        raise ValueError(
            f"The saved replica copies have shapes "
            f"{[tuple(np.shape(c)) for c in copies]}; this model on "
            f"{replicas} replicas needs {shapes}."
        )

    def assign():
        index = tf.distribute.get_replica_context().replica_id_in_sync_group
        for state, values in zip(states, copies):
            state.assign(tf.gather(tf.constant(values, state.dtype), index))

    strategy.run(assign)
