"""`Settings`: everything an experiment reads, one of each config."""

import dataclasses

from ft_keras.config.data_config import DataConfig
from ft_keras.config.distillation_config import DistillationConfig
from ft_keras.config.run_config import ClusterConfig
from ft_keras.config.run_config import DeploymentConfig
from ft_keras.config.run_config import ExperimentConfig


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
