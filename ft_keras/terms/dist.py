"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger
Teacher") as a term, with its mathematics.

DIST's loss relates the teacher's and the student's softened predictions
within the batch, so, unlike the other terms, it is one value per batch,
not a value per example; its mathematics live here rather than in
`ft_keras.losses` for that reason.
"""

import keras
from keras import ops

from ft_keras import _validation
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"
# `cosine_similarity`'s `eps` in DIST's code.
EPSILON = 1e-8


def pearson_correlation(a, b):
    """Per row of two `(rows, columns)` tensors, the Pearson correlation:
    the cosine of the rows centred on their means, `(a . b) / (|a| |b| +
    1e-8)` as DIST's `pearson_correlation`.

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(pearson_correlation(x, 2 * x + 1)[0]) > 0.9999
    True
    """
    a = a - ops.mean(a, axis=1, keepdims=True)
    b = b - ops.mean(b, axis=1, keepdims=True)
    norms = ops.norm(a, axis=1) * ops.norm(b, axis=1)
    return ops.sum(a * b, axis=1) / (norms + EPSILON)


def dist_loss(teacher_logits, student_logits, beta, gamma, temperature):
    """DIST's loss of a batch of logits `(batch, classes)`: with `p =
    softmax(logits / T)`, `T^2 * (beta * inter + gamma * intra)`, where
    `inter = 1 - mean over examples of pearson(p_s, p_t)` (each example's
    predicted classes) and `intra = 1 - mean over classes of pearson(p_s^T,
    p_t^T)` (each class's predictions across the batch). A scalar."""
    p_s = ops.softmax(student_logits / temperature, axis=1)
    p_t = ops.softmax(teacher_logits / temperature, axis=1)
    inter = 1.0 - ops.mean(pearson_correlation(p_s, p_t))
    intra = 1.0 - ops.mean(pearson_correlation(ops.transpose(p_s),
                                               ops.transpose(p_t)))
    return temperature**2 * (beta * inter + gamma * intra)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DIST(Term):
    """DIST (Huang, You, Wang, Qian & Xu, NeurIPS 2022) on the logits, as a
    term.

    The inter-class relation (each example's softened class predictions,
    student against teacher, by Pearson correlation) and the intra-class
    relation (each class's predictions across the batch), `T^2 * (beta *
    inter + gamma * intra)` (`dist_loss`), logged as `dist_loss` (before
    `weight`). Each choice follows DIST's classification code,
    hunto/image_classification_sota (the submodule of hunto/DIST_KD):

    - the formula, `eps=1e-8` in the cosine, and `tau**2` on both
      relations: `DIST.forward` in `lib/models/losses/dist_kd.py`;
    - the defaults `beta=1, gamma=1, tau=1` (`kd: dist`) and the CIFAR-100
      setting `kd: dist_t4` (T 4) with `kd_loss_weight: 2.` and
      `ori_loss_weight: 1.` (the `Distiller`'s `student_loss_weight`):
      `lib/models/losses/kd_loss.py` and
      `configs/strategies/distill/dist_cifar.yaml` (240 epochs, batch 64,
      SGD lr 0.05 with momentum 0.9 and weight decay 5e-4; its step
      schedule is that file's).

    The loss is one value per batch (the intra-class relation spans the
    batch), so the `Distiller` takes it as the batch's loss. Under
    `tf.distribute` each replica computes it on its own part of the global
    batch, as DIST's distributed training does on each GPU's batch, and the
    replicas' values are averaged.

    Args:
        beta: Weight of the inter-class relation (1.0 in DIST).
        gamma: Weight of the intra-class relation (1.0 in DIST).
        temperature: The softmax temperature `T` (1.0 by default, 4.0 in
            DIST's CIFAR-100 setting).
        weight: The term's weight (2.0 in DIST's CIFAR-100 setting).
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    >>> dist = DIST(temperature=4.0, weight=2.0)
    >>> dist.loss_name
    'dist_loss'
    """

    def __init__(self, beta=1.0, gamma=1.0, temperature=1.0, weight=1.0,
                 name="dist", **kwargs):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)
        self.beta = _validation.non_negative("beta", beta, "1.0 in DIST")
        self.gamma = _validation.non_negative("gamma", gamma, "1.0 in DIST")
        self.temperature = _validation.positive(
            "temperature", temperature,
            "1.0 by default, 4.0 in DIST's CIFAR-100 setting")

    def compute_loss(self, teacher, student):
        return dist_loss(teacher[0], student[0], self.beta, self.gamma,
                         self.temperature)

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config.update({"beta": self.beta, "gamma": self.gamma,
                       "temperature": self.temperature})
        return config
