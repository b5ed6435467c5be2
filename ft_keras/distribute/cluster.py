"""Which cluster this process belongs to, and its `tf.distribute` resolver.

A cluster is named by `TF_CONFIG` (set by the launcher), or by the
variables of an `srun` step of several SLURM tasks; `cluster.resolver`
(see `ft_keras.config`) picks one, or `"auto"` the one found.
"""

import json
import os

import tensorflow as tf

# The values of `cluster.resolver` (bound by gin in `ft_keras.config`, which
# takes them from here).
RESOLVERS = ("auto", "tf_config", "slurm")


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
