"""Makes Keras 3 `fit`/`evaluate` work under `MultiWorkerMirroredStrategy`.

Keras 3 (checked with 3.15.1) does not support `tf.distribute.
MultiWorkerMirroredStrategy` with two or more workers
(https://github.com/keras-team/keras/issues/20585). Two places of its
TensorFlow trainer (`keras/src/backend/tensorflow/trainer.py`) fail:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch to build
   the model symbolically and "reduces" it with
   `strategy.reduce("MEAN", batch, axis=None)`. In multi-worker mode that
   raises `ValueError: Attempt to convert a value (PerReplica: ...)` before
   the first step. The build only needs shapes and dtypes, so we take the
   local replica's batch instead (what the reduce returns on one worker).
2. `reduce_per_replica(..., reduction="auto")`, run after every train/test
   step, reduces each metric with `strategy.reduce("MEAN", v, axis=0)` in
   multi-worker mode: scalar metrics have no axis 0, and a vector metric
   would be averaged over its own entries. We average over replicas only,
   which is what Keras does for every other strategy
   (`tf.reduce_mean(local_results, axis=0)` over the stacked replicas), in
   one batched all-reduce of all the logs (`batch_reduce_to`) instead of one
   collective op per metric and step.

Both replacements change nothing unless the strategy is a
`MultiWorkerMirroredStrategy` in multi-worker mode; they are installed once
per process by `install()` (called by `ft_keras.distribute.make_strategy`).
`install()` raises if the Keras internals it replaces no longer exist or are
no longer looked up by name, instead of silently training with the bug.

Guards in `tests/test_multiworker.py`:
`test_keras_functions_replaced_for_multiworker_are_unchanged` fails when a
Keras upgrade edits the replaced functions (`changed_keras_sources`):
re-check the issue, then delete this module or port it.
`test_plain_keras_fit_and_evaluate_on_two_workers` runs real worker
processes: plain Keras fails there without `install()` and trains with it.

Example:

```python
from ft_keras import _keras_multiworker
_keras_multiworker.install()
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG set
with strategy.scope():
    model = make_model()
    model.compile(...)
model.fit(dataset)
```
"""

import hashlib
import inspect

import keras
import tensorflow as tf

ISSUE = "https://github.com/keras-team/keras/issues/20585"

# sha1 of the source (Keras 3.15.1) of each function `install` replaces.
_REPLACED_SOURCES = {
    "reduce_per_replica": "1def5ef1659f750645c3702314bdef71bf0d7e8b",
    "TensorFlowTrainer._maybe_symbolic_build": (
        "abb81c290f518d9be50674fd4671ec9d03825061"
    ),
}

_installed = False
_originals = {}


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def _code_names(code):
    """Global names read by a code object and the functions nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


def check_keras_internals():
    """Raises `RuntimeError` if the Keras internals patched here changed."""
    try:
        trainer = _trainer_module()
        cls = trainer.TensorFlowTrainer
        missing = [
            name
            for name, owner in (
                ("reduce_per_replica", trainer),
                ("_collective_all_reduce_multi_worker", trainer),
                ("_maybe_symbolic_build", cls),
                ("_symbolic_build", cls),
                ("_make_function", cls),
            )
            if not hasattr(owner, name)
        ]
    except ImportError as e:
        missing = [str(e)]
    if not missing and "reduce_per_replica" not in _code_names(
        cls._make_function.__code__
    ):
        missing = ["TensorFlowTrainer._make_function -> reduce_per_replica"]
    if missing:
        raise RuntimeError(
            f"Keras {keras.__version__} changed the internals that "
            f"ft_keras/_keras_multiworker.py patches for {ISSUE} "
            f"(not found: {', '.join(missing)}). Check whether this Keras "
            "version supports MultiWorkerMirroredStrategy (then delete the "
            "workaround) or update it to the new trainer code."
        )


def _replaced_functions():
    trainer = _trainer_module()
    current = {
        "reduce_per_replica": trainer.reduce_per_replica,
        "TensorFlowTrainer._maybe_symbolic_build": (
            trainer.TensorFlowTrainer._maybe_symbolic_build
        ),
    }
    current.update(_originals)
    return current


def changed_keras_sources():
    """Names of the replaced Keras functions whose source is not the one
    this workaround was written for (empty for Keras 3.15.1)."""
    return sorted(
        name
        for name, function in _replaced_functions().items()
        if hashlib.sha1(inspect.getsource(function).encode()).hexdigest()
        != _REPLACED_SOURCES[name]
    )


def _in_multi_worker_mode(strategy):
    return _trainer_module()._collective_all_reduce_multi_worker(strategy)


def _local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def install():
    """Installs the workaround (idempotent). Returns None."""
    global _installed
    if _installed:
        return
    check_keras_internals()
    trainer = _trainer_module()
    original_reduce = trainer.reduce_per_replica
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    _originals.update(_replaced_functions())

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _in_multi_worker_mode(strategy):
            # One batched all-reduce for all the logs, not one each.
            flat = tf.nest.flatten(values)
            reduced = strategy.extended.batch_reduce_to(
                tf.distribute.ReduceOp.MEAN, [(v, v) for v in flat]
            )
            return tf.nest.pack_sequence_as(
                values,
                [strategy.experimental_local_results(v)[0] for v in reduced],
            )
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or not _in_multi_worker_mode(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(_local_value, next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    reduce_per_replica.__doc__ = original_reduce.__doc__
    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _installed = True


def installed():
    """Whether `install()` has run in this process."""
    return _installed
