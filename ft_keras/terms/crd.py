"""CRD (Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation
Distillation") as a term, with its mathematics; its memory banks and
negatives are in `ft_keras.terms.crd_memory`.

Each choice follows HobbitLong/RepDistiller, the authors' code; the files
are named where they are used:

- `crd/criterion.py`: `CRDLoss` (two embedding heads, the memory, two
  `ContrastLoss`es summed), `Embed` (`nn.Linear` then `Normalize(2)`,
  `x / x.pow(2).sum(1).pow(1/2)`, no epsilon), `ContrastLoss` (Eq. 18);
- `crd/memory.py`: `ContrastMemory` (the two memory banks, their uniform
  initialisation, the scores `exp(<memory row, embedding> / T) / Z`, the
  constants `Z` fixed from the first batch, the momentum update of the
  batch's rows, renormalised), and its `AliasMethod` draw over all
  examples where no negatives are given;
- `dataset/cifar100.py`: `CIFAR100InstanceSample` with `mode='exact'`,
  `is_sample=True`, `percent=1.0` (train_student.py's defaults for
  `--distill crd`): each example comes with its `index` and
  `sample_idx = [index] + k negatives`, drawn uniformly from the examples of
  the other classes, without replacement unless `k` exceeds their number;
- `train_student.py` and `helper/loops.py`: the flags `--feat_dim 128
  --nce_k 16384 --nce_t 0.07 --nce_m 0.5`, `-r 1 -a 0 -b 0.8` for crd
  (`scripts/run_cifar_distill.sh`), the taps `feat_s[-1]` / `feat_t[-1]`
  (the penultimate features, pooled and flattened), and
  `criterion_kd(f_s, f_t, index, contrast_idx)`; both embedding heads are
  in `trainable_list` (trained with the student, weight decay included)
  although the teacher is frozen.
"""

import math

import keras
import numpy as np
from keras import ops

from ft_keras import _validation
from ft_keras.terms import crd_memory
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"

# `eps` of crd/criterion.py.
EPSILON = 1e-7

# How negatives are drawn (`CRD`'s `negatives`).
NEGATIVES = ("other_classes", "all")


def l2_normalize(x):
    """RepDistiller's `Normalize(2)`: each row over its Euclidean norm,
    `x / sqrt(sum(x^2))`, with no epsilon (crd/criterion.py)."""
    return x / ops.sqrt(ops.sum(ops.square(x), axis=1, keepdims=True))


def contrast_loss(scores, num_examples):
    """`ContrastLoss.forward` (crd/criterion.py, the paper's Eq. 18) per
    example: with `m = K` negatives and `Pn = 1 / num_examples`,

        -( log(P_pos / (P_pos + m Pn + eps))
           + sum_k log(m Pn / (P_neg_k + m Pn + eps)) )

    of `scores` `(batch, 1 + K)`, the positive first. Their batch mean is
    RepDistiller's value."""
    m = scores.shape[1] - 1
    noise = m / float(num_examples)
    positive = scores[:, 0]
    negative = scores[:, 1:]
    log_d1 = ops.log(positive / (positive + (noise + EPSILON)))
    log_d0 = ops.log(noise / (negative + (noise + EPSILON)))
    return -(log_d1 + ops.sum(log_d0, axis=1))


def _torch_linear_uniform():
    """`nn.Linear`'s default initialisation of its weight
    (`kaiming_uniform_(a=sqrt(5))`): bound `1 / sqrt(fan_in)`."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CRD(Term):
    """Contrastive representation distillation (Tian, Krishnan & Isola,
    ICLR 2020) as a term, exactly as RepDistiller trains it.

    Two trained embedding heads (`embed_student`, `embed_teacher`: a dense
    layer to `feature_dim` then division by the Euclidean norm; the
    teacher's head is trained too, though the teacher is frozen) map the
    flattened taps, RepDistiller's penultimate pooled features, to unit
    vectors `v_s`, `v_t`. Two memory banks of `num_examples x feature_dim`
    (`memory_student`, `memory_teacher`; RepDistiller's `memory_v1`,
    `memory_v2`) hold a running embedding per training example. For each
    example `i` with negatives `n_1..n_K`, the student's scores against the
    teacher's memory and the teacher's against the student's,

        s_j = exp(<memory_teacher[c_j], v_s> / T) / Z_s
        t_j = exp(<memory_student[c_j], v_t> / T) / Z_t,   c = [i, n_1..n_K]

    enter `contrast_loss` (Eq. 18), and the term is the sum of the two,
    logged as `crd_loss` (before `weight`). `Z_s`, `Z_t` are fixed from the
    first training batch, `mean(scores) * num_examples` over the global
    batch, and kept (`normalization`, -1 until set). After the scores, each
    training step moves the batch's rows of each memory towards the new
    embedding, `momentum * row + (1 - momentum) * v`, renormalised. The
    memories start uniform in `[-s, s]`, `s = 1 / sqrt(feature_dim / 3)`.
    The file of each choice is in the module docstring.

    Each example's index in the training set reaches the term through the
    `Distiller`'s inputs (`needs_indices`): `fit({"images": x, "index":
    indices}, y)`, the indices taken before any shuffling or augmentation.
    `fit` without them raises a `ValueError`. `evaluate` with them reports
    the loss with the memory and `Z` as they are (and `Z` from that batch
    if unset) and updates nothing; without them (a held-out set, whose
    examples have no rows in the memory) the term is not computed and
    `crd_loss` is 0, as RepDistiller's `validate` computes the
    cross-entropy alone. `predict` ignores the term.

    Negatives, drawn in the graph from the term's `keras.random`
    `SeedGenerator` (`seed_generator`; as Keras' own generators its state
    is not in `.keras` files, `ft_keras.checkpoint` saves and resumes it):

    - `negatives="other_classes"` (RepDistiller's `mode='exact'`): `K`
      examples of the other classes than the example's, a uniform subset
      without replacement, or with replacement where `K` exceeds their
      number (`np.random.choice(cls_negative[target], k, replace)`). It
      needs the training set's class of every example, given once with
      `set_labels(labels)` (saved with the term). Without replacement each
      example draws a float64 uniform key per training example, the keys of
      its own class set to -1, and takes the `K` largest (`top_k`): a
      uniform random `K`-subset of the other classes' examples. With
      replacement it draws a rank `r` uniform in `[0, m)` per negative, `m`
      the number of other classes' examples, and takes the example at
      position `r`, or `r + count` from its class's start on, of a table of
      the examples sorted by class (`class_order`, its class's `start` and
      `count`).
    - `negatives="all"`: `ContrastMemory`'s own draw where it is given no
      negatives, `K` examples uniform over all, with replacement (the
      example itself included); no labels needed.

    With several replicas (`tf.distribute`: `MirroredStrategy`,
    `MultiWorkerMirroredStrategy`), every replica gathers the global
    batch's indices and embeddings (`all_gather`), draws the global batch's
    negatives from its own copy of the seed (the same on every replica) and
    keeps its own rows' scores, sums the scores for `Z` over all replicas
    (`all_reduce`), and applies the same memory update of the whole global
    batch: the memories, `Z` and the seed stay identical on every replica
    and worker (they are written with `only_first_replica` aggregation),
    and the losses are those of one replica on the global batch. Every
    worker keeps the whole memory.

    Args:
        num_examples: The training set's size (RepDistiller's `n_data`,
            50000 for CIFAR-100): the memories' rows; the indices must lie
            in `[0, num_examples)`.
        teacher_layer: The teacher's tap, its penultimate features pooled
            (`"avg_pool"` in `ft_keras.models`); a map is flattened.
        student_layer: The student's, likewise.
        feature_dim: The embedding's size (`--feat_dim 128`).
        num_negatives: Negatives per example, `K` (`--nce_k 16384`).
        temperature: `T` (`--nce_t 0.07`).
        momentum: The memory's momentum (`--nce_m 0.5`).
        negatives: `"other_classes"` (RepDistiller's `mode='exact'`) or
            `"all"`, see above.
        num_classes: The number of classes, for `"other_classes"` (100
            for CIFAR-100).
        weight: The term's weight (`-b 0.8` in RepDistiller's scripts).
        kernel_regularizer: Optional regularizer of the heads' kernels.
        seed: Seed of the memories' initial values and of the negatives'
            draws; None draws one from Keras' global seed.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    >>> import numpy as np
    >>> crd = CRD(num_examples=6, teacher_layer="t", student_layer="s",
    ...           feature_dim=4, num_negatives=3, num_classes=3, seed=0)
    >>> crd.set_labels([0, 0, 1, 1, 2, 2])
    >>> crd.connect([(None, 8)], [(None, 5)])
    >>> rng = np.random.default_rng(0)
    >>> teacher, student = crd([rng.normal(size=(2, 8)).astype("float32")],
    ...                        [rng.normal(size=(2, 5)).astype("float32")],
    ...                        training=True, indices=np.array([0, 3]))
    >>> tuple(student[0].shape), tuple(crd.compute_loss(teacher, student).shape)
    ((2, 4), (2,))
    >>> bool(np.all(crd.normalization.numpy() > 0))  # Z, fixed now
    True

    In a `Distiller` (RepDistiller's CIFAR-100 setting):

    ```python
    crd = ft_keras.CRD(num_examples=50000, num_classes=100, weight=0.8)
    crd.set_labels(train_labels)  # each training example's class
    distiller = ft_keras.Distiller(teacher, student, terms=[crd])
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit({"images": x, "index": np.arange(len(x))}, train_labels,
                  batch_size=64, epochs=240)
    ```
    """

    needs_indices = True

    def __init__(self, num_examples, teacher_layer="avg_pool",
                 student_layer="avg_pool", feature_dim=128,
                 num_negatives=16384, temperature=0.07, momentum=0.5,
                 negatives="other_classes", num_classes=None, weight=0.8,
                 kernel_regularizer=None, seed=None, name="crd", **kwargs):
        for arg, value in (("teacher_layer", teacher_layer),
                           ("student_layer", student_layer)):
            if not isinstance(value, str):
                raise ValueError(
                    f"`{arg}` must be the name of a layer giving the "
                    "penultimate features, e.g. 'avg_pool' (RepDistiller's "
                    f"feat[-1]). Received: {arg}={value!r}")
        super().__init__([teacher_layer], [student_layer], weight=weight,
                         name=name, **kwargs)
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.num_examples = _count("num_examples", num_examples,
                                   "the training set's size, 50000 for CIFAR-100")
        self.feature_dim = _count("feature_dim", feature_dim,
                                  "128 in RepDistiller")
        self.num_negatives = _count("num_negatives", num_negatives,
                                    "16384 in RepDistiller")
        self.temperature = _validation.positive(
            "temperature", temperature, "0.07 in RepDistiller")
        self.momentum = _validation.non_negative(
            "momentum", momentum, "0.5 in RepDistiller")
        if self.momentum >= 1:
            raise ValueError(
                "`momentum` must be below 1 (0.5 in RepDistiller; 1 would "
                f"never update the memory). Received: momentum={momentum!r}")
        self.negatives = _validation.one_of(
            "negatives", negatives, NEGATIVES,
            " ('other_classes' is RepDistiller's mode='exact')")
        if negatives == "other_classes":
            self.num_classes = _count(
                "num_classes", num_classes,
                "100 for CIFAR-100; needed for negatives='other_classes'")
            if self.num_classes < 2:
                raise ValueError(
                    "negatives='other_classes' needs at least 2 classes. "
                    f"Received: num_classes={num_classes!r}")
        else:
            self.num_classes = None
        if seed is not None and (isinstance(seed, bool)
                                 or not isinstance(seed, int)):
            raise ValueError(
                f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.embed_student = None
        self.embed_teacher = None
        self._labels_given = False
        self._make_state()

    def _make_state(self):
        bound = 1.0 / math.sqrt(self.feature_dim / 3.0)
        shape = (self.num_examples, self.feature_dim)

        def state(name, shape, initializer, dtype="float32"):
            # Written in replica context with the same value everywhere.
            return self.add_weight(
                name=name, shape=shape, initializer=initializer, dtype=dtype,
                trainable=False, aggregation="only_first_replica")

        seed = self.seed
        self.memory_student = state("memory_student", shape,
                                    keras.initializers.RandomUniform(
                                        -bound, bound, seed=seed))
        self.memory_teacher = state(
            "memory_teacher", shape, keras.initializers.RandomUniform(
                -bound, bound, seed=None if seed is None else seed + 1))
        self.normalization = state("normalization", (2,),
                                   keras.initializers.Constant(-1.0))
        if self.negatives == "other_classes":
            n, classes = self.num_examples, self.num_classes
            minus_one = keras.initializers.Constant(-1)
            self.labels = state("labels", (n,), minus_one, "int32")
            self.class_order = state("class_order", (n,), minus_one, "int32")
            self.class_start = state("class_start", (classes,), "zeros", "int32")
            self.class_count = state("class_count", (classes,), "zeros", "int32")
        self.seed_generator = keras.random.SeedGenerator(
            None if self.seed is None else self.seed + 2, name="negatives")

    def set_labels(self, labels):
        """Gives the class of every training example, by index, for
        `negatives="other_classes"`: `labels[i]` of example `i`, integers
        in `[0, num_classes)`, `num_examples` of them (class indices, or
        one-hot rows)."""
        if self.negatives != "other_classes":
            raise ValueError(
                "`set_labels` serves negatives='other_classes'; this term "
                f"draws negatives={self.negatives!r}, over all examples.")
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
        if (labels.shape != (self.num_examples,)
                or not np.issubdtype(labels.dtype, np.number)
                or np.any(labels != np.round(labels))
                or labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"`labels` must give each of the {self.num_examples} "
                f"training examples its class in [0, {self.num_classes}), "
                "in the order of the indices. Received labels of shape "
                f"{labels.shape} and dtype {labels.dtype}"
                + (f", from {labels.min()} to {labels.max()}"
                   if labels.size and np.issubdtype(labels.dtype, np.number)
                   else ""))
        labels, order, start, count = crd_memory.class_table(
            labels, self.num_classes)
        self.labels.assign(labels)
        self.class_order.assign(order)
        self.class_start.assign(start)
        self.class_count.assign(count)
        self._labels_given = True

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.negatives == "other_classes":
            self._labels_given = bool(np.all(
                keras.ops.convert_to_numpy(self.labels) >= 0))

    def connect(self, teacher_shapes, student_shapes):
        """Builds the two embedding heads on the flattened taps."""
        heads = []
        for role, layer, shape in (
                ("student", self.student_layer, student_shapes[0]),
                ("teacher", self.teacher_layer, teacher_shapes[0])):
            shape = tuple(shape)
            if len(shape) < 2 or None in shape[1:]:
                raise ValueError(
                    f"CRD's {role} tap {layer!r} gives a tensor of shape "
                    f"{shape}; it needs features of known size, such as the "
                    "pooled penultimate features (batch, channels).")
            heads.append(int(np.prod(shape[1:])))
        if self.embed_student is None:
            self.embed_student, self.embed_teacher = [
                keras.layers.Dense(
                    self.feature_dim,
                    kernel_initializer=_torch_linear_uniform(),
                    bias_initializer=keras.initializers.RandomUniform(
                        -1.0 / math.sqrt(size), 1.0 / math.sqrt(size)),
                    kernel_regularizer=self.kernel_regularizer,
                    dtype="float32", name=f"embed_{role}")
                for role, size in zip(("student", "teacher"), heads)]
        for head, size in zip((self.embed_student, self.embed_teacher), heads):
            if head.built and head.kernel.shape[0] != size:
                raise ValueError(
                    f"CRD {self.name!r} was connected to taps of other sizes "
                    f"than {heads} (student, teacher): make a new term for "
                    "other networks.")
            if not head.built:
                head.build((None, size))
        self.built = True

    def embed(self, teacher, student):
        """`(v_t, v_s)`: each tap flattened, through its head, normalised
        (RepDistiller's `Embed`)."""
        flat = [ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))
                for x in (teacher, student)]
        return (l2_normalize(self.embed_teacher(flat[0])),
                l2_normalize(self.embed_student(flat[1])))

    def sample_negatives(self, indices):
        """`(batch, 1 + K)` contrast indices: each example's own index,
        then `K` negatives drawn as `negatives` says (class docstring)."""
        class_table = None
        if self.negatives != "all":
            if not self._labels_given:
                raise ValueError(
                    f"CRD {self.name!r} draws negatives from the other "
                    "classes: give it the training set's labels first, "
                    "`term.set_labels(labels)` (the class of each example, "
                    "by index).")
            class_table = (self.labels, self.class_order, self.class_start,
                           self.class_count)
        return crd_memory.sample_negatives(
            indices, self.num_examples, self.num_negatives,
            self.seed_generator, class_table)

    def call(self, teacher, student, training=None, indices=None,
             contrast_indices=None):
        """`([teacher's scores], [student's scores])`, each `(batch, 1 +
        K)` as `contrast_loss` takes them, and in training the memory and
        `Z` updates; `([], [])` without `indices`.

        `contrast_indices` (`(batch, 1 + K)`, the example's own index
        first) replaces the draw, as RepDistiller's `contrast_idx`."""
        if indices is None:
            return [], []
        v_t, v_s = self.embed(teacher[0], student[0])
        indices = ops.reshape(ops.cast(indices, "int32"), (-1,))
        context = crd_memory.replica_context()
        if contrast_indices is None:
            global_indices = crd_memory.gather(context, indices)
            contrast_indices = crd_memory.own_rows(
                context, self.sample_negatives(global_indices),
                ops.shape(indices)[0])
        contrast_indices = ops.cast(contrast_indices, "int32")
        scores_s = crd_memory.contrast_scores(
            self.memory_teacher, v_s, contrast_indices, self.temperature)
        scores_t = crd_memory.contrast_scores(
            self.memory_student, v_t, contrast_indices, self.temperature)
        # Z from the global batch's mean score where not set yet.
        sums = ops.stack([ops.sum(ops.stop_gradient(scores_s)),
                          ops.sum(ops.stop_gradient(scores_t)),
                          ops.cast(ops.size(scores_s), "float32")])
        if context is not None:
            sums = context.all_reduce("sum", sums)
        estimate = sums[:2] / sums[2] * float(self.num_examples)
        # The variable's value as a tensor (JAX's `where` takes no variable).
        normalization = ops.convert_to_tensor(self.normalization)
        z = ops.where(normalization < 0, estimate, normalization)
        if training:
            self.normalization.assign(z)
            all_indices = crd_memory.gather(context, indices)
            for memory, v in ((self.memory_student, v_s),
                              (self.memory_teacher, v_t)):
                rows = crd_memory.updated_rows(
                    memory, all_indices,
                    crd_memory.gather(context, ops.stop_gradient(v)),
                    self.momentum)
                memory.assign(ops.scatter_update(
                    memory, all_indices[:, None], rows))
        return [scores_t / z[1]], [scores_s / z[0]]

    def compute_loss(self, teacher, student):
        if not student:  # no indices (evaluation): not computed
            return ops.zeros(())
        return (contrast_loss(student[0], self.num_examples)
                + contrast_loss(teacher[0], self.num_examples))

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config.update({
            "num_examples": self.num_examples,
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "feature_dim": self.feature_dim,
            "num_negatives": self.num_negatives,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "negatives": self.negatives,
            "num_classes": self.num_classes,
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer),
            "seed": self.seed,
        })
        return config


def _count(name, value, hint):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer ({hint}). Received: "
            f"{name}={value!r}")
    return value
