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

The settings by area: `data_config` (`dataset`), `network_config`
(`network`), `distillation_config` (`distillation`), `run_config`
(`experiment`, `cluster`, `deployment`; `training` is
`ft_keras.optim.TrainingConfig`); `settings` holds them all (`Settings`),
and `gin_reading` reads them from gin (`parse`, `from_gin`). Import them
from here: `from ft_keras import config; config.DataConfig`.
"""

from ft_keras.config.data_config import DataConfig
from ft_keras.config.distillation_config import DistillationConfig
from ft_keras.config.gin_reading import _read
from ft_keras.config.gin_reading import cluster
from ft_keras.config.gin_reading import dataset
from ft_keras.config.gin_reading import deployment
from ft_keras.config.gin_reading import distillation
from ft_keras.config.gin_reading import experiment
from ft_keras.config.gin_reading import factor_transfer
from ft_keras.config.gin_reading import from_gin
from ft_keras.config.gin_reading import parse
from ft_keras.config.gin_reading import training
from ft_keras.config.network_config import NetworkConfig
from ft_keras.config.network_config import network
from ft_keras.config.run_config import PRECISIONS
from ft_keras.config.run_config import STAGE_SCOPES
from ft_keras.config.run_config import STAGES
from ft_keras.config.run_config import ClusterConfig
from ft_keras.config.run_config import DeploymentConfig
from ft_keras.config.run_config import ExperimentConfig
from ft_keras.config.settings import Settings
from ft_keras.config.settings import check_weight_decay
from ft_keras.optim import TrainingConfig
from ft_keras.term_configs import FactorTransferConfig
