"""PyTorch reference networks for tests/test_torch_import.py.

Each module rebuilds, in a few lines written for these tests, a network of
one PyTorch source whose checkpoints `ft_keras.models.load_torch_weights`
imports: the same module names and tensor shapes (so the same `state_dict`
keys) and the same forward pass, in eval mode. They are not copies of that
code; each names the file and version it follows:

- `torchvision_resnet`: `torchvision/models/resnet.py` of torchvision
  0.29.1 (BSD-3-Clause).
- `repdistiller`: RepDistiller's (BSD-2-Clause, Yonglong Tian)
  `models/resnet.py`, `models/resnetv2.py`, `models/wrn.py` and
  `models/mobilenetv2.py` at commit b84f547c5db6a35318d4671d7d5c4de74c822403.

Each was checked once against its source (torchvision 0.29.1's wheel,
RepDistiller's files; every depth and width the tests use, and resnet110,
resnet8x4, ResNet34/50, wrn_40_1): the same `state_dict` keys in the same
order and shapes, and the same logits (max difference 0.0) with one
network's weights loaded into the other.
"""
