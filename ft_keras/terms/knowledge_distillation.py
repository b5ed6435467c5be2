"""Hinton's knowledge distillation (Hinton, Vinyals & Dean, 2015) as a
term."""

import keras

from ft_keras import losses as ft_losses
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KnowledgeDistillation(Term):
    """Hinton's knowledge distillation on the logits, as a term.

    `KnowledgeDistillationLoss(temperature)`: `T^2 * KL(softmax(t / T) ||
    softmax(s / T))` of the teacher's and the student's logits, logged as
    `kd_loss` (before `weight`). RepDistiller's KD: `weight=0.9` with the
    `Distiller`'s `student_loss_weight=0.1`, `temperature=4`.

    Args:
        temperature: The softmax temperature (4 in RepDistiller).
        weight: The term's weight.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    kd = ft_keras.KnowledgeDistillation(temperature=4.0, weight=0.9)
    distiller = ft_keras.Distiller(teacher, student, terms=[kd],
                                   student_loss_weight=0.1)
    ```
    """

    def __init__(self, temperature=4.0, weight=1.0, name="kd", **kwargs):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)
        self.loss_fn = ft_losses.KnowledgeDistillationLoss(temperature)

    @property
    def temperature(self):
        return self.loss_fn.temperature

    def compute_loss(self, teacher, student):
        return self.loss_fn.call(teacher[0], student[0])

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config["temperature"] = self.temperature
        return config

