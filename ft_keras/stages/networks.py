"""The run's networks: built from `teacher/network` and
`student/network`, their BatchNormalization suited to the stage, the taps
checked, a teacher loaded from `experiment.teacher_checkpoint`.

Each function takes the run's `ft_keras.stages.context.RunContext`.
"""

import os

from ft_keras import distribute
from ft_keras import models
from ft_keras._validation import ConfigurationError


def build(context, role, announce=True):
    """The `role` network (`"teacher"` or `"student"`) of `<role>/network`,
    its BatchNormalization momentum suited to its stage (said once where
    `announce`)."""
    net = context.settings.network[role]
    kwargs = dict(net.kwargs)
    momentum = kwargs.pop("bn_momentum", None)
    check_inherited_arguments(context, role)
    try:
        model = models.get(
            net.name,
            model_name=role,
            num_classes=context.num_classes,
            input_shape=context.input_shape,
            bn_momentum=momentum,
            **kwargs,
        )
    except ValueError as e:
        raise ConfigurationError(f"`{role}/network`: {e}") from None
    if momentum is None:
        suit_bn_momentum(context, role, model, announce)
    return model


def check_inherited_arguments(context, role):
    """Refuses an argument bound for every network (`network.x`) that
    this role's network does not take, with the binding that clears it."""
    net = context.settings.network[role]
    set_kwargs = {k: v for k, v in net.kwargs.items() if k in net.inherited}
    for key in models.unsupported_arguments(net.name, set_kwargs):
        hint = (
            f", and decay it with `{role}/training.weight_decay`"
            if key == "weight_decay"
            else ""
        )
        raise ConfigurationError(
            f"`network.{key} = {net.kwargs[key]!r}` is bound for every "
            f"network, but the {role} {net.name!r} takes no `{key}`: "
            f"clear it for this network with `{role}/network.{key} = "
            f"None`{hint}."
        )


def suit_bn_momentum(context, role, model, announce=True):
    """Caps the BatchNormalization momentum of a network this run trains
    so that its moving statistics follow the stage
    (`ft_keras.models.bn_momentum`); says so where `announce` and it
    changes any."""
    steps = context.settings.training[role].epochs * context.steps_per_epoch
    cap = models.suited_bn_momentum(steps)
    changed = models.set_bn_momentum(model, cap, at_most=True)
    if changed and announce:
        was = ", ".join(
            f"{count} at {momentum:g}" for momentum, count in changed.items()
        )
        print(
            f"[ft_keras] {role}: BatchNormalization momentum {cap:.4g} "
            f"({was} before), so that its moving statistics follow a "
            f"{steps:,}-step stage; `{role}/network.bn_momentum` sets it.",
            flush=True,
        )


def check_taps(context, teacher, student):
    """Refuses, before any work, terms whose taps the networks do not
    have or cannot be compared (each term config's `check`)."""
    distillation = context.settings.distillation
    for term in context.terms:
        try:
            term.check(teacher, student)
        except ValueError as e:
            network = context.settings.network
            raise ConfigurationError(
                f"`distillation.terms` ({distillation.label}) with the teacher "
                f"{network['teacher'].name!r} and the student "
                f"{network['student'].name!r}, {term.reference}: {e}") from None


def check_teacher_checkpoint(checkpoint):
    """Raises a `ConfigurationError` if `experiment.teacher_checkpoint`
    names no file (the stage plan asks before any work)."""
    if not os.path.exists(checkpoint):
        raise ConfigurationError(
            f"Teacher checkpoint not found: {checkpoint} (set "
            "`experiment.teacher_checkpoint` to a .keras model, the "
            ".weights.h5 weights of `teacher/network` or a PyTorch "
            "state_dict (.pth, .pt) of its layout, or to None to train "
            "the teacher)."
        )


def load_teacher_checkpoint(context, nets, checkpoint):
    """The teacher of `experiment.teacher_checkpoint`: a `.keras` model,
    `.weights.h5` weights or a PyTorch state_dict of `teacher/network`
    (loaded into `nets.teacher`), checked against the data and the
    terms' taps."""
    check_teacher_checkpoint(checkpoint)
    try:
        if checkpoint.endswith(".keras"):
            # A teacher saved under another precision computes in this
            # run's (`experiment.precision`, or float32 on a fallback).
            teacher = context.load(checkpoint)
            with distribute.scope(context.strategy):
                teacher = models.with_dtype_policy(teacher, context.policy)
        elif checkpoint.endswith(models.torch_import.SUFFIXES):
            # Trained in PyTorch: `teacher/network` built here, its
            # weights read from the state_dict (ft_keras.models.torch_import).
            with distribute.scope(context.strategy):
                layout = models.load_torch_weights(nets.teacher, checkpoint)
            print(
                f"[ft_keras] teacher: {layout} weights from {checkpoint}",
                flush=True,
            )
            teacher = nets.teacher
        else:
            with distribute.scope(context.strategy):
                nets.teacher.load_weights(checkpoint)
            teacher = nets.teacher
    except ImportError as e:  # torch, for a PyTorch checkpoint
        raise ConfigurationError(f"Teacher checkpoint {checkpoint}: {e}") from None
    except Exception as e:  # Keras raises several types on mismatch.
        raise ConfigurationError(
            f"Teacher checkpoint {checkpoint} does not match the teacher "
            f"network {context.settings.network['teacher'].name!r}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    expected = (None,) + tuple(context.input_shape)
    if (
        tuple(teacher.input_shape) != expected
        or teacher.output_shape[-1] != context.num_classes
    ):
        raise ConfigurationError(
            f"Teacher checkpoint {checkpoint} does not match the data: "
            f"it takes {tuple(teacher.input_shape)} and gives "
            f"{teacher.output_shape[-1]} classes; the dataset "
            f"{context.settings.dataset.name!r} needs {expected} and "
            f"{context.num_classes} classes."
        )
    check_taps(context, teacher, nets.student)
    return teacher


def calibrate_batchnorm(model, dataset):
    """Dry run only: after two steps a network's BatchNorm moving
    statistics are still about (0, 1), so in inference mode a deep
    teacher's activations grow layer after layer and overflow the
    stages that use it. Setting them to the statistics of one synthetic
    batch of `dataset` keeps the dry run's numbers finite; the real run
    never does this."""
    norms = models.bn_momentum.batch_norm_layers(model)
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    images, _ = next(iter(dataset))
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
