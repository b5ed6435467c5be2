"""BatchNormalization momentum suited to a run's length.

A BatchNormalization layer tests with its moving statistics,
`moving = momentum * moving + (1 - momentum) * batch`, which start at mean 0
and variance 1. After `n` training steps the start still weighs
`momentum ** n`: with `keras.applications`' momentum 0.999 that is 0.90 after
100 steps and 0.37 after 1,000, so a network trained for a few hundred steps
learns (its training accuracy uses batch statistics) and tests at chance.
Our own networks use 0.9, as the papers' PyTorch code (`momentum=0.1` in
PyTorch's convention).

`suited_bn_momentum(steps)` is the largest momentum whose statistics forget
their start within a run: `1 - 10 / steps` (the start weighs at most
`e ** -10`, and the statistics average about the last tenth of the run), and
never below 0.9. The runner caps every BatchNormalization momentum of a
network it trains at that value for the stage's steps, unless
`network.bn_momentum` sets one; `ft_keras.models.get(..., bn_momentum=m)`
sets it from Python.

Example:

```python
import keras
from ft_keras import models

student = models.get("keras.applications.MobileNetV2", num_classes=10,
                     input_shape=(32, 32, 3), alpha=0.35)
cap = suited_bn_momentum(steps=5 * 22)            # 0.909...
changed = set_bn_momentum(student, cap, at_most=True)
assert changed == {0.999: 52}                     # 52 layers were at 0.999
```
"""

import keras

# The momentum of our networks and of the papers' code; the cap never goes
# below it.
DEFAULT_BN_MOMENTUM = 0.9
# How many time constants `1 / (1 - momentum)` a run lasts at least.
_TIME_CONSTANTS_PER_RUN = 10


def check_bn_momentum(momentum, name="bn_momentum"):
    """Raises a `ValueError` unless `momentum` is a number in `[0, 1)`."""
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0.0 <= momentum < 1.0
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1), e.g. 0.9 (the moving "
            "statistics' decay per training step). Received: "
            f"{name}={momentum!r}"
        )


def suited_bn_momentum(steps):
    """The largest BatchNormalization momentum whose moving statistics
    forget their initial values within `steps` training steps:
    `1 - 10 / steps`, and at least `DEFAULT_BN_MOMENTUM` (0.9).

    Example:

    ```python
    suited_bn_momentum(110)      # 0.909...: 5 epochs of 22 steps
    suited_bn_momentum(63_960)   # 0.99984...: 164 CIFAR epochs
    suited_bn_momentum(50)       # 0.9
    ```
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`steps` must be a positive number of training steps. "
            f"Received: steps={steps!r}"
        )
    return max(DEFAULT_BN_MOMENTUM, 1.0 - _TIME_CONSTANTS_PER_RUN / steps)


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` of `model`, nested models
    included, in network order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batch_norm_layers(layer))
    return found


def set_bn_momentum(model, momentum, at_most=False):
    """Sets the momentum of every BatchNormalization layer of `model`.

    Takes effect from the next traced training step (call it before
    `compile`/`fit`), and is saved with the model (`get_config`).

    Arguments:
        model: A `keras.Model`.
        momentum: A number in `[0, 1)`.
        at_most: Only lower the momentum of layers above `momentum` (a
            cap), leaving smaller ones as they are.

    Returns:
        `{previous momentum: number of layers changed}`; empty if none.

    Example:

    ```python
    from ft_keras import models
    model = models.get("resnet20", num_classes=10)
    set_bn_momentum(model, 0.99)   # {0.9: 19}
    ```
    """
    check_bn_momentum(momentum, "momentum")
    changed = {}
    for layer in batch_norm_layers(model):
        if layer.momentum == momentum or (at_most and layer.momentum < momentum):
            continue
        changed[layer.momentum] = changed.get(layer.momentum, 0) + 1
        layer.momentum = float(momentum)
    return changed
