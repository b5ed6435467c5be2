"""Tapping networks: their outputs at named layers, from one forward pass.

Every training model in ft_keras runs each network once per step through a
functional model that returns the network's output and its maps at the
layers a loss needs (`feature_extractor`); a frozen teacher's extractor has
its BatchNormalizations folded away (`frozen_features`).

Example:

```python
import keras
import numpy as np
from ft_keras import models
from ft_keras.taps import features

teacher = models.get("resnet20", num_classes=10)
extractor = features.feature_extractor(teacher, ["stage3"], "teacher",
                                       include_output=True)
logits, stage3 = extractor(np.zeros((2, 32, 32, 3), "float32"))
stage3.shape  # (2, 8, 8, 64)
```
"""

import keras

from ft_keras import _keras_private
from ft_keras import losses as ft_losses
from ft_keras.models.folding import fold_batch_norm


def has_taps(model):
    """Whether `model`'s layer outputs can be tapped: a functional model,
    or a `keras.Sequential` with known inputs (built with a `keras.Input`
    or called once on data). False for a subclassed model, whose `call` is
    Python with no graph of layer outputs, and for an unbuilt Sequential.

    Example:

    >>> import keras
    >>> has_taps(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    True
    >>> has_taps(keras.Sequential([keras.layers.Dense(2)]))
    False
    """
    try:
        return bool(model.inputs)
    except AttributeError:  # Unbuilt Sequential, subclassed model.
        return False


def why_not_tappable(model):
    """Why `model`'s layers cannot be tapped, and what to do, in one
    sentence for an error message (for a model that `has_taps` refuses)."""
    if isinstance(model, keras.Sequential):
        return (
            "it is a `keras.Sequential` that is not built yet, so its layers "
            "have no outputs to tap. Give it an input, "
            "`keras.Sequential([keras.Input(shape), ...])`, or call it once "
            "on data"
        )
    return (
        f"it is a subclassed `keras.Model` ({type(model).__name__}), whose "
        "`call` is Python with no graph of layer outputs to tap (returning "
        "its maps in a dict does not help: a model's output is taken as its "
        "logits). Build it functionally with `keras.Input`, naming the layers "
        "to tap"
    )


def feature_extractor(model, layer_names, role, include_output=False):
    """A functional model returning `model`'s outputs at `layer_names`.

    Shares `model`'s layers and weights. With `include_output`, the model's
    own output comes first.

    Raises:
        ValueError: if `model` cannot be tapped (`has_taps`), or a name is
            not one of its layers (the message lists the valid ones).
    """
    if not has_taps(model):
        raise ValueError(
            f"The {role} {model.name!r} cannot be tapped: "
            f"{why_not_tappable(model)}. Received: {role}={model!r}"
        )
    valid = [layer.name for layer in model.layers]
    outputs = []
    if include_output:
        outputs.append(model.outputs[0])
    for name in layer_names:
        if name not in valid:
            raise ValueError(
                f"`{role}_layer`={name!r} is not a layer of the {role} model "
                f"{model.name!r}. Valid layer names: {valid}"
            )
        outputs.append(model.get_layer(name).output)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if len(outputs) == 1:
        outputs = outputs[0]
    return keras.Model(inputs, outputs, name=f"{model.name}_{role}_features")


def frozen_features(teacher, layer_names, include_output=False):
    """`feature_extractor` of a frozen teacher, for inference: its
    BatchNormalizations folded into the convolutions before them
    (`ft_keras.models.fold_batch_norm`), one conv instead of a conv and a
    pass over the map. Shares the teacher's variables."""
    return fold_batch_norm(
        feature_extractor(teacher, layer_names, "teacher", include_output)
    )


def comparable_maps(a, b, same_channels=False):
    """Whether two map shapes `(N, H, W, C)` can enter one loss: both 4-D,
    heights/widths integer multiples of each other
    (`ft_keras.losses.match_spatial_size`), and, if `same_channels`, equal
    channels."""
    if len(a) != 4 or len(b) != 4 or (same_channels and a[-1] != b[-1]):
        return False
    try:
        ft_losses.match_spatial_size(keras.KerasTensor(a), keras.KerasTensor(b))
    except ValueError:
        return False
    return True


def as_list(outputs):
    """A model's outputs as a list, one output or several."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def freeze(model):
    """`model`, made non-trainable: `model.trainable = False`, and so each
    layer inside it at any depth.

    The layers are set one by one: on the TensorFlow backend Keras (3.15)
    skips an assignment of the value an attribute already has
    (`KerasAutoTrackable.__setattr__`), so `model.trainable = False` never
    reaches the sub-layers of a model made with `trainable=False` (as
    `from_config` makes a frozen subclassed teacher when a `.keras` file
    loads), which it made trainable after.
    """
    model.trainable = False
    for layer in _keras_private.nested_layers(model):
        layer.trainable = False
    return model
