"""Optimizers and learning-rate schedules of the published recipes.

Schedules are given in *epochs*, as the papers give them, and turned into
steps once the number of steps per epoch is known.

Weight decay comes in two forms, chosen by `weight_decay_mode`:

- `"decoupled"`: Keras' own `weight_decay` argument, `w -= lr * wd * w`
  applied to every trainable variable outside the gradient (AdamW-style);
- `"coupled"`: PyTorch's `SGD(weight_decay=wd)`, used by every reference
  code of Factor Transfer: `wd * w` is added to the gradient of every
  trainable variable (kernels, biases, BatchNorm gamma and beta) before
  momentum. `TorchSGD` does this.

(An L2 penalty on kernels only, `network.weight_decay` and
`factor_transfer.connector_weight_decay`, is a third form, set on the
networks rather than here.)
"""

import dataclasses
import math

import keras
from keras import ops

from ft_keras import _keras_private
from ft_keras import _validation

_PACKAGE = "ft_keras"
SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step decay or cosine decay by step, with an optional linear warm-up.

    - `"constant"`: `learning_rate` throughout;
    - `"step"`: multiplied by `decay` at each step in `boundaries` (e.g. the
      paper's x0.1 at epochs 82 and 123);
    - `"cosine"`: cosine decay from `learning_rate` to 0 at `total_steps`.

    During the first `warmup_steps` steps the rate rises linearly from
    `learning_rate / warmup_steps` to `learning_rate`.

    Why not Keras' own schedules: the references step the rate with
    PyTorch's `MultiStepLR`, whose rate is already decayed *at* a boundary
    epoch's first step, while `keras.optimizers.schedules.PiecewiseConstantDecay`
    decays only *after* it (`step > boundary`, one step late); and Keras'
    `CosineDecay` starts its decay after the warm-up, where here warm-up and
    decay share one timeline of `total_steps` (as PyTorch's schedulers
    chained over epochs do). `tests/test_optim.py` shows both differences.

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchSGD(keras.optimizers.SGD):
    """`torch.optim.SGD` in Keras: coupled weight decay, PyTorch's momentum.

    For each trainable variable `w` with gradient `g`, at learning rate `lr`
    (PyTorch's update with `dampening=0`):

        g = g + coupled_weight_decay * w     # PyTorch's `weight_decay`
        b = momentum * b + g                 # momentum buffer (b = 0 first)
        d = g + momentum * b if nesterov else b
        w = w - lr * d

    It differs from `keras.optimizers.SGD` in two ways. Its weight decay is
    part of the gradient, so it goes through momentum, and it reaches every
    variable given to `apply` (biases and BatchNorm gamma/beta too, not only
    the kernels an L2 regularizer would); frozen networks are never given,
    so never decayed. And its momentum buffer holds gradients, not
    `lr`-scaled steps, so a change of learning rate (a step of the
    schedule, warm-up, cosine decay) acts at once, as in PyTorch, instead
    of fading in through the velocity. With a constant rate and no decay
    the two give the same weights.

    Variables excluded by `exclude_from_weight_decay` are not decayed.

    Args:
        learning_rate: A float or a `LearningRateSchedule`.
        momentum: Momentum factor in `[0, 1]` (0.9 in the references).
        nesterov: Whether to use PyTorch's Nesterov momentum.
        coupled_weight_decay: PyTorch's `weight_decay` coefficient, a
            non-negative float (5e-4 in the paper's code and RepDistiller,
            1e-4 in MMRazor and torchdistill).
        **kwargs: Other `keras.optimizers.Optimizer` arguments (`name`,
            `clipnorm`, ...), except `weight_decay`, Keras' decoupled decay.

    Example:

    ```python
    optimizer = TorchSGD(0.1, momentum=0.9, coupled_weight_decay=5e-4)
    model.compile(optimizer=optimizer, loss="mse")
    ```
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        coupled_weight_decay=0.0,
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "TorchSGD decays through the gradient: give "
                "`coupled_weight_decay`, not Keras' decoupled `weight_decay`. "
                f"Received: weight_decay={kwargs['weight_decay']!r}"
            )
        kwargs.pop("weight_decay", None)
        coupled_weight_decay = _validation.non_negative(
            "coupled_weight_decay",
            coupled_weight_decay,
            "PyTorch's SGD `weight_decay`, e.g. 5e-4",
        )
        super().__init__(
            learning_rate=learning_rate,
            momentum=float(momentum),
            nesterov=nesterov,
            **kwargs,
        )
        self.coupled_weight_decay = coupled_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and _keras_private.optimizer_uses_weight_decay(
            self, variable
        ):
            decay = ops.cast(self.coupled_weight_decay, variable.dtype)
            gradient = ops.add(gradient, ops.multiply(decay, variable))
        if self.momentum != 0:
            buffer = self.momentums[
                _keras_private.optimizer_variable_index(self, variable)
            ]
            momentum = ops.cast(self.momentum, variable.dtype)
            self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
            if self.nesterov:
                gradient = ops.add(gradient, ops.multiply(buffer, momentum))
            else:
                gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """A stage's training: its epochs, and its optimizer with a learning
    rate scheduled in epochs, as the papers give it.

    Each setting is declared here once, with its default and its check; the
    runner's gin binds it as `training` under a stage's scope
    (`student/training.epochs = 164`; an unscoped binding, e.g.
    `training.weight_decay = 5e-4`, holds for every stage that does not
    bind its own).

    Args:
        epochs: Epochs of the stage (a positive integer).
        optimizer: `"sgd"`, `"adam"` or `"adamw"`.
        learning_rate: The peak learning rate.
        momentum, nesterov: SGD's momentum and Nesterov flag.
        schedule: `"constant"`, `"step"` or `"cosine"` (`EpochSchedule`).
        boundaries: Epochs at which a `"step"` schedule multiplies the rate
            by `decay` (the paper's `(82, 123)`); each before `epochs`.
            Other schedules ignore them, so an unscoped binding may hold
            for stages with a constant rate.
        decay: The step schedule's factor.
        warmup_epochs: Epochs (may be fractional) of linear warm-up.
        weight_decay: None, or the decay coefficient of every trainable
            variable the optimizer updates (never a frozen network),
            applied as `weight_decay_mode` says.
        weight_decay_mode: `"decoupled"` (the default): Keras' own decay,
            `w -= lr * weight_decay * w` outside the gradient. `"coupled"`:
            PyTorch's `SGD(weight_decay=...)`, as every reference code of
            Factor Transfer: `weight_decay * w` is added to each gradient
            before momentum (`TorchSGD`; needs `optimizer="sgd"`). With
            `"coupled"`, leave kernel L2 penalties of the same stage at 0,
            or the kernels are decayed twice (the runner refuses that).

    Example:

    ```python
    training = TrainingConfig(epochs=164, boundaries=(82, 123),
                              weight_decay=5e-4, weight_decay_mode="coupled")
    optimizer = training.build_optimizer(steps_per_epoch=391)
    ```
    """

    epochs: int
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "step"
    boundaries: tuple = ()
    decay: float = 0.1
    warmup_epochs: float = 0
    weight_decay: float = None
    weight_decay_mode: str = "decoupled"

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) \
                or self.epochs < 1:
            raise ValueError(
                "`epochs` must be a positive integer. Received: "
                f"epochs={self.epochs!r}"
            )
        _validation.one_of("optimizer", self.optimizer, OPTIMIZERS)
        _validation.one_of("schedule", self.schedule, SCHEDULES)
        _validation.one_of(
            "weight_decay_mode",
            self.weight_decay_mode,
            WEIGHT_DECAY_MODES,
            " ('coupled' is PyTorch's SGD weight decay)",
        )
        if self.weight_decay_mode == "coupled" and self.optimizer != "sgd":
            raise ValueError(
                "`weight_decay_mode='coupled'` is PyTorch's SGD weight decay "
                "and needs `optimizer='sgd'`; use 'decoupled' with "
                f"{self.optimizer!r}. Received: optimizer={self.optimizer!r}"
            )
        if self.weight_decay is not None:
            _validation.non_negative(
                "weight_decay", self.weight_decay, "or None; 5e-4 in the paper"
            )
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        if self.schedule == "step" and any(
            b >= self.epochs for b in self.boundaries
        ):
            raise ValueError(
                f"Learning-rate boundaries {list(self.boundaries)} must lie "
                f"before the last of the {self.epochs} training epochs (a "
                "boundary at or beyond it never takes effect): lower them or "
                "raise `epochs`."
            )

    def build_optimizer(self, steps_per_epoch):
        """The optimizer, its `EpochSchedule` in steps of `steps_per_epoch`."""
        rate = EpochSchedule(
            self.learning_rate,
            schedule=self.schedule,
            total_steps=steps_per_epoch * self.epochs,
            boundaries=[b * steps_per_epoch for b in self.boundaries],
            decay=self.decay,
            warmup_steps=int(self.warmup_epochs * steps_per_epoch),
        )
        if self.weight_decay_mode == "coupled":
            return TorchSGD(
                rate,
                momentum=self.momentum,
                nesterov=self.nesterov,
                coupled_weight_decay=self.weight_decay or 0.0,
            )
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(
                rate,
                momentum=self.momentum,
                nesterov=self.nesterov,
                weight_decay=self.weight_decay,
            )
        if self.optimizer == "adam":
            return keras.optimizers.Adam(rate, weight_decay=self.weight_decay)
        return keras.optimizers.AdamW(rate, weight_decay=self.weight_decay or 0.004)


def build_optimizer(steps_per_epoch, epochs, **settings):
    """An optimizer with an `EpochSchedule`, from epoch-based settings: the
    fields of `TrainingConfig` (`optimizer`, `learning_rate`, `boundaries`,
    `weight_decay`, `weight_decay_mode`, ...), with its defaults and checks.

    Example:

    ```python
    optimizer = build_optimizer(steps_per_epoch=391, epochs=164,
                                learning_rate=0.1, boundaries=[82, 123],
                                weight_decay=5e-4, weight_decay_mode="coupled")
    ```
    """
    return TrainingConfig(epochs, **settings).build_optimizer(steps_per_epoch)
