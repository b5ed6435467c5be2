"""Networks by name (`get`, `available`) and their feature taps
(`feature_taps`)."""

import re

from ft_keras.models import he_resnet
from ft_keras.models import resnet
from ft_keras.models import wide_resnet

_BUILDERS = {
    "resnet20": he_resnet.resnet20,
    "resnet32": he_resnet.resnet32,
    "resnet44": he_resnet.resnet44,
    "resnet56": he_resnet.resnet56,
    "resnet110": he_resnet.resnet110,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "imagenet_resnet18": resnet.imagenet_resnet18,
    "imagenet_resnet34": resnet.imagenet_resnet34,
    "imagenet_resnet50": resnet.imagenet_resnet50,
}
# WRNs used in the distillation literature; `get` accepts any
# `wrn{depth}_{width}`.
_WRN_PRESETS = ("wrn16_1", "wrn16_2", "wrn16_4", "wrn28_10", "wrn40_1",
                "wrn40_2", "wrn40_4")
_WRN_PATTERN = re.compile(r"wrn(\d+)_(\d+)")
_STAGE_PATTERN = re.compile(r"stage(\d+)")
LAST_CONV = "last_conv"


def available():
    """Returns the names `get` accepts, as a sorted tuple.

    Wide ResNets are listed by their common presets; `get` also accepts any
    other `wrn{depth}_{width}` with `(depth - 4) % 6 == 0`.

    Example:

    ```python
    assert "resnet20" in available() and "wrn40_2" in available()
    ```
    """
    return tuple(sorted(_BUILDERS) + sorted(_WRN_PRESETS))


def get(name, model_name=None, **kwargs):
    """Builds a network by name.

    A plain factory: the runner calls it with `teacher/network.name` and
    `student/network.name` and their keyword arguments
    (`ft_keras.config.network`), and users call it directly.

    Arguments:
        name: One of `available()`, or `"wrn{depth}_{width}"` for any Wide
            ResNet (e.g. `"wrn40_2"` is `wrn(40, 2)`).
        model_name: Name of the returned `keras.Model` (the builder's `name`
            argument, which `name` here already means the network).
            Defaults to the network's name, e.g. `"resnet56"`.
        **kwargs: Passed to the builder: `num_classes`, `input_shape`,
            `weight_decay`, and `shortcut` (He et al. CIFAR ResNets) or
            `dropout` (WRNs).

    Returns:
        A functional `keras.Model` whose output is the logits and which has
        the feature taps listed by `feature_taps`.

    Example:

    ```python
    model = get("wrn16_2", num_classes=100)
    assert model.name == "wrn16_2"
    assert get("resnet20", model_name="student").name == "student"
    assert feature_taps(model) == ["stage1", "stage2", "stage3", "last_conv"]
    ```
    """
    if isinstance(name, str):
        if name in _BUILDERS:
            return _BUILDERS[name](name=model_name, **kwargs)
        match = _WRN_PATTERN.fullmatch(name)
        if match:
            depth, width = (int(g) for g in match.groups())
            return wide_resnet.wrn(depth, width, name=model_name, **kwargs)
    raise ValueError(
        f"Unknown network name: {name!r}. Valid names are "
        f"{', '.join(available())}, or any 'wrn{{depth}}_{{width}}' with "
        "(depth - 4) % 6 == 0."
    )


def feature_taps(model):
    """Returns the names of the feature taps in `model`, in network order.

    The taps are the layers named `stage1` ... `stageN` (each stage's output),
    then `last_conv` (the pre-BN output of the last conv of the last block),
    as placed by every builder in `ft_keras.models`; any that `model` lacks
    are left out. `model.get_layer(tap).output` is the tapped tensor.

    Arguments:
        model: A `keras.Model`.

    Returns:
        A list of layer names.

    Example:

    ```python
    from ft_keras.models import resnet20
    assert feature_taps(resnet20()) == [
        "stage1", "stage2", "stage3", "last_conv"]
    ```
    """
    names = [layer.name for layer in model.layers]
    stages = sorted(
        (n for n in names if _STAGE_PATTERN.fullmatch(n)),
        key=lambda n: int(_STAGE_PATTERN.fullmatch(n).group(1)),
    )
    return stages + ([LAST_CONV] if LAST_CONV in names else [])
