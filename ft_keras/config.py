"""The experiment's settings, each declared once, and bound by gin.

Every class here is a frozen dataclass registered with gin under a short
name: a field is one setting, with its default, its documentation in the
class docstring and its check in `__post_init__`, so a bad value fails when
the settings are read, before any work. In a gin file:

    dataset.name = 'cifar10'
    teacher/network.name = 'resnet56'
    student/network.name = 'resnet20'
    training.epochs = 164               # every stage...
    paraphraser/training.epochs = 6     # ...but the paraphraser's
    factor_transfer.teacher_layer = 'stage3'

`from_gin()` reads them all once, each stage's under its scope (`teacher/`,
`paraphraser/`, `student/`), into one `Settings`; `ft_keras.experiment`
takes that and reads nothing else from gin. The objects built from the
settings are ordinary Keras objects (`FactorTransferConfig.connectors`,
`TrainingConfig.build_optimizer`).
"""

import dataclasses
import re

import gin

from ft_keras import _validation
from ft_keras import optim
from ft_keras import stages
from ft_keras import term_configs
from ft_keras.data import image_folder
from ft_keras.models import bn_momentum
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


def _set(instance, name, value):
    """Normalises a field of a frozen dataclass in `__post_init__`."""
    object.__setattr__(instance, name, value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The dataset, and the batch size *per replica*. Gin: `dataset`.

    Args:
        name: A dataset of `ft_keras.data.build_dataset` (required), or
            `'image_folder'` with `path`: read back as
            `'image_folder:<absolute path>'`.
        path: The folder of `name='image_folder'`, holding
            `train/<class>/*.jpg` and `test/<class>/*.jpg`
            (`ft_keras.data.image_folder`).
        data_dir: TFDS's data directory (None: TFDS's default).
        batch_size: Training examples per replica and step.
        eval_batch_size: Evaluation batch per replica (None: `batch_size`).
        train_split, test_split: The TFDS splits (split folders of an image
            folder).
        options: `build_dataset` options of the training split (e.g.
            `{'recipe': 'cifar', 'augment': 'randaugment'}`).
        eval_options: Those of the test split (e.g. `{'mean': ..., 'std': ...}`).
            An `image_size` in `options` is the test split's too (the
            runner builds one network for it), unless given here.
    """

    name: str
    path: str = None
    data_dir: str = None
    batch_size: int = 128
    eval_batch_size: int = None
    train_split: str = "train"
    test_split: str = "test"
    options: dict = None
    eval_options: dict = None

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(
            self.batch_size, int
        ) or self.batch_size < 1:
            raise ValueError(
                "`dataset.batch_size` must be a positive integer (per "
                f"replica). Received: batch_size={self.batch_size!r}"
            )
        self._resolve_image_folder()
        _set(self, "eval_batch_size", self.eval_batch_size or self.batch_size)
        _set(self, "options", dict(self.options or {}))
        _set(self, "eval_options", dict(self.eval_options or {}))
        if "image_size" in self.options:
            # One network sees both splits (an image folder, a generic TFDS
            # dataset or ImageNet: the sizes `image_size` may change).
            self.eval_options.setdefault(
                "image_size", self.options["image_size"]
            )

    def _resolve_image_folder(self):
        """`name='image_folder'` + `path` -> `'image_folder:<abs path>'`,
        the name every `ft_keras.data` function takes; a name of that form
        fills in `path`, so `Settings.to_gin` reads back equal."""
        if not image_folder.is_image_folder(self.name):
            if self.path is not None:
                raise ValueError(
                    "`dataset.path` is the folder of `dataset.name = "
                    f"'image_folder'`, not of {self.name!r}: remove it, or "
                    f"set dataset.name = 'image_folder'. Received: "
                    f"path={self.path!r}"
                )
            return
        if self.name == image_folder.NAME:
            if self.path is None or self.path is gin.REQUIRED:
                raise ValueError(
                    "`dataset.name = 'image_folder'` needs `dataset.path`, "
                    "the folder holding train/<class>/*.jpg and "
                    "test/<class>/*.jpg: with gin/data/image_folder.gin, "
                    "--gin_bindings=\"IMAGE_FOLDER = '/path/to/root'\". "
                    f"Received: path={'gin.REQUIRED' if self.path else None}"
                )
            name = image_folder.dataset_name(self.path)
        else:
            name = image_folder.dataset_name(image_folder.root_of(self.name))
            if self.path is not None and (
                image_folder.dataset_name(self.path) != name
            ):
                raise ValueError(
                    f"`dataset.path` and `dataset.name` name two folders: "
                    f"give one. Received: name={self.name!r}, "
                    f"path={self.path!r}"
                )
        _set(self, "name", name)
        _set(self, "path", image_folder.root_of(name))


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A network of `ft_keras.models.get` and its keyword arguments.

    Attributes:
        name: The network's name.
        kwargs: Its keyword arguments; `bn_momentum` (None: capped to suit
            the stage's steps, `ft_keras.models.bn_momentum`) applies to
            every network.
        inherited: The keys of `kwargs` bound for every network
            (`network.weight_decay`) rather than under this network's scope
            (`student/network.weight_decay`): what an error about them names.
    """

    name: str
    kwargs: dict
    inherited: tuple = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        if self.kwargs.get("bn_momentum") is not None:
            bn_momentum.check_bn_momentum(
                self.kwargs["bn_momentum"], "network.bn_momentum"
            )


@gin.configurable("network")
def network(name=gin.REQUIRED, **kwargs):
    """A network of `ft_keras.models.get` and its keyword arguments
    (`weight_decay`, `shortcut`, `dropout`, ...: declared by the network's
    own factory; `bn_momentum` for every network). Bind it under a scope:
    `teacher/network.name = 'resnet56'`. An argument bound for every network
    (`network.weight_decay`) that one of them does not take is refused;
    `student/network.weight_decay = None` clears it for that one."""
    return NetworkConfig(name=name, kwargs=dict(kwargs))


TrainingConfig = optim.TrainingConfig


FactorTransferConfig = term_configs.FactorTransferConfig


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """How the `student` stage distils: the method is its list of terms.
    Gin: `distillation`.

    Args:
        terms: The terms the student learns from, each a term's
            configurable called in gin (`ft_keras.term_configs`):
            `[@factor_transfer(), @knowledge_distillation()]`. None (not
            bound): Factor Transfer alone, `[@factor_transfer()]`.
            `gin/methods/*.gin` are the named methods.
        student_loss_weight: Weight of the student's cross-entropy (1 in
            the paper; 0.1 in RepDistiller's KD).
        label: The distilled student's name in reports, before
            `" student"`; None: the terms' labels joined by `+` (`"FT+KD"`).
    """

    terms: tuple = None
    student_loss_weight: float = 1.0
    label: str = None

    def __post_init__(self):
        _validation.non_negative("distillation.student_loss_weight",
                                 self.student_loss_weight, "1 in the paper")
        if self.terms is None:
            return  # Factor Transfer, read from gin by `from_gin`
        terms = tuple(self.terms) if isinstance(self.terms, (list, tuple)) else (
            self.terms,)
        for term in terms:
            if not term_configs.is_term_config(term):
                call = "()" if callable(term) else ""
                raise ValueError(
                    "`distillation.terms` lists terms' configurables, called: "
                    "`[@factor_transfer(), @knowledge_distillation()]` "
                    f"(ft_keras.term_configs). Received: {term!r}{call and ' (add ())'}"
                )
        if not terms:
            raise ValueError(
                "`distillation.terms` is empty: list at least one term, or "
                "train the student alone with `experiment.stages = "
                "['baseline', 'evaluate']` (gin/methods/alone.gin)."
            )
        names = [term.term_name for term in terms if term.term_name is not None]
        if len(set(names)) != len(names):
            # The Distiller's rule, refused before any work.
            raise ValueError(
                f"`distillation.terms` lists {[t.reference for t in terms]}, "
                f"whose terms are named {names}; each needs its own name (its "
                "loss is logged as `<name>_loss`): call a term twice under two "
                "scopes with a name each (`@t1/attention_transfer()`, "
                "`t1/attention_transfer.name = 'at1'`)."
            )
        if not any(term.student_term for term in terms):
            raise ValueError(
                f"`distillation.terms` lists {[t.reference for t in terms]}, "
                "which only pre-train: add the terms the student stage trains "
                "with, e.g. `@knowledge_distillation()` (FitNets' second stage)."
            )
        pretraining = [term.reference for term in terms if term.pretrains]
        if len(pretraining) > 1:
            raise ValueError(
                f"`distillation.terms` lists {pretraining}, which each "
                "pre-train connectors in the one `paraphraser` stage: keep one."
            )
        _set(self, "terms", terms)
        if self.label is None:
            _set(self, "label", "+".join(term.label for term in terms))

    @property
    def pretrains(self):
        """Whether a term pre-trains connectors (the `paraphraser` stage)."""
        return any(term.pretrains for term in self.terms)


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
        _set(self, "stages", stages)
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


# The gin names. Each is the class itself, configurable: calling it reads
# the bindings of the current scope (`with gin.config_scope('student')`).
dataset = gin.external_configurable(DataConfig, "dataset")
training = gin.external_configurable(TrainingConfig, "training")
factor_transfer = term_configs.factor_transfer
distillation = gin.external_configurable(DistillationConfig, "distillation")
experiment = gin.external_configurable(ExperimentConfig, "experiment")
cluster = gin.external_configurable(ClusterConfig, "cluster")
deployment = gin.external_configurable(DeploymentConfig, "deployment")


def check_weight_decay(scope, training_config, network_config, terms=()):
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
        terms: The term configs whose connectors the stage trains
            (`DistillationConfig.terms`).
    """
    if training_config.weight_decay_mode != "coupled" or not (
        training_config.weight_decay
    ):
        return
    penalties = []
    if network_config is not None:
        penalties.append(
            (f"{scope}/network.weight_decay",
             network_config.kwargs.get("weight_decay", 0.0))
        )
    if scope in ("paraphraser", "student"):
        penalties += [(f"{term.gin_name}.connector_weight_decay",
                       term.connector_weight_decay) for term in terms]
    doubled = [f"{name} = {value!r}" for name, value in penalties if value]
    if doubled:
        raise ValueError(
            f"`{scope}/training.weight_decay_mode = 'coupled'` already decays "
            f"every trainable variable of the {scope} stage by "
            f"`{scope}/training.weight_decay = {training_config.weight_decay!r}`; "
            f"{', '.join(doubled)} would decay its kernels a second time. Set "
            "those to 0.0, or use weight_decay_mode = 'decoupled'."
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything an experiment reads: one of each config, and a
    `TrainingConfig` per training scope and a `NetworkConfig` per network.

    Attributes:
        training: `{"teacher": ..., "paraphraser": ..., "student": ...}`.
        network: `{"teacher": ..., "student": ...}`.
    """

    experiment: ExperimentConfig
    cluster: ClusterConfig
    dataset: DataConfig
    distillation: DistillationConfig
    training: dict
    network: dict
    deployment: DeploymentConfig = DeploymentConfig()

    def to_gin(self):
        """These settings as gin bindings: a config file that `from_gin`
        reads back into equal settings."""
        lines = []

        def bind(prefix, values):
            lines.extend(
                f"{prefix}.{name} = {value!r}" for name, value in values.items()
            )

        for name in ("experiment", "cluster", "dataset", "deployment"):
            bind(name, dataclasses.asdict(getattr(self, name)))
        terms = self.distillation.terms
        lines.append(f"distillation.terms = [{', '.join(t.reference for t in terms)}]")
        bind("distillation", {"student_loss_weight": self.distillation.student_loss_weight,
                              "label": self.distillation.label})
        for term in terms:
            lines.extend(f"{name} = {value!r}" for name, value in term.bindings().items())
        for scope, value in self.training.items():
            bind(f"{scope}/training", dataclasses.asdict(value))
        for scope, value in self.network.items():
            bind(f"{scope}/network", {"name": value.name, **value.kwargs})
        return "\n".join(lines) + "\n"

    def check_weight_decay(self, scope):
        """`check_weight_decay` for the training scope `scope`."""
        check_weight_decay(
            scope,
            self.training[scope],
            self.network.get(scope),
            self.distillation.terms,
        )


def _read(configurable, name, scope=None):
    """Calls a configurable under `scope`; a bad value's error names the
    binding (`paraphraser/training`), not gin's wrapper."""
    try:
        if scope is None:
            return configurable()
        with gin.config_scope(scope):
            return configurable()
    except (TypeError, ValueError) as e:
        first = str(e).split("\n")[0]
        if "missing" in first and "required" in first:
            first = f"a required value is not bound: {first.split(': ')[-1]}"
        if scope is None and f"`{name}." in first:
            raise ValueError(first) from None
        where = f"{scope}/{name}" if scope else name
        raise ValueError(f"`{where}`: {first}") from None


def from_gin():
    """Reads every setting from gin's bindings, once: the one place the
    experiment meets gin's global state."""
    return Settings(
        experiment=_read(experiment, "experiment"),
        cluster=_read(cluster, "cluster"),
        dataset=_read(dataset, "dataset"),
        distillation=_distillation(),
        training={
            scope: _read(training, "training", scope)
            for scope in ("teacher", "paraphraser", "student")
        },
        network={
            scope: _with_inherited(_read(network, "network", scope), scope)
            for scope in ("teacher", "student")
        },
        deployment=_read(deployment, "deployment"),
    )


def _distillation():
    """`distillation`, with Factor Transfer as its term where none is
    bound."""
    settings = _read(distillation, "distillation")
    if settings.terms is not None:
        return settings
    return dataclasses.replace(
        settings, terms=(_read(factor_transfer, "factor_transfer"),))


def _with_inherited(network_config, scope):
    """`network_config` with the keys bound for every network, not under
    `scope`, as its `inherited`."""
    inherited = []
    for key in network_config.kwargs:
        try:
            gin.query_parameter(f"{scope}/network.{key}")
        except ValueError:
            inherited.append(key)
    return dataclasses.replace(network_config, inherited=tuple(inherited))


def parse(gin_files, gin_bindings):
    """Parses gin files and bindings, failing on unknown names at once;
    a setting of the named methods that terms replaced says what to bind."""
    try:
        gin.parse_config_files_and_bindings(
            list(gin_files), list(gin_bindings), finalize_config=False
        )
    except ValueError as e:
        gone = re.match(r"Configurable 'distillation' doesn't have a parameter "
                        r"named '(\w+)'", str(e))
        if not gone:
            raise
        raise ValueError(
            f"`distillation.{gone.group(1)}` is gone: a method is its list of "
            "terms, `distillation.terms = [@knowledge_distillation()]` with "
            "each term's settings bound on it (`knowledge_distillation."
            "weight = 0.9`, `distillation.student_loss_weight = 0.1`); "
            "gin/methods/*.gin are the named methods."
        ) from None
