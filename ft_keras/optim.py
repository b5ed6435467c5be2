"""Optimizers and learning-rate schedules of the published recipes.

Schedules are given in *epochs*, as the papers give them, and turned into
steps once the number of steps per epoch is known.
"""

import math

import keras
from keras import ops

_PACKAGE = "ft_keras"
SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step decay or cosine decay by step, with an optional linear warm-up.

    - `"constant"`: `learning_rate` throughout;
    - `"step"`: multiplied by `decay` at each step in `boundaries` (e.g. the
      paper's x0.1 at epochs 82 and 123);
    - `"cosine"`: cosine decay from `learning_rate` to 0 at `total_steps`.

    During the first `warmup_steps` steps the rate rises linearly from
    `learning_rate / warmup_steps` to `learning_rate`.

    Example:

    ```python
    schedule = EpochSchedule(0.1, "step", total_steps=1000,
                             boundaries=[500, 750], decay=0.1)
    float(schedule(600))  # 0.01
    ```
    """

    def __init__(
        self,
        learning_rate,
        schedule="step",
        total_steps=None,
        boundaries=(),
        decay=0.1,
        warmup_steps=0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. Received: "
                f"schedule={schedule!r}"
            )
        if schedule == "cosine" and not total_steps:
            raise ValueError(
                "A cosine schedule needs `total_steps`. Received: "
                f"total_steps={total_steps!r}"
            )
        if list(boundaries) != sorted(boundaries):
            raise ValueError(
                "`boundaries` must be increasing. Received: "
                f"boundaries={list(boundaries)}"
            )
        self.learning_rate = float(learning_rate)
        self.schedule = schedule
        self.total_steps = int(total_steps) if total_steps else None
        self.boundaries = [int(b) for b in boundaries]
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.schedule == "step":
            for boundary in self.boundaries:
                rate = ops.where(step >= boundary, rate * self.decay, rate)
        elif self.schedule == "cosine":
            progress = ops.minimum(step / self.total_steps, 1.0)
            rate = rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps:
            warm = self.learning_rate * (step + 1.0) / self.warmup_steps
            rate = ops.where(step < self.warmup_steps, warm, rate)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "schedule": self.schedule,
            "total_steps": self.total_steps,
            "boundaries": self.boundaries,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
        }


def build_optimizer(
    steps_per_epoch,
    epochs,
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    schedule="step",
    boundaries=(),
    decay=0.1,
    warmup_epochs=0,
    weight_decay=None,
):
    """An optimizer with an `EpochSchedule`, from epoch-based settings.

    Weight decay as in the papers is an L2 penalty on the kernels, set on the
    networks (`weight_decay` of `ft_keras.models.get`); `weight_decay` here
    is Keras' decoupled decay (AdamW-style), for recipes that ask for it.

    Example:

    ```python
    optimizer = build_optimizer(steps_per_epoch=391, epochs=164,
                                learning_rate=0.1, boundaries=[82, 123])
    ```
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer` must be one of {OPTIMIZERS}. Received: "
            f"optimizer={optimizer!r}"
        )
    if any(b > epochs for b in boundaries):
        raise ValueError(
            f"Learning-rate boundaries {list(boundaries)} lie beyond the "
            f"{epochs} training epochs."
        )
    rate = EpochSchedule(
        learning_rate,
        schedule=schedule,
        total_steps=steps_per_epoch * epochs,
        boundaries=[b * steps_per_epoch for b in boundaries],
        decay=decay,
        warmup_steps=int(warmup_epochs * steps_per_epoch),
    )
    if optimizer == "sgd":
        return keras.optimizers.SGD(
            rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=weight_decay)
    return keras.optimizers.AdamW(rate, weight_decay=weight_decay or 0.004)
