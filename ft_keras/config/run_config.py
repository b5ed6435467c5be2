"""How and where a run goes: its stages, its cluster, its exported files.

`ExperimentConfig` (gin's `experiment`), `ClusterConfig` (`cluster`) and
`DeploymentConfig` (`deployment`).
"""

import dataclasses

from ft_keras import _validation
from ft_keras import stages
from ft_keras.config._frozen import set_field
from ft_keras.distribute import AUTO_SHARD_POLICIES
from ft_keras.distribute import COMMUNICATIONS
from ft_keras.distribute import RESOLVERS
from ft_keras.distribute import STRATEGIES
from ft_keras.precision import CHECKS as PRECISION_CHECKS

# The stages, in order, and the gin scope whose `training` (and `network`)
# each training stage uses (`ft_keras.stages`, the stage table).
STAGES = stages.NAMES
STAGE_SCOPES = stages.SCOPES
# Keras dtype policies the runner trains under (`experiment.precision`).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Which stages run, and how. Gin: `experiment`.

    Args:
        stages: Ordered subset of `STAGES`, `("teacher", "paraphraser",
            "student", "baseline", "evaluate", "export", "deployment")`;
            `baseline` trains the student alone (cross-entropy only) for
            comparison; `deployment` exports every trained network and
            measures each file (`ft_keras.deployment`, `DeploymentConfig`).
        teacher_checkpoint: A trained teacher: a `.keras` model, or
            `.weights.h5` weights of `teacher/network`, or a PyTorch
            `state_dict` (`.pth`/`.pt`) of `teacher/network`'s layout
            (`ft_keras.models.torch_import`); trained if None.
        seed: None, or an integer that seeds weights, shuffling and
            augmentation and makes the input pipeline deterministic, so a
            run on the CPU repeats exactly. TensorFlow's op determinism is
            not turned on: GPU kernels may still differ from run to run.
        strategy: `"auto"` (MultiWorkerMirroredStrategy when a cluster is
            configured, see `ClusterConfig`; else MirroredStrategy over the
            visible GPUs, the default strategy on a CPU-only machine),
            `"default"`, `"mirrored"` or `"multi_worker"`. The `--strategy`
            flag sets it.
        checkpoint_every: `"epoch"` or a number of steps between the
            checkpoints that make stages resumable
            (`ft_keras.checkpoint.ResumableCheckpoint`).
        representative_batches: Batches of training images used to calibrate
            the int8 TFLite export.
        validate: Evaluate on the test split after every epoch.
        precision: The Keras dtype policy the networks are built and trained
            under, one of `PRECISIONS`: `"float32"`, `"mixed_bfloat16"`
            (bfloat16 compute, float32 weights: CPUs with AVX512-BF16 or AMX,
            TPUs, recent GPUs) or `"mixed_float16"` (GPUs; Keras adds loss
            scaling). The same as calling
            `keras.mixed_precision.set_global_policy(precision)` before
            building the models in Python; the runner restores the previous
            policy when it ends. The exported student computes in float32
            either way.
        precision_check: What the runner does when `precision` is a mixed
            policy that trains slower than float32 on this machine, measured
            in about a second before the run (`ft_keras.precision.check`; on a
            CPU without fast bf16 units bf16 trains slower): `"warn"` (default)
            prints one line with the measured ratio, `"fallback"` trains in
            float32 instead (and says so), `"off"` measures nothing. Dry runs
            never measure.
    """

    stages: tuple = ("teacher", "paraphraser", "student", "evaluate", "export")
    teacher_checkpoint: str = None
    seed: int = None
    strategy: str = "auto"
    checkpoint_every: object = "epoch"
    representative_batches: int = 8
    validate: bool = False
    precision: str = "float32"
    precision_check: str = "warn"

    def __post_init__(self):
        stages = tuple(self.stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or len(set(stages)) != len(stages):
            raise ValueError(
                f"`experiment.stages` must be distinct names among {STAGES}. "
                f"Received: stages={stages}"
            )
        order = [STAGES.index(s) for s in stages]
        if order != sorted(order):
            raise ValueError(
                f"`experiment.stages` must be in the order {STAGES}. "
                f"Received: stages={stages}"
            )
        set_field(self, "stages", stages)
        _validation.one_of("experiment.strategy", self.strategy, STRATEGIES)
        _validation.one_of("experiment.precision", self.precision, PRECISIONS)
        _validation.one_of(
            "experiment.precision_check", self.precision_check,
            PRECISION_CHECKS,
        )
        if self.checkpoint_every != "epoch" and (
            isinstance(self.checkpoint_every, bool)
            or not isinstance(self.checkpoint_every, int)
            or self.checkpoint_every < 1
        ):
            raise ValueError(
                "`experiment.checkpoint_every` must be 'epoch' or a positive "
                "number of steps. Received: "
                f"checkpoint_every={self.checkpoint_every!r}"
            )


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Multi-worker training: how workers find each other and communicate.
    Gin: `cluster`.

    Used when `experiment.strategy` is `"multi_worker"`, or `"auto"` and a
    cluster is configured (see `ft_keras.distribute` and `launch/`).

    Args:
        resolver: `"tf_config"` (the `TF_CONFIG` environment variable, e.g.
            set by Kubernetes operators or launch/local_workers.sh),
            `"slurm"` (the tasks of an `srun` step), or `"auto"` (TF_CONFIG
            if set, else SLURM inside an `srun` step of several tasks). The
            `--cluster` flag sets it.
        communication: Collective implementation: `"auto"`, `"ring"` (gRPC)
            or `"nccl"` (GPUs).
        timeout_seconds: Fail a collective op that waits longer than this
            (None: wait; a dead worker is still detected by heartbeats).
        auto_shard: How `tf.data` splits the data among workers: `"auto"`
            (by file when the dataset reads files, else by data), `"data"`,
            `"file"` or `"off"`.
        slurm_port_base: First port of the workers on each SLURM node (one
            port per task on the node).
        gpus_per_node: GPUs per SLURM node (None: those visible; 0 for
            CPU-only nodes).
    """

    resolver: str = "auto"
    communication: str = "auto"
    timeout_seconds: float = None
    auto_shard: str = "auto"
    slurm_port_base: int = 8888
    gpus_per_node: int = None

    def __post_init__(self):
        _validation.one_of("cluster.resolver", self.resolver, RESOLVERS)
        _validation.one_of("cluster.communication", self.communication,
                           COMMUNICATIONS)
        _validation.one_of("cluster.auto_shard", self.auto_shard,
                           AUTO_SHARD_POLICIES)
        if self.timeout_seconds is not None and (
            isinstance(self.timeout_seconds, bool)
            or not isinstance(self.timeout_seconds, (int, float))
            or self.timeout_seconds <= 0
        ):
            raise ValueError(
                "`cluster.timeout_seconds` must be None or a positive number "
                f"of seconds. Received: timeout_seconds={self.timeout_seconds!r}"
            )
        for name, low in (("slurm_port_base", 1), ("gpus_per_node", 0)):
            value = getattr(self, name)
            if value is None and name == "gpus_per_node":
                continue
            if isinstance(value, bool) or not isinstance(value, int) \
                    or value < low:
                raise ValueError(
                    f"`cluster.{name}` must be an integer >= {low}. "
                    f"Received: {name}={value!r}"
                )


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """How the exported files are made and measured. Gin: `deployment`.

    Read by the `export` stage (`full_integer`), the `deployment` stage and
    `python -m ft_keras.deployment` (`ft_keras.deployment`), whose flags
    override these for one report. None of them changes what is trained,
    so a finished workdir takes other values.

    Args:
        latency_runs: Timed batch-1 runs per file (after a warm-up); the
            latency is their median and 90th percentile.
        batch: The batch size of the throughput measurement.
        threads: Threads of LiteRT and ONNX Runtime; None for the number of
            usable cores.
        full_integer: Also write (and measure) the full-integer int8 LiteRT
            file, `student_int8_full.tflite`: int8 weights and activations,
            uint8 input and int8 output, for integer-only accelerators.
    """

    latency_runs: int = 50
    batch: int = 32
    threads: int = None
    full_integer: bool = False

    def __post_init__(self):
        for name in ("latency_runs", "batch", "threads"):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`deployment.{name}` must be a positive integer. "
                    f"Received: {name}={value!r}"
                )
        if not isinstance(self.full_integer, bool):
            raise ValueError(
                "`deployment.full_integer` must be True or False. "
                f"Received: full_integer={self.full_integer!r}"
            )
