"""Networks with named feature taps for Factor Transfer.

Every builder returns a functional, channels-last `keras.Model` whose output
is the logits of a Dense layer named `logits`, and which carries identity
layers named `stage1` ... `stageN` (stage outputs) and `last_conv` (pre-BN
output of the last conv of the last block); `feature_taps(model)` lists them
(`ft_keras.taps`: which layers to tap, and tapping them).

- He et al. CIFAR ResNets: `resnet20`, `resnet32`, `resnet44`, `resnet56`,
  `resnet110` (and `cifar_resnet(depth)`).
- CIFAR ResNet-18/34/50 (MMPretrain's `ResNet_CIFAR`): `resnet18`,
  `resnet34`, `resnet50`.
- Wide ResNets: `wrn(depth, width)`.
- RepDistiller's CIFAR MobileNetV2: `mobilenetv2_half` (its "MobileNetV2",
  `mobile_half`) and `mobilenetv2_cifar(expansion, width_mult)`.
- ImageNet ResNets (torchvision): `imagenet_resnet18`, `imagenet_resnet34`,
  `imagenet_resnet50`.
- By name: `get(name, **kwargs)`, `available()`; also any
  `keras.applications.<Name>`, a `.keras` file's architecture, and your own
  factories (`register(name, factory)`).
- Teachers trained in PyTorch: `load_torch_weights(model, "x.pth")` and
  `from_torch(name, "x.pth", ...)` import the `state_dict` of torchvision's
  ResNets and RepDistiller's CIFAR networks (`torch_import`).
- BatchNormalization momentum: `get(name, bn_momentum=m)`,
  `set_bn_momentum(model, m)`, and `suited_bn_momentum(steps)`, the cap the
  runner applies to suit a stage's length (`bn_momentum`).
- Inference: `fold_batch_norm(model)` folds each BatchNormalization into the
  Conv2D before it (`FoldedConv2D`); the distillers run their frozen
  teacher that way.
"""

from ft_keras.models import bn_momentum
from ft_keras.models.blocks import ZeroPadShortcut
from ft_keras.models.bn_momentum import set_bn_momentum
from ft_keras.models.bn_momentum import suited_bn_momentum
from ft_keras.models.dtype_policy import with_dtype_policy
from ft_keras.models.folding import FoldedAway
from ft_keras.models.folding import FoldedConv2D
from ft_keras.models.folding import fold_batch_norm
from ft_keras.models.he_resnet import cifar_resnet
from ft_keras.models.he_resnet import resnet20
from ft_keras.models.he_resnet import resnet32
from ft_keras.models.he_resnet import resnet44
from ft_keras.models.he_resnet import resnet56
from ft_keras.models.he_resnet import resnet110
from ft_keras.models.mobilenet import mobilenetv2_cifar
from ft_keras.models.mobilenet import mobilenetv2_half
from ft_keras.models.registry import available
from ft_keras.models.registry import get
from ft_keras.models.registry import network_arguments
from ft_keras.models.registry import register
from ft_keras.models.registry import unsupported_arguments
from ft_keras.models.resnet import imagenet_resnet18
from ft_keras.models.resnet import imagenet_resnet34
from ft_keras.models.resnet import imagenet_resnet50
from ft_keras.models.resnet import resnet18
from ft_keras.models.resnet import resnet34
from ft_keras.models.resnet import resnet50
from ft_keras.models.torch_import import from_torch
from ft_keras.models.torch_import import load_torch_weights
from ft_keras.models.torch_import import read_state_dict
from ft_keras.models.torch_import import torch_layout
from ft_keras.models.wide_resnet import wrn
from ft_keras.taps.discovery import feature_maps
from ft_keras.taps.discovery import feature_taps

__all__ = [
    "FoldedAway",
    "FoldedConv2D",
    "ZeroPadShortcut",
    "available",
    "cifar_resnet",
    "fold_batch_norm",
    "feature_maps",
    "feature_taps",
    "from_torch",
    "get",
    "imagenet_resnet18",
    "imagenet_resnet34",
    "imagenet_resnet50",
    "load_torch_weights",
    "mobilenetv2_cifar",
    "mobilenetv2_half",
    "network_arguments",
    "read_state_dict",
    "register",
    "resnet110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "set_bn_momentum",
    "suited_bn_momentum",
    "torch_layout",
    "unsupported_arguments",
    "with_dtype_policy",
    "wrn",
]
