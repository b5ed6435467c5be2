"""Networks by name: `get`, `available`, `register`, and the arguments each
network takes (`network_arguments`)."""

import inspect
import os
import re

import keras

from ft_keras.models import he_resnet
from ft_keras.models import keras_hub
from ft_keras.models import mobilenet
from ft_keras.models import resnet
from ft_keras.models import wide_resnet
from ft_keras.models.bn_momentum import check_bn_momentum
from ft_keras.models.bn_momentum import set_bn_momentum
from ft_keras.models.dtype_policy import with_dtype_policy

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
    "mobilenetv2_half": mobilenet.mobilenetv2_half,
}
# WRNs used in the distillation literature; `get` accepts any
# `wrn{depth}_{width}`.
_WRN_PRESETS = (
    "wrn16_1",
    "wrn16_2",
    "wrn16_4",
    "wrn28_10",
    "wrn40_1",
    "wrn40_2",
    "wrn40_4",
)
_WRN_PATTERN = re.compile(r"wrn(\d+)_(\d+)")
APPLICATIONS_PREFIX = "keras.applications."
# Factories registered by users (`register`).
_REGISTERED = {}


def register(name, factory):
    """Makes `get(name, ...)` (and so `network.name = name` in gin) build
    `factory(num_classes=..., input_shape=..., name=..., **kwargs)`.

    Arguments:
        name: The new name; not one of ours.
        factory: A callable returning a `keras.Model` whose output is the
            logits; `num_classes`, `input_shape` and `name` are passed.

    Example:

    ```python
    import keras

    def tiny(num_classes=10, input_shape=(32, 32, 3), name=None):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                name="stage1")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x),
                           name=name or "tiny")

    register("tiny", tiny)
    assert get("tiny", num_classes=5, input_shape=(8, 8, 1)).output_shape == (None, 5)
    ```
    """
    if (
        not isinstance(name, str)
        or not name
        or name in _BUILDERS
        or (_WRN_PATTERN.fullmatch(name) or name.startswith(APPLICATIONS_PREFIX))
        or name.startswith(keras_hub.PREFIX)
    ):
        raise ValueError(
            f"Cannot register {name!r}: give a new name (not one of ours, "
            f"not 'wrn*_*', not {APPLICATIONS_PREFIX!r}... or "
            f"{keras_hub.PREFIX!r}...)."
        )
    if not callable(factory):
        raise ValueError(
            f"`factory` must be callable (returning a keras.Model). "
            f"Received: factory={factory!r}"
        )
    _REGISTERED[name] = factory


def _application(
    name, model_name, num_classes=1000, input_shape=None, weights=None, **kwargs
):
    """A `keras.applications` network with logits (no softmax)."""
    attr = name[len(APPLICATIONS_PREFIX) :]
    builder = getattr(keras.applications, attr, None)
    if not callable(builder):
        names = sorted(
            n
            for n in dir(keras.applications)
            if n[:1].isupper() and callable(getattr(keras.applications, n))
        )
        raise ValueError(
            f"Unknown network name: {name!r}: keras.applications has no "
            f"{attr!r}. It has: {', '.join(names)}."
        )
    # Unset (None or 0) in a config that binds it for every network.
    if not kwargs.get("weight_decay", 1):
        kwargs.pop("weight_decay")
    model = builder(
        include_top=True,
        weights=weights,
        input_shape=input_shape,
        classes=num_classes,
        classifier_activation=None,
        **kwargs,
    )
    return keras.Model(model.input, model.output, name=model_name or attr.lower())


def _from_file(path, model_name, num_classes=None, input_shape=None, **kwargs):
    """The architecture of a `.keras` file, with new weights."""
    if not kwargs.get("weight_decay", 1):  # unset, as in `_application`
        kwargs.pop("weight_decay")
    if kwargs:
        raise ValueError(
            f"A network from a .keras file takes no other arguments. "
            f"Received: {sorted(kwargs)}"
        )
    if not os.path.exists(path):
        raise ValueError(f"Network file not found: {path}")
    saved = keras.models.load_model(path, compile=False)
    model = keras.models.clone_model(saved)  # new, initialised weights
    if input_shape is not None and tuple(model.input_shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"The network of {path} takes inputs of shape "
            f"{tuple(model.input_shape[1:])}; the dataset's are "
            f"{tuple(input_shape)}."
        )
    if num_classes is not None and model.output_shape[-1] != num_classes:
        raise ValueError(
            f"The network of {path} gives {model.output_shape[-1]} outputs; "
            f"the dataset has {num_classes} classes."
        )
    if model_name:
        single = len(model.inputs) == 1 and len(model.outputs) == 1
        model = keras.Model(
            model.input if single else model.inputs,
            model.output if single else model.outputs,
            name=model_name,
        )
    return model


# Keyword arguments `get` gives every network itself (and `name`, which it
# calls `model_name`), and those `_application` sets for keras.applications.
_GIVEN = {"name", "num_classes", "input_shape"}
_APPLICATION_SET = {"include_top", "classes", "classifier_activation",
                    "input_tensor", "pooling"}


def _factory(name):
    """The callable whose signature says what network `name` takes, and the
    arguments of it that `get` sets; None for a name `get` does not know."""
    if name in _BUILDERS:
        return _BUILDERS[name], _GIVEN
    if name in _REGISTERED:
        return _REGISTERED[name], _GIVEN
    if _WRN_PATTERN.fullmatch(name):
        return wide_resnet.wrn, _GIVEN | {"depth", "width"}
    if name.startswith(APPLICATIONS_PREFIX):
        builder = getattr(keras.applications, name[len(APPLICATIONS_PREFIX):],
                          None)
        if callable(builder):
            return builder, _GIVEN | _APPLICATION_SET
    return None


def network_arguments(name):
    """The keyword arguments network `name` takes besides `num_classes`,
    `input_shape` and `model_name`, as a sorted tuple; None when it takes
    any (a registered factory with `**kwargs`) or `name` is unknown.
    `bn_momentum` (`get`) applies to every network and is not listed.

    Example:

    ```python
    assert network_arguments("resnet20") == ("shortcut", "weight_decay")
    assert "alpha" in network_arguments("keras.applications.MobileNetV2")
    assert network_arguments("net.keras") == ()
    ```
    """
    if not isinstance(name, str):
        return None
    if name.endswith(".keras") and name not in _REGISTERED:
        return ()
    if name.startswith(keras_hub.PREFIX):
        return keras_hub.arguments(name)
    found = _factory(name)
    if found is None:
        return None
    factory, given = found
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return tuple(sorted(p.name for p in parameters if p.name not in given))


def unsupported_arguments(name, kwargs):
    """The keys of `kwargs` that network `name` does not take (see
    `network_arguments`), sorted; unset ones (None, a zero `weight_decay`)
    are not counted.

    Example:

    ```python
    unsupported_arguments("keras.applications.MobileNetV2",
                          {"alpha": 0.35, "weight_decay": 5e-4})
    # ['weight_decay']
    ```
    """
    accepted = network_arguments(name)
    if accepted is None:
        return []
    return sorted(
        k for k in _set_arguments(kwargs) if k not in accepted and k not in _GIVEN
    )


def available():
    """Returns the names `get` accepts, as a sorted tuple: ours and those
    `register`ed.

    Wide ResNets are listed by their common presets; `get` also accepts any
    other `wrn{depth}_{width}` with `(depth - 4) % 6 == 0`, any
    `keras.applications.<Name>` and the path of a `.keras` file.

    Example:

    ```python
    assert "resnet20" in available() and "wrn40_2" in available()
    ```
    """
    return tuple(sorted(_BUILDERS) + sorted(_WRN_PRESETS) + sorted(_REGISTERED))


def get(name, model_name=None, bn_momentum=None, **kwargs):
    """Builds a network by name.

    A plain factory: the runner calls it with `teacher/network.name` and
    `student/network.name` and their keyword arguments
    (`ft_keras.config.network`), and users call it directly.

    Arguments:
        name: One of `available()`; `"wrn{depth}_{width}"` for any Wide
            ResNet (e.g. `"wrn40_2"` is `wrn(40, 2)`); a network of
            `keras.applications` as `"keras.applications.MobileNetV2"`
            (logits, no softmax; `weights=None` by default, `"imagenet"`
            where it can be downloaded); a KerasHub image classifier or
            backbone as `"keras_hub.ResNetImageClassifier"`, built from its
            backbone's arguments or a `preset` directory
            (`ft_keras.models.keras_hub`); or the path of a `.keras` file,
            whose architecture is built with new weights (a trained
            teacher is `experiment.teacher_checkpoint` instead).
        model_name: Name of the returned `keras.Model` (the builder's `name`
            argument, which `name` here already means the network).
            Defaults to the network's name, e.g. `"resnet56"`.
        bn_momentum: None (the network's own), or the momentum of every
            BatchNormalization layer, in `[0, 1)`. `keras.applications`
            networks use 0.999, too slow for a run of a few thousand steps
            (`ft_keras.models.bn_momentum`); ours use 0.9.
        **kwargs: Passed to the builder: `num_classes`, `input_shape`,
            `weight_decay`, and `shortcut` (He et al. CIFAR ResNets) or
            `dropout` (WRNs).

    Returns:
        A functional `keras.Model` whose output is the logits and which has
        the feature taps listed by `feature_taps` (`ft_keras.taps`).

    Example:

    ```python
    model = get("wrn16_2", num_classes=100)
    assert model.name == "wrn16_2"
    assert get("resnet20", model_name="student").name == "student"
    assert feature_taps(model) == ["stage1", "stage2", "stage3", "last_conv"]
    ```
    """
    if bn_momentum is not None:
        check_bn_momentum(bn_momentum)
    model = _build(name, model_name, **kwargs)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


def _check_arguments(name, kwargs):
    """A `ValueError` naming the arguments `name` does not take, and those
    it takes."""
    bad = unsupported_arguments(name, kwargs)
    if not bad:
        return
    takes = network_arguments(name)
    hint = (
        " `weight_decay` is a kernel L2 penalty of our own networks: decay "
        "this one with `training.weight_decay` instead."
        if "weight_decay" in bad
        else ""
    )
    raise ValueError(
        f"The network {name!r} takes no {', '.join(map(repr, bad))}; it "
        f"takes {', '.join(map(repr, takes)) if takes else 'no arguments'} "
        f"(and `bn_momentum`).{hint} Received: {bad[0]}={kwargs[bad[0]]!r}"
    )


def _set_arguments(kwargs):
    """`kwargs` without the unset ones: None, and a zero `weight_decay`."""
    return {
        k: v
        for k, v in kwargs.items()
        if v is not None and not (k == "weight_decay" and not v)
    }


def _build(name, model_name, **kwargs):
    if isinstance(name, str):
        _check_arguments(name, kwargs)
        # None clears an argument a config binds for every network, where
        # this network does not take it.
        accepted = network_arguments(name)
        if accepted is not None:
            kwargs = {
                k: v for k, v in kwargs.items() if v is not None or k in accepted
            }
        if name in _BUILDERS:
            return _BUILDERS[name](name=model_name, **kwargs)
        # Not ours: under a mixed global policy their outputs (the logits,
        # which the losses and top-k metrics read) become float32 as ours.
        policy = keras.mixed_precision.global_policy().name
        if name in _REGISTERED:
            model = _REGISTERED[name](name=model_name, **kwargs)
            return with_dtype_policy(model, policy)
        if name.startswith(APPLICATIONS_PREFIX):
            model = _application(name, model_name, **kwargs)
            return with_dtype_policy(model, policy)
        if name.startswith(keras_hub.PREFIX):
            model = keras_hub.build(name, model_name, **kwargs)
            return with_dtype_policy(model, policy)
        if name.endswith(".keras"):
            return with_dtype_policy(_from_file(name, model_name, **kwargs), policy)
        match = _WRN_PATTERN.fullmatch(name)
        if match:
            depth, width = (int(g) for g in match.groups())
            return wide_resnet.wrn(depth, width, name=model_name, **kwargs)
    raise ValueError(
        f"Unknown network name: {name!r}. Valid names are "
        f"{', '.join(available())}, any 'wrn{{depth}}_{{width}}' with "
        f"(depth - 4) % 6 == 0, '{APPLICATIONS_PREFIX}<Name>', "
        f"'{keras_hub.PREFIX}<ClassName>', or the path "
        "of a .keras file; or register your own (ft_keras.models.register)."
    )
