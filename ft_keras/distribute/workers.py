"""Chief and workers: who writes where, and the collectives that keep
every worker at the same point (`barrier`, `any_worker`) and on its share
of the data (`shard_options`)."""

import collections
import hashlib
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

# The values of `cluster.auto_shard` (bound by gin in `ft_keras.config`,
# which takes them from here).
AUTO_SHARD_POLICIES = ("auto", "data", "file", "off")

_SHARD_POLICY = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}

# Built once per strategy: the all-reduce of `barrier`.
_barriers = {}

TaskInfo = collections.namedtuple(
    "TaskInfo", ["task_type", "task_id", "num_workers", "is_chief"]
)


def task_info(strategy):
    """`TaskInfo(task_type, task_id, num_workers, is_chief)` of this process.

    Outside a cluster: `(None, None, 1, True)`. The chief is the `chief`
    task, or `worker` 0 when the cluster has no `chief`.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return TaskInfo(None, None, 1, True)
    task_type, task_id = resolver.task_type, resolver.task_id
    workers = sum(len(spec.get(job, ())) for job in ("chief", "worker"))
    chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in spec
    )
    return TaskInfo(task_type, task_id, workers, chief)


def is_chief(strategy):
    """Whether this process writes the workdir (True outside a cluster)."""
    return task_info(strategy).is_chief


def num_workers(strategy):
    """Number of worker processes training together (1 outside a cluster)."""
    return task_info(strategy).num_workers


def worker_dir(workdir, strategy):
    """Where this process writes: `workdir` for the chief; for another
    worker, a directory of its own in the local temp dir, named after the
    workdir and the task (so a restarted worker finds and replaces it)."""
    info = task_info(strategy)
    if info.is_chief:
        return os.fspath(workdir)
    return worker_temp_dir(workdir, info.task_type, info.task_id)


def worker_temp_dir(workdir, task_type, task_id):
    """The temporary directory of a non-chief worker (see `worker_dir`)."""
    key = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:12]
    return os.path.join(
        tempfile.gettempdir(), f"ft_keras-{key}-{task_type}{task_id}"
    )


_any_flags = {}


def barrier(strategy):
    """Waits until every worker reaches this call (no-op for one worker).

    Every worker must call it the same number of times, like any collective
    op; the runner calls it after each stage so that the artifacts the chief
    has just written are complete before other workers read them.
    """
    if num_workers(strategy) < 2:
        return
    if id(strategy) not in _barriers:

        @tf.function
        def all_reduce_one():
            ones = strategy.run(lambda: tf.ones((), tf.float32))
            return strategy.reduce("SUM", ones, axis=None)

        _barriers[id(strategy)] = all_reduce_one
    _barriers[id(strategy)]()


def any_worker(strategy, flag):
    """Whether `flag` is true on any worker: the same answer on every
    worker (for one worker, `flag`). A collective op, like `barrier`:
    every worker calls it at the same point. The runner asks it after
    each training step whether a worker received a preemption signal, so
    that all stop at the same step (`ft_keras.checkpoint`)."""
    if num_workers(strategy) < 2:
        return bool(flag)
    if id(strategy) not in _any_flags:

        @tf.function
        def all_reduce_flag(value):
            flags = strategy.run(lambda: tf.identity(value))
            return strategy.reduce("SUM", flags, axis=None)

        _any_flags[id(strategy)] = all_reduce_flag
    count = _any_flags[id(strategy)](tf.constant(1.0 if flag else 0.0))
    return float(count) > 0


def weights_fingerprint(model):
    """A short hash of `model`'s weights: equal on every worker when they
    are in sync (the runner prints it after each stage)."""
    digest = hashlib.sha1()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def remove_worker_dir(path, workdir):
    """Deletes a worker's temporary directory (never the workdir)."""
    if os.path.abspath(path) != os.path.abspath(workdir):
        shutil.rmtree(path, ignore_errors=True)


def shard_options(policy="auto"):
    """`tf.data.Options` with the auto-shard policy among workers:
    `"auto"` (by file when the dataset reads files, else by data),
    `"file"`, `"data"` (every worker reads everything and keeps its part of
    each global batch) or `"off"`."""
    if policy not in AUTO_SHARD_POLICIES:
        raise ValueError(
            f"`cluster.auto_shard` must be one of {AUTO_SHARD_POLICIES}. "
            f"Received: auto_shard={policy!r}"
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _SHARD_POLICY[policy]
    return options
