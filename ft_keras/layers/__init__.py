"""The Keras layers of ft_keras: Factor Transfer's connectors, the fused
BatchNormalization and the patch convolutions.

- `Paraphraser` and `Translator`, with `factor_channels` and `ROUNDINGS`
  (`connectors`);
- `BatchNormalization`, Keras's layer on TensorFlow's fused kernel
  (`batch_norm`);
- `PatchConv2D` and `PatchConv2DTranspose`, stride-1 convolutions as matrix
  products on small maps with many channels (`patch_conv`).
"""

from ft_keras.layers.batch_norm import BatchNormalization
from ft_keras.layers.connectors import ROUNDINGS
from ft_keras.layers.connectors import Paraphraser
from ft_keras.layers.connectors import Translator
from ft_keras.layers.connectors import factor_channels
from ft_keras.layers.patch_conv import PATCH_CONV_MAX_POSITIONS
from ft_keras.layers.patch_conv import PATCH_CONV_MIN_CHANNELS
from ft_keras.layers.patch_conv import PatchConv2D
from ft_keras.layers.patch_conv import PatchConv2DTranspose

__all__ = [
    "BatchNormalization",
    "PATCH_CONV_MAX_POSITIONS",
    "PATCH_CONV_MIN_CHANNELS",
    "Paraphraser",
    "PatchConv2D",
    "PatchConv2DTranspose",
    "ROUNDINGS",
    "Translator",
    "factor_channels",
]
