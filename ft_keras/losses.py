"""Losses of Factor Transfer, and of the baselines it is compared with.

`FactorTransferLoss` compares the student factor to the teacher factor;
`reconstruction_loss` returns the loss that pre-trains the paraphraser;
`KnowledgeDistillationLoss` (Hinton et al.) and `AttentionTransferLoss`
(Zagoruyko & Komodakis) are the usual baselines, `decoupled_kd` (Zhao et
al.) and `hint_loss` (Romero et al.) two more. `ClassificationCrossentropy`
takes class indices and one-hot (mixed) labels alike.

All are `keras.losses.Loss` objects with the default "sum_over_batch_size"
reduction, written with `keras.ops` only, so they run on every Keras 3
backend. On TensorFlow under `tf.distribute` each replica's value is already
divided by the number of replicas (as for any Keras loss), so the summed
gradients are those of the global batch.
"""

import keras
from keras import ops

from ft_keras import _validation
from ft_keras import metrics

_PACKAGE = "ft_keras"
_EPSILON = 1e-12  # torch.nn.functional.normalize's default eps.

FACTOR_MODES = ("full", "attention")
P_FORMS = ("norm", "mean")
RECONSTRUCTIONS = ("l1", "mse", "normalized_l2")


def _l2_normalize_rows(x):
    """Divides each row by its L2 norm, clamped below at 1e-12 as in
    `torch.nn.functional.normalize`, with finite gradients everywhere.

    `keras.ops.normalize(x, epsilon=1e-12)` gives the same values (to float32
    rounding), but its gradient for an all-zero row (a dead feature map) is
    NaN on the JAX and PyTorch backends: it differentiates `rsqrt` at 0. This
    clamps the squared norm at `1e-12 ** 2` before the square root, so an
    all-zero row gets PyTorch's finite gradient (`x / 1e-12`) on every
    backend.
    """
    square_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x / ops.sqrt(ops.maximum(square_norm, _EPSILON**2))


def _flatten_per_example(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def match_spatial_size(teacher_map, student_map):
    """Average-pools the larger of two NHWC maps to the other's height/width.

    The larger size must be an integer multiple of the smaller one (as for
    PyTorch's `adaptive_avg_pool2d` to behave like a plain average pool).
    Returns the pair `(teacher_map, student_map)`.
    """
    t_hw = tuple(teacher_map.shape[1:3])
    s_hw = tuple(student_map.shape[1:3])
    if None in t_hw or None in s_hw or t_hw == s_hw:
        return teacher_map, student_map
    if t_hw[0] >= s_hw[0] and t_hw[1] >= s_hw[1]:
        large, small, large_is_teacher = t_hw, s_hw, True
    elif t_hw[0] <= s_hw[0] and t_hw[1] <= s_hw[1]:
        large, small, large_is_teacher = s_hw, t_hw, False
    else:
        large = small = None
    if large is None or large[0] % small[0] or large[1] % small[1]:
        raise ValueError(
            "Cannot match the spatial sizes of the teacher factor "
            f"{tuple(teacher_map.shape)} and the student factor "
            f"{tuple(student_map.shape)}: the larger height/width must be an "
            "integer multiple of the smaller one. Choose taps whose maps have "
            "compatible sizes."
        )
    pool = (large[0] // small[0], large[1] // small[1])
    if large_is_teacher:
        teacher_map = ops.average_pool(teacher_map, pool, strides=pool)
    else:
        student_map = ops.average_pool(student_map, pool, strides=pool)
    return teacher_map, student_map


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactorTransferLoss(keras.losses.Loss):
    """The factor transfer loss between teacher and student factors.

    Each factor is flattened per example and L2-normalised; with `d` the
    difference of the two normalised factors (`D` elements per example):

    - `p=1`: the mean absolute difference over all elements, `mean |d|`
      (PyTorch's `L1Loss` on the normalised factors: the paper's code,
      MMRazor's `FTLoss`, torchdistill's `FTLoss(p=1)`, RepDistiller's
      `FactorTransfer(p2=1)`), whatever `p_form`;
    - `p=2`, `p_form="norm"` (the default): the L2 norm of `d` per example,
      `sqrt(sum d^2)`, averaged over the batch (the paper's formula and
      torchdistill's `FTLoss(p=2)`, `torchdistill/losses/mid_level.py`);
    - `p=2`, `p_form="mean"`: the mean of `d^2` over all elements,
      `sum d^2 / D` averaged over the batch (RepDistiller's
      `FactorTransfer(p2=2)`, `distiller_zoo/FT.py`). It is the square of
      the norm form divided by `D`, so `beta` must be scaled to match.

    With `factor="full"` the factor is the whole `H*W*C` map (the paper). With
    `factor="attention"` it is the channel-mean of squares, an `H*W` map
    (RepDistiller's variant); the channel counts of the two factors may then
    differ. If the spatial sizes differ, the larger map is average-pooled to
    the smaller before anything else.

    Called as `loss(teacher_factor, student_factor)`. Computed in float32
    whatever the inputs' dtype.

    Args:
        p: 1 or 2, the norm of the difference.
        factor: `"full"` or `"attention"`.
        p_form: `"norm"` or `"mean"`: how `p=2` reduces the difference (see
            above); `p=1` is the same in both forms.
        reduction: Keras loss reduction, `"sum_over_batch_size"` by default.
        name: Name of the loss.

    Example:

    ```python
    import numpy as np
    loss = ft_keras.FactorTransferLoss(p=1)
    teacher_factor = np.random.rand(4, 8, 8, 32).astype("float32")
    student_factor = np.random.rand(4, 8, 8, 32).astype("float32")
    float(loss(teacher_factor, student_factor))  # a small positive number
    ```
    """

    def __init__(
        self,
        p=1,
        factor="full",
        p_form="norm",
        reduction="sum_over_batch_size",
        name="factor_transfer_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(p, bool) or p not in (1, 2):
            raise ValueError(f"`p` must be 1 or 2. Received: p={p!r}")
        if factor not in FACTOR_MODES:
            raise ValueError(
                f"`factor` must be one of {FACTOR_MODES}. Received: "
                f"factor={factor!r}"
            )
        if p_form not in P_FORMS:
            raise ValueError(
                f"`p_form` must be one of {P_FORMS} ('norm': the L2 norm of "
                "the difference per example, as the paper and torchdistill; "
                "'mean': the mean squared difference, as RepDistiller). "
                f"Received: p_form={p_form!r}"
            )
        self.p = int(p)
        self.factor = factor
        self.p_form = p_form

    def factorize(self, feature_map):
        """Flattened, L2-normalised factor of a (N, H, W, C) map."""
        x = ops.cast(feature_map, "float32")
        if self.factor == "attention":
            x = ops.mean(ops.square(x), axis=-1)
        return _l2_normalize_rows(_flatten_per_example(x))

    def call(self, y_true, y_pred):
        teacher, student = y_true, y_pred
        if len(teacher.shape) != 4 or len(student.shape) != 4:
            raise ValueError(
                "FactorTransferLoss expects two (batch, height, width, "
                f"channels) maps. Received: teacher factor "
                f"{tuple(teacher.shape)}, student factor {tuple(student.shape)}"
            )
        teacher, student = match_spatial_size(teacher, student)
        if self.factor == "full" and teacher.shape[-1] != student.shape[-1]:
            raise ValueError(
                "The student factor must have as many channels as the teacher "
                f"factor. Received: teacher factor {tuple(teacher.shape)}, "
                f"student factor {tuple(student.shape)}. Set the Translator's "
                "`out_channels` to the Paraphraser's `factor_channels`."
            )
        diff = self.factorize(student) - self.factorize(teacher)
        if self.p == 1:
            return ops.mean(ops.abs(diff), axis=-1)
        if self.p_form == "mean":
            return ops.mean(ops.square(diff), axis=-1)
        return ops.sqrt(ops.sum(ops.square(diff), axis=-1))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"p": self.p, "factor": self.factor, "p_form": self.p_form}
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KnowledgeDistillationLoss(keras.losses.Loss):
    """Hinton et al.'s knowledge distillation loss between logits.

    `T^2 * KL(softmax(teacher / T) || softmax(student / T))` per example,
    averaged over the batch (as RepDistiller's `DistillKL`). Called as
    `loss(teacher_logits, student_logits)`; computed in float32.

    Args:
        temperature: The softening temperature `T` (4 in RepDistiller).

    Example:

    ```python
    import numpy as np
    loss = ft_keras.losses.KnowledgeDistillationLoss(temperature=4.0)
    logits = np.random.rand(8, 10).astype("float32")
    float(loss(logits, logits))  # 0.0
    ```
    """

    def __init__(
        self,
        temperature=4.0,
        reduction="sum_over_batch_size",
        name="knowledge_distillation_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = _validation.positive(
            "temperature", temperature, "4 in RepDistiller")

    def call(self, y_true, y_pred):
        t = ops.cast(y_true, "float32") / self.temperature
        s = ops.cast(y_pred, "float32") / self.temperature
        log_p_t = ops.log_softmax(t, axis=-1)
        log_p_s = ops.log_softmax(s, axis=-1)
        kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
        return kl * self.temperature**2

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionTransferLoss(keras.losses.Loss):
    """Zagoruyko & Komodakis' attention transfer loss between feature maps.

    The attention map of a (N, H, W, C) map is the channel-mean of
    `|x|^power`, flattened and L2-normalised; the loss is the mean squared
    difference of the two attention maps (RepDistiller's `Attention`). If the
    spatial sizes differ, the larger map is average-pooled to the smaller.
    Channel counts may differ. Called as `loss(teacher_map, student_map)`.

    Args:
        power: The exponent `p` of the attention map (2 in the paper).

    Example:

    ```python
    import numpy as np
    loss = ft_keras.losses.AttentionTransferLoss()
    teacher_map = np.random.rand(2, 8, 8, 64).astype("float32")
    student_map = np.random.rand(2, 8, 8, 16).astype("float32")
    float(loss(teacher_map, student_map))  # a small positive number
    ```
    """

    def __init__(
        self,
        power=2,
        reduction="sum_over_batch_size",
        name="attention_transfer_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or (
            power <= 0
        ):
            raise ValueError(
                "`power` must be a positive number (2 in the paper). "
                f"Received: power={power!r}"
            )
        self.power = power

    def attention(self, feature_map):
        x = ops.abs(ops.cast(feature_map, "float32"))
        x = ops.mean(ops.power(x, self.power), axis=-1)
        return _l2_normalize_rows(_flatten_per_example(x))

    def call(self, y_true, y_pred):
        teacher, student = match_spatial_size(y_true, y_pred)
        diff = self.attention(student) - self.attention(teacher)
        return ops.mean(ops.square(diff), axis=-1)

    def get_config(self):
        config = super().get_config()
        config["power"] = self.power
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormalizedL2Loss(keras.losses.Loss):
    """MMRazor's `L2Loss(normalize=True)` between two feature maps.

    Each map is flattened per example and L2-normalised; the loss is the sum
    of squared differences per example, averaged over the batch.

    Example:

    ```python
    import numpy as np
    loss = ft_keras.losses.NormalizedL2Loss()
    x = np.random.rand(2, 4, 4, 8).astype("float32")
    float(loss(x, x))  # 0.0
    ```
    """

    def __init__(
        self, reduction="sum_over_batch_size", name="normalized_l2", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        t = _l2_normalize_rows(_flatten_per_example(ops.cast(y_true, "float32")))
        s = _l2_normalize_rows(_flatten_per_example(ops.cast(y_pred, "float32")))
        return ops.sum(ops.square(s - t), axis=-1)


def _kl_div(target, log_input):
    """PyTorch's `F.kl_div(log_input, target)` summed over the last axis:
    `xlogy(target, target) - target * log_input`, 0 where `target` is 0."""
    positive = target > 0
    safe = ops.where(positive, target, 1.0)
    entropy = ops.where(positive, target * ops.log(safe), 0.0)
    return ops.sum(entropy - target * log_input, axis=-1)


def decoupled_kd(teacher_logits, student_logits, target, temperature=4.0):
    """Decoupled knowledge distillation's two parts per example (Zhao et
    al., "Decoupled Knowledge Distillation", CVPR 2022).

    mdistiller's `dkd_loss` (`mdistiller/distillers/DKD.py`), before its
    `alpha` and `beta`. With `p = softmax(logits / T)` and `g` the one-hot
    mask of the target class:

    - TCKD: `T^2 * KL(b_t || b_s)` of the binary distributions `b = (sum
      p * g, sum p * (1 - g))` (its `cat_mask`, and `torch.log` of `b_s`);
    - NCKD: `T^2 * KL(q_t || q_s)` of `q = softmax(logits / T - 1000 g)`,
      the distribution over the non-target classes (the target's
      probability underflows to 0, as in mdistiller).

    KL is PyTorch's `kl_div` summed over the classes; mdistiller's sum over
    the batch (`size_average=False`) divided by the batch size is the batch
    mean of these values. Computed in float32.

    Args:
        teacher_logits: `(batch, classes)`.
        student_logits: `(batch, classes)`.
        target: Class indices, `(batch,)` integers.
        temperature: `T` (4 in mdistiller).

    Returns:
        `(tckd, nckd)`, each of shape `(batch,)`.

    Example:

    >>> logits = ops.array([[2.0, 0.0, 1.0]])
    >>> tckd, nckd = decoupled_kd(logits, logits, ops.array([0]))
    >>> round(float(tckd[0]), 5), round(float(nckd[0]), 5)
    (0.0, 0.0)
    """
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    gt = ops.one_hot(ops.cast(target, "int32"), s.shape[-1], dtype="float32")

    def binary(p):
        return ops.stack([ops.sum(p * gt, -1), ops.sum(p * (1.0 - gt), -1)], -1)

    b_t = binary(ops.softmax(t, axis=-1))
    b_s = binary(ops.softmax(s, axis=-1))
    tckd = _kl_div(b_t, ops.log(b_s))
    nckd = _kl_div(ops.softmax(t - 1000.0 * gt, axis=-1),
                   ops.log_softmax(s - 1000.0 * gt, axis=-1))
    return tckd * temperature**2, nckd * temperature**2


def hint_loss(teacher_map, student_map):
    """FitNets' hint loss per example (Romero et al., ICLR 2015): the mean
    squared difference over each example's elements, whose batch mean is
    PyTorch's `nn.MSELoss()` (RepDistiller's `HintLoss`,
    `distiller_zoo/FitNet.py`). Computed in float32.

    Example:

    >>> x = ops.ones((2, 4, 4, 3))
    >>> [float(v) for v in hint_loss(x, 2.0 * x)]
    [1.0, 1.0]
    """
    diff = ops.cast(student_map, "float32") - ops.cast(teacher_map, "float32")
    return ops.mean(ops.square(_flatten_per_example(diff)), axis=-1)


def reconstruction_loss(name):
    """The paraphraser's reconstruction loss by name.

    - `"l1"`: `keras.losses.MeanAbsoluteError`, the mean absolute error over
      all elements (PyTorch's `L1Loss`: the paper's code);
    - `"mse"`: `keras.losses.MeanSquaredError`, the mean squared error over
      all elements (PyTorch's `MSELoss`: RepDistiller, torchdistill);
    - `"normalized_l2"`: `NormalizedL2Loss` (MMRazor).

    Each computes in float32 whatever the inputs' dtype (a Keras loss's
    dtype is `keras.config.floatx()` unless given).

    Example:

    >>> reconstruction_loss("l1").name
    'l1'
    """
    if name == "l1":
        return keras.losses.MeanAbsoluteError(name="l1")
    if name == "mse":
        return keras.losses.MeanSquaredError(name="mse")
    if name == "normalized_l2":
        return NormalizedL2Loss()
    raise ValueError(
        f"`reconstruction` must be one of {RECONSTRUCTIONS}. Received: "
        f"reconstruction={name!r}"
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassificationCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against class indices or one-hot labels.

    Labels of the logits' rank (one-hot, or soft after CutMix / MixUp) take
    `keras.losses.categorical_crossentropy`, class indices
    `sparse_categorical_crossentropy`: one compiled loss fits a training
    split whose labels are mixed and a test split whose labels are not.
    The rank is known when Keras traces the step, so each case runs only
    its own loss.

    Args:
        from_logits: Whether `y_pred` are logits (ft_keras' networks
            return logits).
        reduction: Keras loss reduction.
        name: Name of the loss.

    Example:

    >>> loss = ClassificationCrossentropy()
    >>> logits = ops.array([[2.0, 0.0], [0.0, 2.0]])
    >>> sparse = float(loss(ops.array([0, 1]), logits))
    >>> one_hot = float(loss(ops.eye(2), logits))
    >>> round(sparse, 4), round(one_hot, 4)
    (0.1269, 0.1269)
    """

    def __init__(self, from_logits=True, reduction="sum_over_batch_size",
                 name="classification_crossentropy"):
        super().__init__(name=name, reduction=reduction)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        if metrics.holds_distributions(y_true, y_pred):
            return keras.losses.categorical_crossentropy(
                y_true, y_pred, from_logits=self.from_logits)
        return keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}
