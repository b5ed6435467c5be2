"""Teachers trained in PyTorch: a `state_dict` (`.pth` / `.pt`) imported
into the network of ours that has its layout.

Our networks follow their PyTorch references layer for layer
(`ft_keras.models.blocks`: symmetric padding, BatchNorm with PyTorch's
epsilon 1e-5), so the weights of a network trained in PyTorch give the same
logits here (float32; tests/test_torch_import.py compares them). The layouts
read, by our network:

    imagenet_resnet18/34/50   torchvision's resnet18/34/50
                              (torchvision/models/resnet.py)
    resnet20/32/44/56/110     RepDistiller's resnet20 ... resnet110
                              (models/resnet.py)
    resnet18/34/50            RepDistiller's ResNet18/34/50
                              (models/resnetv2.py)
    wrn{depth}_{width}        RepDistiller's wrn_{depth}_{width}
                              (models/wrn.py)
    mobilenetv2_half          RepDistiller's mobile_half
                              (models/mobilenetv2.py)

Every other network is refused in one line: ours built with
`shortcut="zero_pad"` (RepDistiller's CIFAR ResNets project), a
`keras.applications` network or your own. A checkpoint of a network with no
counterpart here (RepDistiller's resnet8x4 / resnet32x4, VGGs, ShuffleNets,
torchvision's ResNeXts) stops at its first tensor that does not fit.

RepDistiller's CIFAR networks pool their last map with a fixed window (8x8;
2x2 for the MobileNetV2): our global average pool at the 32x32 images they
take. torch is needed only to read a file (`pip install "ft_keras[torch]"`);
it is imported then.
"""

import os
import re

import keras
import numpy as np

from ft_keras.models import blocks
from ft_keras.models import registry

SUFFIXES = (".pth", ".pt")

# Our layer name -> PyTorch module name, per layout. `j` and `g` are our
# 1-based block and group numbers; PyTorch's `nn.Sequential` counts from 0.
# `m` is the module's name, or its index in a MobileNetV2 block's
# `nn.Sequential` (`_MOBILENET_PARTS`).
_RESNET = (
    (r"stem_conv", "conv1"),
    (r"stem_bn", "bn1"),
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_(?P<m>conv\d|bn\d)", "layer{i}.{j}.{m}"),
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_shortcut_conv", "layer{i}.{j}.downsample.0"),
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_shortcut_bn", "layer{i}.{j}.downsample.1"),
    (r"logits", "fc"),
)
_RESNET_V2 = _RESNET[:3] + (
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_shortcut_conv", "layer{i}.{j}.shortcut.0"),
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_shortcut_bn", "layer{i}.{j}.shortcut.1"),
    (r"logits", "linear"),
)
_WRN = (
    (r"stem_conv", "conv1"),
    (r"stage(?P<i>\d+)_block(?P<j>\d+)_(?P<m>bn\d|conv\d)", "block{i}.layer.{j}.{m}"),
    (
        r"stage(?P<i>\d+)_block(?P<j>\d+)_shortcut_conv",
        "block{i}.layer.{j}.convShortcut",
    ),
    (r"final_bn", "bn1"),
    (r"logits", "fc"),
)
_MOBILENET_PARTS = {
    "expand": 0,
    "expand_bn": 1,
    "depthwise": 3,
    "depthwise_bn": 4,
    "project": 6,
    "project_bn": 7,
}
_MOBILENET = (
    (r"stem_conv", "conv1.0"),
    (r"stem_bn", "conv1.1"),
    (
        rf"group(?P<g>\d+)_block(?P<j>\d+)_(?P<m>{'|'.join(_MOBILENET_PARTS)})",
        "blocks.{g}.{j}.conv.{m}",
    ),
    (r"head_conv", "conv2.0"),
    (r"head_bn", "conv2.1"),
    (r"logits", "classifier.0"),
)

# Layout: (what it reads, our networks that take it, name map).
LAYOUTS = {
    "torchvision_resnet": (
        "torchvision's ResNet (torchvision/models/resnet.py)",
        "imagenet_resnet18/34/50",
        _RESNET,
    ),
    "repdistiller_resnet": (
        "RepDistiller's CIFAR ResNet (models/resnet.py)",
        "resnet20/32/44/56/110",
        _RESNET,
    ),
    "repdistiller_resnetv2": (
        "RepDistiller's ResNet18/34/50 (models/resnetv2.py)",
        "resnet18/34/50",
        _RESNET_V2,
    ),
    "repdistiller_wrn": (
        "RepDistiller's WRN (models/wrn.py)",
        "wrn{depth}_{width}",
        _WRN,
    ),
    "repdistiller_mobilenetv2": (
        "RepDistiller's MobileNetV2 (models/mobilenetv2.py)",
        "mobilenetv2_half",
        _MOBILENET,
    ),
}

_SUPPORTED = "; ".join(f"{nets} ({what})" for what, nets, _ in LAYOUTS.values())


def torch_layout(model):
    """The PyTorch layout whose `state_dict` `model` takes: a key of
    `LAYOUTS`. Raises a one-line `ValueError` for a network without one.

    Told from the layer names our builders give (`ft_keras.models.blocks`),
    so a network built under another `model_name` (the runner's "teacher")
    is recognised too.

    Example:

    ```python
    from ft_keras import models
    assert torch_layout(models.get("wrn16_2")) == "repdistiller_wrn"
    assert torch_layout(models.get("resnet20", model_name="teacher")) == (
        "repdistiller_resnet")
    ```
    """
    names = {layer.name for layer in model.layers}
    if any(isinstance(layer, blocks.ZeroPadShortcut) for layer in model.layers):
        raise ValueError(
            f"No PyTorch layout for {model.name!r}: its zero-padding "
            "shortcuts have no PyTorch counterpart here (RepDistiller's CIFAR "
            'ResNets project): build it with shortcut="projection".'
        )
    if {"group1_block1_expand", "head_conv"} <= names:
        return "repdistiller_mobilenetv2"
    if {"stem_conv", "final_bn", "stage1_block1_bn1"} <= names:
        return "repdistiller_wrn"
    if {"stem_conv", "stem_bn", "stem_pool", "stage4"} <= names:
        return "torchvision_resnet"
    if {"stem_conv", "stem_bn", "stage4"} <= names:
        return "repdistiller_resnetv2"
    if {"stem_conv", "stem_bn", "stage3"} <= names:
        return "repdistiller_resnet"
    raise ValueError(
        f"No PyTorch layout for {model.name!r}: PyTorch weights go into "
        f"{_SUPPORTED}."
    )


def _guess(state):
    """The layout a `state_dict` looks like, or None (for error messages)."""
    conv1 = state.get("conv1.weight")
    if "blocks.0.0.conv.0.weight" in state:
        return "repdistiller_mobilenetv2"
    if "block1.layer.0.conv1.weight" in state:
        return "repdistiller_wrn"
    if "linear.weight" in state and "layer4.0.conv1.weight" in state:
        return "repdistiller_resnetv2"
    if conv1 is None or "fc.weight" not in state:
        return None
    if conv1.shape[-1] == 7 and "layer4.0.conv1.weight" in state:
        return "torchvision_resnet"
    if "layer3.0.conv1.weight" in state and "layer4.0.conv1.weight" not in state:
        return "repdistiller_resnet"
    return None


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading a PyTorch checkpoint needs torch: "
            'pip install "ft_keras[torch]".'
        ) from None
    return torch


def read_state_dict(checkpoint):
    """A PyTorch `state_dict` as `{name: NumPy array}`.

    Arguments:
        checkpoint: The path of a `.pth` / `.pt` file, read with
            `torch.load(map_location="cpu", weights_only=True)` (tensors and
            plain containers only: a pickled model object is refused), or a
            `state_dict` already in memory (`{name: tensor or array}`).
            A checkpoint that wraps it under `"model"` (RepDistiller's
            `train_teacher.py`) or `"state_dict"` is unwrapped, and the
            `module.` prefix of `nn.DataParallel` is dropped.

    Returns:
        A dict of float32 (floating) or integer NumPy arrays, by name.

    Example:

    ```python
    import numpy as np
    state = read_state_dict({"model": {"module.fc.bias": np.zeros(3)}})
    assert list(state) == ["fc.bias"] and state["fc.bias"].dtype == "float32"
    ```
    """
    where = "the state_dict given"
    if isinstance(checkpoint, (str, os.PathLike)):
        where = os.fspath(checkpoint)
        checkpoint = _torch_load(where)
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{where} is not a state_dict: it holds a "
            f"{type(checkpoint).__name__}; save `model.state_dict()`."
        )
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    return _as_arrays(checkpoint, where)


def _torch_load(path):
    """The object saved in the PyTorch file `path`, tensors and plain
    containers only."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types on bad files.
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ValueError(
            f"{path} cannot be read as PyTorch weights "
            f"(torch.load(weights_only=True)): {first} Save "
            "`model.state_dict()`, not the model object."
        ) from None


def _as_arrays(checkpoint, where):
    """`checkpoint`'s tensors as float32 (floating) or integer NumPy arrays,
    without `nn.DataParallel`'s `module.` prefix."""
    state = {}
    for name, value in checkpoint.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
            value = (value.float() if value.is_floating_point() else value).numpy()
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise ValueError(
                f"{where} is not a state_dict of tensors: {name!r} holds a "
                f"{type(value).__name__}. Its keys: {list(checkpoint)[:8]}"
            )
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype("float32")
        state[name.removeprefix("module.")] = value
    return state


# PyTorch tensor -> Keras variable, and the PyTorch shape a Keras one needs.
def _conv(value, shape):
    return value.transpose(2, 3, 1, 0)


def _conv_shape(shape):
    h, w, cin, cout = shape
    return (cout, cin, h, w)


def _depthwise(value, shape):
    h, w, channels, multiplier = shape
    return value.reshape(channels, multiplier, h, w).transpose(2, 3, 0, 1)


def _depthwise_shape(shape):
    h, w, channels, multiplier = shape
    return (channels * multiplier, 1, h, w)


def _dense(value, shape):
    return value.T


def _dense_shape(shape):
    return tuple(reversed(shape))


def _same(value, shape):
    return value


def _same_shape(shape):
    return tuple(shape)


def _parameters(layer):
    """`[(variable, PyTorch parameter, to Keras, PyTorch shape)]` of
    `layer`, or None for a layer with weights of another kind."""
    if isinstance(layer, keras.layers.BatchNormalization):
        if not (layer.center and layer.scale):
            return None
        return [
            (layer.gamma, "weight", _same, _same_shape),
            (layer.beta, "bias", _same, _same_shape),
            (layer.moving_mean, "running_mean", _same, _same_shape),
            (layer.moving_variance, "running_var", _same, _same_shape),
        ]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = (_depthwise, _depthwise_shape)
    elif isinstance(layer, keras.layers.Conv2D):
        kernel = (_conv, _conv_shape)
    elif isinstance(layer, keras.layers.Dense):
        kernel = (_dense, _dense_shape)
    else:
        return None
    found = [(layer.kernel, "weight") + kernel]
    if layer.use_bias:
        found.append((layer.bias, "bias", _same, _same_shape))
    return found


def _module_name(rules, layer_name):
    for pattern, template in rules:
        match = re.fullmatch(pattern, layer_name)
        if match:
            groups = {
                k: int(v) - 1 if k in ("j", "g") else _MOBILENET_PARTS.get(v, v)
                for k, v in match.groupdict().items()
            }  # `i`, the stage, counts from 1 in both (`layer1`, `block1`)
            return template.format(**groups)
    return None


def _plan(model, layout):
    """`{PyTorch parameter: (variable, to Keras, PyTorch shape, layer)}`
    for every weight of `model`."""
    what, _, rules = LAYOUTS[layout]
    plan = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        params = _parameters(layer)
        module = _module_name(rules, layer.name)
        if params is None or module is None:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) of "
                f"{model.name!r} has no counterpart in {what}."
            )
        if isinstance(layer, keras.layers.BatchNormalization) and not np.isclose(
            layer.epsilon, blocks.BN_EPSILON
        ):
            raise ValueError(
                f"Layer {layer.name!r} of {model.name!r} has BatchNorm "
                f"epsilon {layer.epsilon:g}; PyTorch's is {blocks.BN_EPSILON:g}."
            )
        for variable, param, to_keras, torch_shape in params:
            plan[f"{module}.{param}"] = (
                variable,
                to_keras,
                torch_shape(tuple(variable.shape)),
                layer.name,
            )
    return plan


def load_torch_weights(model, checkpoint):
    """Sets `model`'s weights from a PyTorch `state_dict` of its layout.

    The layout comes from `model` (`torch_layout`; the module docstring
    lists them). Conv kernels `(out, in, h, w)` become `(h, w, in, out)`,
    depthwise ones `(channels, 1, h, w)` become `(h, w, channels, 1)`, linear
    weights are transposed, and BatchNorm's `weight`, `bias`,
    `running_mean` and `running_var` become `gamma`, `beta` and the moving
    statistics (`num_batches_tracked` is not needed). Every weight must find
    its tensor, of its shape, and every tensor its weight: else nothing is
    set and a one-line `ValueError` names the first that does not (in
    network order, then the tensors left over), the shapes and the layout.

    Arguments:
        model: One of our networks (`ft_keras.models.get`), under any
            `model_name`.
        checkpoint: A `.pth` / `.pt` path or a `state_dict`, as
            `read_state_dict` takes them.

    Returns:
        The description of the layout read, e.g. `"RepDistiller's WRN
        (models/wrn.py)"`.

    Example:

    ```python
    import numpy as np
    from ft_keras import models
    model = models.get("wrn16_2", num_classes=100)
    # load_torch_weights(model, "wrn_16_2_best.pth")  # RepDistiller's
    try:
        load_torch_weights(model, {"fc.weight": np.zeros((100, 128))})
    except ValueError as e:  # nothing set: the first tensor missing is named
        assert "has no 'conv1.weight' for layer 'stem_conv'" in str(e)
    ```
    """
    layout = torch_layout(model)
    what = LAYOUTS[layout][0]
    state = read_state_dict(checkpoint)
    plan = _plan(model, layout)
    tensors = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    _check_tensors(plan, tensors, f"{model.name!r} ({what})",
                   _layout_hint(state, layout))
    for name, (variable, to_keras, _, _) in plan.items():
        value = to_keras(tensors[name], tuple(variable.shape))
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    return what


def _layout_hint(state, layout):
    """A sentence naming the layout `state` looks like when it is not
    `layout`, for an error message; else empty."""
    guess = _guess(state)
    return (
        f" The checkpoint looks like {LAYOUTS[guess][0]}, whose weights go into "
        f"{LAYOUTS[guess][1]}."
        if guess and guess != layout
        else ""
    )


def _check_tensors(plan, tensors, where, hint):
    """Raises a one-line `ValueError` unless every weight of `plan` finds
    its tensor, of its shape, and every tensor its weight."""
    for name, (variable, _, torch_shape, layer_name) in plan.items():
        if name not in tensors:
            missing = sum(k not in tensors for k in plan) - 1
            raise ValueError(
                f"The checkpoint has no {name!r} for layer {layer_name!r} of "
                f"{where}{f' ({missing} more tensors missing)' if missing else ''}."
                f"{hint}"
            )
        if tuple(tensors[name].shape) != torch_shape:
            raise ValueError(
                f"The checkpoint's {name!r} is {tuple(tensors[name].shape)}; "
                f"layer {layer_name!r} of {where} needs {torch_shape} "
                f"(PyTorch's order).{hint}"
            )
    extra = [k for k in tensors if k not in plan]
    if extra:
        raise ValueError(
            f"The checkpoint's {extra[0]!r} {tuple(tensors[extra[0]].shape)} "
            f"has no weight in {where}"
            f"{f' ({len(extra) - 1} more such tensors)' if len(extra) > 1 else ''}."
            f"{hint}"
        )


def from_torch(name, checkpoint, **kwargs):
    """Builds our network `name` and imports a PyTorch `state_dict` into it.

    `ft_keras.models.get(name, **kwargs)`, then `load_torch_weights`.

    Arguments:
        name: One of our networks with a PyTorch layout (the module
            docstring lists them), e.g. `"resnet56"` for RepDistiller's
            `resnet56`.
        checkpoint: A `.pth` / `.pt` path or a `state_dict`.
        **kwargs: Passed to `ft_keras.models.get`: `num_classes`,
            `input_shape`, `model_name`, ...

    Returns:
        The `keras.Model`, with the checkpoint's weights.

    Example:

    ```python
    # teacher = from_torch("resnet56", "resnet56_best.pth", num_classes=100)
    try:
        from_torch("resnet20", "resnet20.pth", shortcut="zero_pad")
    except ValueError as e:  # refused in one line, before reading the file
        assert str(e).startswith("No PyTorch layout for 'resnet20'")
    ```
    """
    model = registry.get(name, **kwargs)
    load_torch_weights(model, checkpoint)
    return model
