"""ft_keras: Factor Transfer knowledge distillation for Keras 3 / TensorFlow.

Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018.
"""

__version__ = "0.1.0"

from ft_keras import losses
from ft_keras import optim  # registers EpochSchedule, used by saved models
from ft_keras.distiller import BaselineDistiller
from ft_keras.distiller import Distiller
from ft_keras.distiller import ParaphraserTrainer
from ft_keras.layers import Paraphraser
from ft_keras.layers import Translator
from ft_keras.losses import FactorTransferLoss

__all__ = [
    "BaselineDistiller",
    "Distiller",
    "FactorTransferLoss",
    "Paraphraser",
    "ParaphraserTrainer",
    "Translator",
    "losses",
    "optim",
]
