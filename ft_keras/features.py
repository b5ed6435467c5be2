"""Tapping networks: their outputs at named layers, from one forward pass.

Every training model in ft_keras runs each network once per step through a
functional model that returns the network's output and its maps at the
layers a loss needs (`feature_extractor`); a frozen teacher's extractor has
its BatchNormalizations folded away (`frozen_features`).

Example:

```python
import keras
import numpy as np
from ft_keras import features, models

teacher = models.get("resnet20", num_classes=10)
taps = features.feature_extractor(teacher, ["stage3"], "teacher",
                                  include_output=True)
logits, stage3 = taps(np.zeros((2, 32, 32, 3), "float32"))
stage3.shape  # (2, 8, 8, 64)
```
"""

import keras

from ft_keras import losses as ft_losses
from ft_keras.models.folding import fold_batch_norm


def feature_extractor(model, layer_names, role, include_output=False):
    """A functional model returning `model`'s outputs at `layer_names`.

    Shares `model`'s layers and weights. With `include_output`, the model's
    own output comes first.

    Raises:
        ValueError: if `model` is not functional, or a name is not one of its
            layers (the message lists the valid ones).
    """
    if getattr(model, "inputs", None) is None or not model.inputs:
        raise ValueError(
            f"The {role} must be a functional or Sequential `keras.Model` "
            f"with known inputs so that its layer outputs can be tapped. "
            f"Received: {model!r}. Build it with `keras.Input`, or call it "
            "once on data."
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
    """`model`, made non-trainable (`model.trainable = False`)."""
    model.trainable = False
    return model
