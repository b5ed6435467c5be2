"""Reading the settings from gin: the gin names, `parse` and `from_gin`."""

import dataclasses
import re

import gin

from ft_keras import term_configs
from ft_keras.config.data_config import DataConfig
from ft_keras.config.distillation_config import DistillationConfig
from ft_keras.config.network_config import network
from ft_keras.config.run_config import ClusterConfig
from ft_keras.config.run_config import DeploymentConfig
from ft_keras.config.run_config import ExperimentConfig
from ft_keras.config.settings import Settings
from ft_keras.optim import TrainingConfig

# The gin names. Each is the class itself, configurable: calling it reads
# the bindings of the current scope (`with gin.config_scope('student')`).
# Gin knows them as `ft_keras.config.<name>` (`training` as `ft_keras.optim`'s).
_MODULE = "ft_keras.config"
dataset = gin.external_configurable(DataConfig, "dataset", module=_MODULE)
training = gin.external_configurable(TrainingConfig, "training")
factor_transfer = term_configs.factor_transfer
distillation = gin.external_configurable(
    DistillationConfig, "distillation", module=_MODULE)
experiment = gin.external_configurable(
    ExperimentConfig, "experiment", module=_MODULE)
cluster = gin.external_configurable(ClusterConfig, "cluster", module=_MODULE)
deployment = gin.external_configurable(
    DeploymentConfig, "deployment", module=_MODULE)


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
