"""Training beyond one device: strategies, clusters, chief and workers.

`make_strategy` turns the settings of `experiment.strategy` and `cluster.*`
(see `ft_keras.config`) into one `tf.distribute` strategy per process:

- `"auto"`: `MultiWorkerMirroredStrategy` when a cluster is configured
  (`TF_CONFIG`, or an `srun` step of several SLURM tasks),
  `MirroredStrategy` over the local GPUs if there are any, else the default
  strategy.
- `"multi_worker"`: `MultiWorkerMirroredStrategy`, over the cluster of
  `cluster.resolver` (`"tf_config"`, `"slurm"` or `"auto"`) or, without one,
  over the local devices of this single worker.
- `"mirrored"`, `"default"`: one machine.

In a cluster every worker runs the same command. Each step's global batch
(`dataset.batch_size` x all replicas) is split across the workers by
`tf.data` auto-sharding; gradients are all-reduced, so every worker holds the
same weights. The chief (task `chief`, or `worker` 0 when there is none)
writes the workdir; the others write what Keras makes every worker write
(checkpoints, saved models: saving reads distributed variables) into a
temporary `worker_dir` that is removed afterwards. The workdir must be on a
filesystem every worker can read (NFS, Lustre, a Kubernetes
ReadWriteMany volume): workers resume from the chief's checkpoints and read
its artifacts between stages, after a `barrier`.

Example:

```python
strategy = make_strategy("auto")   # TF_CONFIG set by the launcher
with scope(strategy):
    model = build_model()
    model.compile(...)
model.fit(dataset.with_options(shard_options("data")), epochs=10)
if is_chief(strategy):
    model.save("model.keras")
else:
    model.save(os.path.join(worker_dir("/runs/a", strategy), "model.keras"))
```
"""

import collections
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from ft_keras import _keras_multiworker

# The values of `experiment.strategy` and `cluster.*` (bound by gin in
# `ft_keras.config`, which takes them from here).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
RESOLVERS = ("auto", "tf_config", "slurm")
COMMUNICATIONS = ("auto", "ring", "nccl")
AUTO_SHARD_POLICIES = ("auto", "data", "file", "off")

_SHARD_POLICY = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}
_COMMUNICATION = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}

# One strategy per process and settings: a second MirroredStrategy object
# can break collective ops ("Shape mismatch in the collective instance"),
# and a MultiWorkerMirroredStrategy can only be created once.
_strategies = {}

# Built once per strategy: the all-reduce of `barrier`.
_barriers = {}

TaskInfo = collections.namedtuple(
    "TaskInfo", ["task_type", "task_id", "num_workers", "is_chief"]
)


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(
            f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={raw!r}. "
            "See launch/README.md for its format."
        ) from None
    return value if isinstance(value, dict) else {}


def _in_slurm_step():
    try:
        return (
            "SLURM_PROCID" in os.environ
            and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
        )
    except ValueError:
        return False


def detect_cluster():
    """The cluster this process belongs to: `"tf_config"` if `TF_CONFIG`
    names one, `"slurm"` inside an `srun` step of several tasks, else None."""
    if _tf_config().get("cluster"):
        return "tf_config"
    if _in_slurm_step():
        return "slurm"
    return None


def _slurm_resolver(port_base, gpus_per_node):
    """A resolver for the tasks of the current `srun` step, one worker per
    task, ports `port_base + local task index` on each node."""
    missing = [
        name
        for name in (
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            "SLURM_STEP_NODELIST",
            "SLURM_STEP_TASKS_PER_NODE",
        )
        if name not in os.environ
    ]
    if missing:
        raise ValueError(
            "`cluster.resolver='slurm'` needs the variables of an srun step; "
            f"missing: {', '.join(missing)}. Start the workers with srun "
            "(launch/slurm_train.sh), or set `cluster.resolver='tf_config'`."
        )
    slurm = tf.distribute.cluster_resolver.SlurmClusterResolver
    num_tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    if gpus_per_node is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        gpus_per_node = len(tf.config.list_physical_devices("GPU"))
    if gpus_per_node:
        return slurm(
            port_base=port_base,
            gpus_per_node=gpus_per_node,
            auto_set_gpu="CUDA_VISIBLE_DEVICES" not in os.environ,
        )
    # CPU-only nodes: SlurmClusterResolver divides GPUs among tasks and
    # cannot describe zero GPUs, so take its cluster and task and state
    # that the workers have no accelerator.
    hosts = slurm(
        port_base=port_base,
        gpus_per_node=num_tasks,
        gpus_per_task=1,
        auto_set_gpu=False,
    )
    spec = hosts.cluster_spec()
    task_type, task_id = hosts.get_task_info()
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec,
        task_type=task_type,
        task_id=task_id,
        num_accelerators={"GPU": 0},
        rpc_layer="grpc",
    )


def make_resolver(resolver="auto", slurm_port_base=8888, gpus_per_node=None):
    """A `tf.distribute.cluster_resolver` for `resolver` (see
    `ft_keras.config.cluster`), or None when `"auto"` finds no cluster."""
    if resolver not in RESOLVERS:
        raise ValueError(
            f"`cluster.resolver` must be one of {RESOLVERS}. Received: "
            f"resolver={resolver!r}"
        )
    if resolver == "auto":
        resolver = detect_cluster()
        if resolver is None:
            return None
    if resolver == "slurm":
        return _slurm_resolver(slurm_port_base, gpus_per_node)
    if not _tf_config().get("cluster"):
        raise ValueError(
            "`cluster.resolver='tf_config'` but TF_CONFIG names no cluster "
            f"(TF_CONFIG={os.environ.get('TF_CONFIG')!r}). Set it as in "
            "launch/README.md, or use launch/local_workers.sh."
        )
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _resolve_kind(kind, cluster):
    if kind not in STRATEGIES:
        raise ValueError(
            f"`experiment.strategy` must be one of {STRATEGIES}. Received: "
            f"strategy={kind!r}"
        )
    if kind != "auto":
        return kind
    resolver = getattr(cluster, "resolver", "auto")
    if resolver != "auto" or detect_cluster():
        return "multi_worker"
    if tf.config.list_physical_devices("GPU"):
        return "mirrored"
    return "default"


def make_strategy(kind="auto", cluster=None):
    """The process's `tf.distribute` strategy for these settings.

    Args:
        kind: `experiment.strategy`: `"auto"`, `"default"`, `"mirrored"` or
            `"multi_worker"`.
        cluster: A `ft_keras.config.ClusterConfig` (resolver, collective
            communication, timeout, ...), or None for the defaults.

    Returns:
        The strategy, created on the first call and returned again by later
        calls with the same settings. Call it at program start, before any
        other TensorFlow op: a `MultiWorkerMirroredStrategy` configures the
        TensorFlow runtime.

    Raises:
        ValueError: unknown settings, or a cluster that cannot be resolved.
        RuntimeError: a second, different multi-worker strategy requested in
            the same process.
    """
    resolved = _resolve_kind(kind, cluster)
    if resolved == "default":
        return tf.distribute.get_strategy()
    if resolved == "mirrored":
        key = ("mirrored",)
    else:
        key = (
            "multi_worker",
            getattr(cluster, "resolver", "auto"),
            getattr(cluster, "communication", "auto"),
            getattr(cluster, "timeout_seconds", None),
            getattr(cluster, "slurm_port_base", 8888),
            getattr(cluster, "gpus_per_node", None),
        )
    if key in _strategies:
        return _strategies[key]
    if resolved == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        others = [k for k in _strategies if k[0] == "multi_worker"]
        if others:
            raise RuntimeError(
                "A MultiWorkerMirroredStrategy with other settings already "
                f"exists in this process ({others[0][1:]}); TensorFlow allows "
                "one per process. Use the same `cluster.*` settings."
            )
        _keras_multiworker.install()
        tf.get_logger().addFilter(_quiet_collectives)
        resolver = make_resolver(
            key[1], slurm_port_base=key[4], gpus_per_node=key[5]
        )
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=_COMMUNICATION[key[2]], timeout_seconds=key[3]
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    _strategies[key] = strategy
    return strategy


def _quiet_collectives(record):
    """Drops TensorFlow's INFO line logged at every eager all-reduce (each
    read of a metric in multi-worker mode)."""
    return not (
        record.levelno <= logging.INFO
        and str(record.msg).startswith("Collective all_reduce tensors")
    )


# ----------------------------------------------------------------------
# Chief and workers.


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


# ----------------------------------------------------------------------
# Variables and data.


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
    for state in _replica_mean_state_of(model):
        mean = state.read_value()
        for copy in state.values:
            copy.assign(mean)


def _replica_mean_state_of(model):
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


def replica_copies(model):
    """Every replica's own copy of `model`'s replica-mean state (`scope`),
    over all workers: one array `[replicas, ...]` per variable, in replica
    order; `[]` with one replica. A collective op (every worker calls it,
    as every worker saves a checkpoint). Saving writes only their mean:
    `ft_keras.checkpoint` keeps these too, so that a run resumed at any
    step goes on from the very copies the uninterrupted run had there.

    ```python
    copies = distribute.replica_copies(model)
    ...
    distribute.restore_replica_copies(model, copies)
    ```
    """
    strategy = getattr(model, "distribute_strategy", None)
    states = _replica_mean_state_of(model)
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
    states = _replica_mean_state_of(model)
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


def remove_worker_dir(path, workdir):
    """Deletes a worker's temporary directory (never the workdir)."""
    if os.path.abspath(path) != os.path.abspath(workdir):
        shutil.rmtree(path, ignore_errors=True)
