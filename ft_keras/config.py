"""What gin binds: small configurable functions that return plain settings.

Each stage of an experiment reads its settings from these functions, called
under a gin scope (`teacher/`, `paraphraser/`, `student/`); the objects built
from them are ordinary Keras objects. In a gin file:

    dataset.name = 'cifar10'
    teacher/network.name = 'resnet56'
    student/network.name = 'resnet20'
    teacher/training.epochs = 164
    factor_transfer.teacher_layer = 'stage3'

Every function is called once when the experiment starts, before any work,
so a missing required value or a typo fails at once.
"""

import dataclasses

import gin

from ft_keras import layers
from ft_keras import losses
from ft_keras import optim
from ft_keras.distribute import AUTO_SHARD_POLICIES
from ft_keras.distribute import COMMUNICATIONS
from ft_keras.distribute import RESOLVERS
from ft_keras.distribute import STRATEGIES

STAGES = ("teacher", "paraphraser", "student", "baseline", "evaluate", "export")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str
    data_dir: str
    batch_size: int
    eval_batch_size: int
    train_split: str
    test_split: str
    options: dict
    eval_options: dict


@gin.configurable("dataset")
def dataset(
    name=gin.REQUIRED,
    data_dir=None,
    batch_size=128,
    eval_batch_size=None,
    train_split="train",
    test_split="test",
    options=None,
    eval_options=None,
):
    """The dataset, and the batch size *per replica*.

    `options` go to `ft_keras.data.build_dataset` for the training split,
    `eval_options` for the test split (e.g. `{'mean': ..., 'std': ...}`).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`dataset.batch_size` must be a positive integer (per replica). "
            f"Received: batch_size={batch_size!r}"
        )
    return DataConfig(
        name=name,
        data_dir=data_dir,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size or batch_size,
        train_split=train_split,
        test_split=test_split,
        options=dict(options or {}),
        eval_options=dict(eval_options or {}),
    )


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    name: str
    kwargs: dict


@gin.configurable("network")
def network(name=gin.REQUIRED, **kwargs):
    """A network of `ft_keras.models.get` and its keyword arguments
    (`weight_decay`, `shortcut`, `dropout`, ...). Bind it under a scope:
    `teacher/network.name = 'resnet56'`."""
    return NetworkConfig(name=name, kwargs=dict(kwargs))


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    optimizer: dict


@gin.configurable("training")
def training(
    epochs=gin.REQUIRED,
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    schedule="step",
    boundaries=(),
    decay=0.1,
    warmup_epochs=0,
    weight_decay=None,
    weight_decay_mode="decoupled",
):
    """A stage's schedule: epochs and the optimizer settings of
    `ft_keras.optim.build_optimizer` (learning-rate boundaries in epochs).
    Bind it under a scope: `student/training.epochs = 164`.

    Args:
        weight_decay: None, or the weight decay coefficient of the stage's
            optimizer, applied as `weight_decay_mode` says to every
            trainable variable of the stage (the student and translator,
            the paraphraser, or the teacher; never a frozen network).
        weight_decay_mode: `"decoupled"` (the default): Keras' own decay,
            `w -= lr * weight_decay * w` outside the gradient. `"coupled"`:
            PyTorch's `SGD(weight_decay=...)`, as every reference code of
            Factor Transfer: `weight_decay * w` is added to each gradient
            before momentum, with PyTorch's momentum buffer
            (`ft_keras.optim.TorchSGD`; needs `optimizer='sgd'`). With
            `"coupled"` and a non-zero `weight_decay`, leave the kernel L2
            penalties of the same stage (`network.weight_decay`,
            `factor_transfer.connector_weight_decay`) at 0, or the kernels
            are decayed twice; the experiment refuses that.
        Other arguments: those of `ft_keras.optim.build_optimizer`.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"`training.epochs` must be a positive integer. Received: "
            f"epochs={epochs!r}"
        )
    if weight_decay_mode not in optim.WEIGHT_DECAY_MODES:
        raise ValueError(
            f"`training.weight_decay_mode` must be one of "
            f"{optim.WEIGHT_DECAY_MODES} ('coupled' is PyTorch's SGD weight "
            f"decay). Received: weight_decay_mode={weight_decay_mode!r}"
        )
    if weight_decay_mode == "coupled" and optimizer != "sgd":
        raise ValueError(
            "`training.weight_decay_mode='coupled'` is PyTorch's SGD weight "
            "decay and needs `training.optimizer='sgd'`. Received: "
            f"optimizer={optimizer!r}"
        )
    if weight_decay is not None and (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or weight_decay < 0
    ):
        raise ValueError(
            "`training.weight_decay` must be None or a non-negative number. "
            f"Received: weight_decay={weight_decay!r}"
        )
    return TrainingConfig(
        epochs=epochs,
        optimizer=dict(
            optimizer=optimizer,
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            schedule=schedule,
            boundaries=tuple(boundaries),
            decay=decay,
            warmup_epochs=warmup_epochs,
            weight_decay=weight_decay,
            weight_decay_mode=weight_decay_mode,
        ),
    )


@dataclasses.dataclass(frozen=True)
class FactorTransferConfig:
    teacher_layer: str
    student_layer: str
    rate: float
    paraphraser_bn: bool
    translator_bn: bool
    negative_slope: float
    connector_weight_decay: float
    reconstruction: str
    beta: float
    p: int
    factor: str
    rounding: str
    p_form: str


@gin.configurable("factor_transfer")
def factor_transfer(
    teacher_layer=gin.REQUIRED,
    student_layer=gin.REQUIRED,
    rate=0.5,
    paraphraser_bn=False,
    translator_bn=False,
    negative_slope=0.1,
    connector_weight_decay=0.0,
    reconstruction="l1",
    beta=500.0,
    p=1,
    factor="full",
    rounding="half_even",
    p_form="norm",
):
    """The method's knobs. Defaults are the paper's code.

    Args:
        teacher_layer, student_layer: The taps (layer names).
        rate: The paraphrase rate k.
        paraphraser_bn, translator_bn: BatchNormalization in each connector.
        negative_slope: The connectors' LeakyReLU slope.
        connector_weight_decay: An L2 penalty on the connectors' kernels
            only, with the gradient `connector_weight_decay * kernel`. To
            decay the connectors as PyTorch's SGD does (biases and BN too),
            leave it at 0 and use `training.weight_decay_mode='coupled'`.
        reconstruction: The paraphraser's reconstruction loss
            (`ft_keras.losses.reconstruction_loss`).
        beta: Weight of the factor transfer loss.
        p: 1 or 2.
        factor: `"full"` or `"attention"` (`FactorTransferLoss`).
        rounding: How `C * rate` becomes the factor's channel count
            (`ft_keras.layers.factor_channels`): `"half_even"` (the paper's
            code, `int(round(C * k))`), `"floor"` (RepDistiller and
            torchdistill, `int(C * k)`) or `"half_up"`.
        p_form: `"norm"` (the paper, torchdistill) or `"mean"` (RepDistiller):
            how the `p=2` loss reduces the difference (`FactorTransferLoss`).
    """
    if rounding not in layers.ROUNDINGS:
        raise ValueError(
            f"`factor_transfer.rounding` must be one of {layers.ROUNDINGS}. "
            f"Received: rounding={rounding!r}"
        )
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(
            f"`factor_transfer.p` must be 1 or 2. Received: p={p!r}"
        )
    if p_form not in losses.P_FORMS:
        raise ValueError(
            f"`factor_transfer.p_form` must be one of {losses.P_FORMS}. "
            f"Received: p_form={p_form!r}"
        )
    return FactorTransferConfig(
        teacher_layer=teacher_layer,
        student_layer=student_layer,
        rate=rate,
        paraphraser_bn=paraphraser_bn,
        translator_bn=translator_bn,
        negative_slope=negative_slope,
        connector_weight_decay=connector_weight_decay,
        reconstruction=reconstruction,
        beta=beta,
        p=p,
        factor=factor,
        rounding=rounding,
        p_form=p_form,
    )


def check_weight_decay(scope, training_config, network_config, ft_config):
    """Raises a `ValueError` if stage `scope` would decay kernels twice.

    With `weight_decay_mode='coupled'` and a non-zero `weight_decay`, the
    stage's optimizer already decays every trainable variable; a kernel L2
    penalty on the same variables (`network.weight_decay` of the trained
    network, `factor_transfer.connector_weight_decay` of the trained
    connector) would add a second decay.

    Args:
        scope: `"teacher"`, `"paraphraser"` or `"student"`.
        training_config: The stage's `TrainingConfig`.
        network_config: The trained network's `NetworkConfig` (None for
            the paraphraser stage).
        ft_config: The `FactorTransferConfig`.
    """
    optimizer = training_config.optimizer
    if optimizer.get("weight_decay_mode") != "coupled" or not optimizer.get(
        "weight_decay"
    ):
        return
    penalties = []
    if network_config is not None:
        penalties.append(
            (f"{scope}/network.weight_decay",
             network_config.kwargs.get("weight_decay", 0.0))
        )
    if scope in ("paraphraser", "student"):
        penalties.append(
            ("factor_transfer.connector_weight_decay",
             ft_config.connector_weight_decay)
        )
    doubled = [f"{name} = {value!r}" for name, value in penalties if value]
    if doubled:
        raise ValueError(
            f"`{scope}/training.weight_decay_mode = 'coupled'` already decays "
            f"every trainable variable of the {scope} stage by "
            f"`{scope}/training.weight_decay = {optimizer['weight_decay']!r}`; "
            f"{', '.join(doubled)} would decay its kernels a second time. Set "
            "those to 0.0, or use weight_decay_mode = 'decoupled'."
        )


METHODS = ("ft", "ft+kd", "kd", "at")


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    method: str
    ce_weight: float
    kd_weight: float
    temperature: float
    at_weight: float
    at_teacher_layers: tuple
    at_student_layers: tuple


@gin.configurable("distillation")
def distillation(
    method="ft",
    ce_weight=None,
    kd_weight=None,
    temperature=4.0,
    at_weight=1000.0,
    at_teacher_layers=None,
    at_student_layers=None,
):
    """How the `student` stage distils, so methods compare with one flag.

    Args:
        method: `"ft"` (Factor Transfer, the default), `"ft+kd"` (FT plus a
            Hinton KD term), `"kd"` (Hinton KD alone) or `"at"` (attention
            transfer alone). KD and AT skip the paraphraser stage.
        ce_weight: Weight of the cross-entropy; defaults to 0.1 for `"kd"`
            (RepDistiller) and 1 otherwise.
        kd_weight: Weight of the KD term; defaults to 0.9 for `"kd"`
            (RepDistiller) and 1 for `"ft+kd"`.
        temperature: KD temperature (4 in RepDistiller).
        at_weight: Weight of attention transfer (1000 in RepDistiller).
        at_teacher_layers, at_student_layers: AT taps; default to the
            `factor_transfer` taps.
    """
    if method not in METHODS:
        raise ValueError(
            f"`distillation.method` must be one of {METHODS}. Received: "
            f"method={method!r}"
        )
    if ce_weight is None:
        ce_weight = 0.1 if method == "kd" else 1.0
    if kd_weight is None:
        kd_weight = {"kd": 0.9, "ft+kd": 1.0}.get(method, 0.0)
    return DistillationConfig(
        method=method,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        at_weight=at_weight,
        at_teacher_layers=tuple(at_teacher_layers or ()),
        at_student_layers=tuple(at_student_layers or ()),
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    stages: tuple
    teacher_checkpoint: str
    seed: int
    strategy: str
    checkpoint_every: object
    representative_batches: int
    validate: bool


@gin.configurable("experiment")
def experiment(
    stages=("teacher", "paraphraser", "student", "evaluate", "export"),
    teacher_checkpoint=None,
    seed=None,
    strategy="auto",
    checkpoint_every="epoch",
    representative_batches=8,
    validate=False,
):
    """Which stages run, and how.

    Args:
        stages: Ordered subset of `("teacher", "paraphraser", "student",
            "baseline", "evaluate", "export")`; `baseline` trains the student
            alone (cross-entropy only) for comparison.
        teacher_checkpoint: A trained teacher (`.keras` model or
            `.weights.h5` weights of `teacher/network`); trained if None.
        seed: None, or an integer that seeds weights, shuffling and
            augmentation and makes the input pipeline deterministic, so a
            run on the CPU repeats exactly. TensorFlow's op determinism is
            not turned on: GPU kernels may still differ from run to run.
        strategy: `"auto"` (MultiWorkerMirroredStrategy when a cluster is
            configured, see `cluster`; else MirroredStrategy over the
            visible GPUs, the default strategy on a CPU-only machine),
            `"default"`, `"mirrored"` or `"multi_worker"`. The `--strategy`
            flag sets it.
        checkpoint_every: `"epoch"` or a number of steps between the
            `BackupAndRestore` checkpoints that make stages resumable.
        representative_batches: Batches of training images used to calibrate
            the int8 TFLite export.
        validate: Evaluate on the test split after every epoch.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or len(set(stages)) != len(stages):
        raise ValueError(
            f"`experiment.stages` must be distinct names among {STAGES}. "
            f"Received: stages={tuple(stages)}"
        )
    order = [STAGES.index(s) for s in stages]
    if order != sorted(order):
        raise ValueError(
            f"`experiment.stages` must be in the order {STAGES}. Received: "
            f"stages={tuple(stages)}"
        )
    if strategy not in STRATEGIES:
        raise ValueError(
            f"`experiment.strategy` must be one of {STRATEGIES}. Received: "
            f"strategy={strategy!r}"
        )
    if checkpoint_every != "epoch" and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            "`experiment.checkpoint_every` must be 'epoch' or a positive "
            f"number of steps. Received: checkpoint_every={checkpoint_every!r}"
        )
    return ExperimentConfig(
        stages=tuple(stages),
        teacher_checkpoint=teacher_checkpoint,
        seed=seed,
        strategy=strategy,
        checkpoint_every=checkpoint_every,
        representative_batches=representative_batches,
        validate=validate,
    )


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    resolver: str
    communication: str
    timeout_seconds: float
    auto_shard: str
    slurm_port_base: int
    gpus_per_node: int


@gin.configurable("cluster")
def cluster(
    resolver="auto",
    communication="auto",
    timeout_seconds=None,
    auto_shard="auto",
    slurm_port_base=8888,
    gpus_per_node=None,
):
    """Multi-worker training: how workers find each other and communicate.

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
    choices = {
        "resolver": (resolver, RESOLVERS),
        "communication": (communication, COMMUNICATIONS),
        "auto_shard": (auto_shard, AUTO_SHARD_POLICIES),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(
                f"`cluster.{name}` must be one of {allowed}. Received: "
                f"{name}={value!r}"
            )
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool)
        or not isinstance(timeout_seconds, (int, float))
        or timeout_seconds <= 0
    ):
        raise ValueError(
            "`cluster.timeout_seconds` must be None or a positive number of "
            f"seconds. Received: timeout_seconds={timeout_seconds!r}"
        )
    for name, value, low in (
        ("slurm_port_base", slurm_port_base, 1),
        ("gpus_per_node", gpus_per_node, 0),
    ):
        if value is None and name == "gpus_per_node":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"`cluster.{name}` must be an integer >= {low}. Received: "
                f"{name}={value!r}"
            )
    return ClusterConfig(
        resolver=resolver,
        communication=communication,
        timeout_seconds=timeout_seconds,
        auto_shard=auto_shard,
        slurm_port_base=slurm_port_base,
        gpus_per_node=gpus_per_node,
    )


def parse(gin_files, gin_bindings):
    """Parses gin files and bindings, failing on unknown names at once."""
    gin.parse_config_files_and_bindings(
        list(gin_files), list(gin_bindings), finalize_config=False
    )
