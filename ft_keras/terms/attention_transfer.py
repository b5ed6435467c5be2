"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017) as a term."""

import keras

from ft_keras import losses as ft_losses
from ft_keras.taps import features
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionTransfer(Term):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) as a term.

    At each pair of taps, the squared difference of the L2-normalised
    attention maps (`AttentionTransferLoss(power)`); the pairs' losses are
    summed and logged as `at_loss` (before `weight`). RepDistiller:
    `weight=1000`, `power=2`.

    Args:
        teacher_layers: Teacher tap names.
        student_layers: Student tap names, paired with `teacher_layers`.
        weight: The term's weight.
        power: The exponent of the attention maps.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    at = ft_keras.AttentionTransfer(["stage2", "stage3"],
                                    ["stage2", "stage3"], weight=1000.0)
    distiller = ft_keras.Distiller(teacher, student, terms=[at])
    ```
    """

    def __init__(
        self, teacher_layers, student_layers, weight=1000.0, power=2, name="at",
        **kwargs,
    ):
        super().__init__(
            teacher_layers, student_layers, weight=weight, name=name, **kwargs
        )
        if not self.teacher_layers or len(self.teacher_layers) != len(
            self.student_layers
        ):
            raise ValueError(
                "Attention transfer needs paired taps: `teacher_layers` and "
                "`student_layers` of the same, non-zero length. Received: "
                f"teacher_layers={self.teacher_layers}, "
                f"student_layers={self.student_layers}"
            )
        self.loss_fn = ft_losses.AttentionTransferLoss(power=power)

    @property
    def power(self):
        return self.loss_fn.power

    def connect(self, teacher_shapes, student_shapes):
        pairs = zip(self.teacher_layers, teacher_shapes,
                    self.student_layers, student_shapes)
        for t_name, t_shape, s_name, s_shape in pairs:
            if not features.comparable_maps(tuple(t_shape), tuple(s_shape)):
                raise ValueError(
                    f"Attention transfer cannot pair teacher layer {t_name!r} "
                    f"{tuple(t_shape)} with student layer {s_name!r} "
                    f"{tuple(s_shape)}: both must be (batch, height, width, "
                    "channels) maps whose heights/widths are integer "
                    "multiples of each other."
                )
        self.built = True

    def compute_loss(self, teacher, student):
        per_pair = [self.loss_fn.call(t, s) for t, s in zip(teacher, student)]
        total = per_pair[0]
        for loss in per_pair[1:]:
            total = total + loss
        return total

    def get_config(self):
        config = super().get_config()
        config["power"] = self.power
        return config
