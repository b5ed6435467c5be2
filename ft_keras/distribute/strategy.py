"""One `tf.distribute` strategy per process, made from the run's settings.

`make_strategy` turns `experiment.strategy` and `cluster.*` (see
`ft_keras.config`) into the strategy: `"auto"` picks
`MultiWorkerMirroredStrategy` in a cluster (`ft_keras.distribute.cluster`),
`MirroredStrategy` over local GPUs, else the default strategy.
"""

import logging

import tensorflow as tf

from ft_keras import _keras_multiworker
from ft_keras.distribute.cluster import detect_cluster
from ft_keras.distribute.cluster import make_resolver

# The values of `experiment.strategy` and `cluster.communication` (bound by
# gin in `ft_keras.config`, which takes them from here).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
COMMUNICATIONS = ("auto", "ring", "nccl")

_COMMUNICATION = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}

# One strategy per process and settings: a second MirroredStrategy object
# can break collective ops ("Shape mismatch in the collective instance"),
# and a MultiWorkerMirroredStrategy can only be created once.
_strategies = {}


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
