"""Decoupled knowledge distillation (Zhao et al., CVPR 2022) as a term."""

import keras
from keras import ops

from ft_keras import _validation
from ft_keras import losses as ft_losses
from ft_keras import metrics as ft_metrics
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"


def _target_classes(labels, logits):
    """Class indices `(batch,)` of `labels`: indices as they are, one-hot or
    soft (CutMix / MixUp) labels as their argmax."""
    if ft_metrics.holds_distributions(labels, logits) and (
        labels.shape[-1] != logits.shape[-1]
    ):
        raise ValueError(
            "Decoupled KD needs class indices of shape (batch,) or one-hot "
            f"/ soft labels of the logits' shape {tuple(logits.shape)}. "
            f"Received labels of shape {tuple(labels.shape)}"
        )
    indices = ft_metrics.class_indices(labels, logits)
    return ops.reshape(ops.cast(indices, "int32"), (-1,))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DecoupledKD(Term):
    """Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang,
    CVPR 2022) on the logits, as a term.

    Per example, `warmup * (alpha * TCKD + beta * NCKD)` of the teacher's
    and the student's logits (`ft_keras.losses.decoupled_kd`: TCKD the KL
    of the binary target / non-target distributions, NCKD the KL among the
    non-target classes, each times `T^2`), logged as `dkd_loss` (before
    `weight`), where `warmup = min(epoch / warmup_epochs, 1)` with `epoch`
    counted from 1 and constant within an epoch. Each choice follows
    megvii-research/mdistiller:

    - the formula, the `- 1000.0 * gt_mask` of NCKD and the reduction
      (`kl_div(..., size_average=False)` summed over the batch, divided by
      the batch size: the batch mean of the per-example values here) are
      `dkd_loss` of `mdistiller/distillers/DKD.py`;
    - the warm-up is `DKD.forward_train`'s `min(kwargs["epoch"] /
      self.warmup, 1.0)`, where `mdistiller/engine/trainer.py` counts
      epochs from 1. It reads the `Distiller`'s `epoch` (`needs_epoch`),
      which `fit` sets from Keras' epoch index: a `fit` resumed with
      `initial_epoch` continues the warm-up exactly;
    - the target class is the label's (`needs_labels`): class indices, or
      the argmax class of one-hot or soft (CutMix / MixUp) labels, which
      mdistiller does not mix;
    - the defaults are `mdistiller/engine/cfg.py`'s `CFG.DKD`: CE weight
      1.0 (the `Distiller`'s `student_loss_weight`), alpha 1.0, beta 8.0,
      T 4.0, warm-up 20 epochs. Its CIFAR-100 configs
      (`configs/cifar100/dkd/*.yaml`) keep them except beta: 2.0 for
      resnet56 -> resnet20 and resnet110 -> resnet32; 6.0 for vgg13 ->
      vgg8, vgg13 -> MobileNetV2, wrn_40_2 -> wrn_16_2 and wrn_40_2 ->
      wrn_40_1; 8.0 for the others (resnet32x4 -> resnet8x4 / ShuffleV1 /
      ShuffleV2, ResNet50 -> MobileNetV2, wrn_40_2 -> ShuffleV1). They
      train 240 epochs, batch 64, SGD momentum 0.9, weight decay 5e-4.

    Args:
        alpha: Weight of TCKD (1.0 in mdistiller).
        beta: Weight of NCKD (8.0 by default in mdistiller; see above).
        temperature: The softmax temperature `T` (4.0 in mdistiller).
        warmup_epochs: Epochs over which the term's factor rises linearly
            to 1 (20 in mdistiller); 0 for none.
        weight: The term's weight (1.0: mdistiller has none besides alpha
            and beta).
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    dkd = ft_keras.DecoupledKD(alpha=1.0, beta=8.0, temperature=4.0,
                               warmup_epochs=20)
    distiller = ft_keras.Distiller(teacher, student, terms=[dkd])
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit(train_ds, epochs=240)  # labels in train_ds reach the term
    ```
    """

    needs_labels = True
    needs_epoch = True

    def __init__(
        self,
        alpha=1.0,
        beta=8.0,
        temperature=4.0,
        warmup_epochs=20,
        weight=1.0,
        name="dkd",
        **kwargs,
    ):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)
        self.alpha = _validation.non_negative("alpha", alpha, "1.0 in mdistiller")
        self.beta = _validation.non_negative(
            "beta", beta, "8.0 in mdistiller; 2.0 or 6.0 for some pairs")
        self.temperature = _validation.positive(
            "temperature", temperature, "4.0 in mdistiller")
        self.warmup_epochs = _validation.non_negative(
            "warmup_epochs", warmup_epochs, "20 in mdistiller, 0 for none")

    def warmup(self, epoch):
        """The factor in epoch `epoch` (counted from 1): `min(epoch /
        warmup_epochs, 1)`, or 1 without warm-up."""
        if not self.warmup_epochs:
            return ops.ones_like(epoch)
        return ops.minimum(epoch / self.warmup_epochs, 1.0)

    def compute_loss(self, teacher, student, labels, epoch):
        target = _target_classes(labels, student[0])
        tckd, nckd = ft_losses.decoupled_kd(
            teacher[0], student[0], target, self.temperature)
        return self.warmup(epoch) * (self.alpha * tckd + self.beta * nckd)

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "temperature": self.temperature,
                "warmup_epochs": self.warmup_epochs,
            }
        )
        return config
