"""`Distiller`: a student trained from a frozen teacher on a list of terms.

    loss = student_loss_weight * CE(y, student logits)
           + sum over terms of term.weight * term
           + the student's and the terms' connectors' regularization

The terms (`ft_keras.terms`: `FactorTransfer`, `KnowledgeDistillation`,
`AttentionTransfer`, `DecoupledKD`, `FitNets`, or a user's own `Term`) name
the maps they need, and whether they need the labels or the epoch. Per
step the teacher runs once, frozen, in inference mode and (if functional)
with its BatchNormalizations folded, over the union of the terms' teacher
taps; the student runs once over its logits and the union of the student
taps; each term's connectors run in `call`, so their BatchNormalization
statistics update on every backend. `compute_loss` adds the terms, as
Keras core's `keras.distillation.Distiller` does: `fit`, `evaluate`,
`predict`, callbacks, mixed precision and `tf.distribute` work as for any
Keras model on the JAX, TensorFlow and PyTorch backends. Any Keras model
serves where the terms read only the logits (`Distiller`'s docstring).
"""

import inspect

import keras
from keras import ops

from ft_keras import _validation
from ft_keras import losses as ft_losses
from ft_keras._training_model import TrainingModel
from ft_keras._training_model import serialize
from ft_keras.distiller_checks import check_models
from ft_keras.distiller_checks import checked_terms
from ft_keras.distiller_checks import tap_shape
from ft_keras.taps import features

_PACKAGE = "ft_keras"

# The keys of the Distiller's inputs given as a dict: the images, and each
# example's index in the training set for terms that set `needs_indices`.
IMAGES = "images"
INDEX = "index"

# String losses that would silently assume probabilities: the student returns
# logits, so these names are taken with `from_logits=True`.
_LOGIT_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
}


class _FunctionLoss(keras.losses.Loss):
    """A plain loss function as a reducing, replica-aware `Loss` object."""

    def __init__(self, fn):
        name = getattr(fn, "__name__", "")
        super().__init__(
            name=name if name.isidentifier() else "classification_loss"
        )
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _classification_loss(loss):
    if loss is None:
        return ft_losses.ClassificationCrossentropy(from_logits=True)
    if isinstance(loss, str) and loss in _LOGIT_LOSSES:
        return _LOGIT_LOSSES[loss](from_logits=True)
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if callable(loss):
        return _FunctionLoss(loss)
    raise ValueError(f"Could not interpret `loss`. Received: loss={loss!r}")


class _TermLoss(keras.losses.Loss):
    """A term's `compute_loss` as a Keras loss: its inputs cast to float32,
    its values averaged over the batch and scaled across replicas as
    Keras scales every loss. A scalar counts as the batch's loss.

    Called as `loss((teacher maps, keyword inputs), student maps)`, the
    keyword inputs being what the term declared it needs (`labels`,
    `epoch`)."""

    def __init__(self, term):
        super().__init__(name=term.loss_name)
        self.term = term

    def call(self, y_true, y_pred):
        teacher, inputs = y_true
        values = self.term.compute_loss(teacher, y_pred, **inputs)
        return ops.reshape(values, (1,)) if len(values.shape) == 0 else values


class _EpochCounter(keras.callbacks.Callback):
    """Sets a `Distiller`'s `epoch` variable at each epoch's start: Keras'
    epoch index plus one, so 1 in a first `fit`'s first epoch and `k + 1`
    in a `fit` resumed with `initial_epoch=k` (as `BackupAndRestore` and
    `ft_keras.checkpoint.ResumableCheckpoint` resume)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)


def _with_callback(callbacks, callback):
    """`fit`'s `callbacks` argument with `callback` too: a list, or the
    `CallbackList` given (which `fit` uses as it is)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.append(callback)
        return callbacks
    return [callback] + list(callbacks or [])


def split_inputs(inputs):
    """`(images, indices)` of a `Distiller`'s inputs: plain images give
    `(images, None)`; a dict gives its `"images"` and its `"index"` (None
    where absent).

    >>> split_inputs({"images": "x", "index": "i"})
    ('x', 'i')
    """
    if not isinstance(inputs, dict):
        return inputs, None
    unknown = sorted(set(inputs) - {IMAGES, INDEX})
    if IMAGES not in inputs or unknown:
        raise ValueError(
            f"A Distiller's inputs given as a dict take the keys {IMAGES!r} "
            f"(the images) and {INDEX!r} (each example's index in the "
            f"training set). Received the keys {sorted(inputs)}"
        )
    return inputs[IMAGES], inputs.get(INDEX)


def _tap_union(tap_lists):
    """The taps of several terms, each once, in order, the output (`None`)
    first."""
    names = []
    for taps in tap_lists:
        names += [name for name in taps if name not in names]
    return ([None] if None in names else []) + [n for n in names if n is not None]


def _outputs_of(role, model, inputs, training):
    """A model that cannot be tapped, run as it is: its output, checked to
    be one 2-D tensor of logits."""
    logits = model(inputs, training=training)
    if isinstance(logits, (dict, list, tuple)) or len(logits.shape) != 2:
        returned = (f"a {type(logits).__name__}"
                    if isinstance(logits, (dict, list, tuple))
                    else f"shape {tuple(logits.shape)}")
        raise ValueError(
            f"The {role} must return its logits: one tensor of shape (batch, "
            f"classes). Received: {role}={model!r} returning {returned}"
        )
    return logits


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Distiller(TrainingModel):
    """Distillation of a student from a frozen teacher on a list of terms.

    Trains the student (and the terms' connectors) on

        loss = student_loss_weight * CE(y, logits)
               + sum over terms of term.weight * term
               + the student's and connectors' regularization losses

    `fit` reports `loss`, `ce_loss` (before `student_loss_weight`), one
    `<term name>_loss` per term (before its weight) and the compiled
    metrics, all for the global batch. `call` returns the dict `{"logits",
    "terms"}`, the latter `{term name: {"teacher": [...], "student":
    [...]}}` as each term's `call` returned them; `predict` and the metrics
    use the logits. `distiller.student` is the plain student model to save
    or export.

    A term that needs the labels (`needs_labels`, e.g. `DecoupledKD`) gets
    `fit`'s and `evaluate`'s `y`. A term that needs each example's index in
    the training set (`needs_indices`, e.g. `CRD`'s memory bank) gets it
    from inputs given as a dict, `x = {"images": images, "index":
    indices}` (integers in `[0, examples)`, taken before any shuffling):

        fit({"images": x, "index": np.arange(len(x))}, y, shuffle=True)
        tf.data.Dataset.from_tensor_slices(
            ({"images": x, "index": tf.range(len(x))}, y)).shuffle(...)

    `fit` without them raises a `ValueError` naming the term; in
    `evaluate` and `predict` they are optional (the term says what it does
    without them). If a term needs the epoch (`needs_epoch`,
    e.g. `DecoupledKD`'s warm-up), the Distiller has a non-trainable
    variable `epoch` (else `epoch` is None): the epoch in progress counted
    from 1, which `fit` sets at each epoch's start from Keras' epoch index,
    so a `fit` resumed with `initial_epoch=k` (as
    `keras.callbacks.BackupAndRestore` and
    `ft_keras.checkpoint.ResumableCheckpoint` resume) continues at epoch
    `k + 1` exactly, with no callback of yours. As for Keras' own
    epoch-indexed callbacks (`LearningRateScheduler`), each `fit` counts
    from its `initial_epoch`: a second `fit(epochs=1)` is epoch 1 again,
    `fit(initial_epoch=1, epochs=2)` epoch 2. The variable is saved with the
    weights; it is 1 before the first `fit`, and `evaluate` uses its
    value. Outside `fit` (`train_on_batch`, a loop of your own) set it
    yourself: `distiller.epoch.assign(3)`.

    Which models serve, as in `keras.distillation.Distiller`:

    - Terms that read only the logits (`KnowledgeDistillation`,
      `DecoupledKD`, `DIST`, a term of yours tapping only `None`) take any
      `keras.Model` that maps a batch of images to logits: functional,
      Sequential (an unbuilt one is built on the first batch) or
      subclassed.
    - Terms that tap layers by name (`FactorTransfer`, `AttentionTransfer`,
      `FitNets`, a term of yours naming layers) need a network whose layer
      outputs can be tapped: a functional model, or a built Sequential (a
      `keras.Input` first, or called once on data). For another the
      constructor raises a `ValueError` naming the term, the network and
      the taps. A subclassed model does not serve even if its `call`
      returns its maps in a dict: the taps are layer outputs in a
      functional graph, which a subclassed `call` does not have, and a
      model's one output is taken as its logits.
    - A teacher that can be tapped runs with its BatchNormalizations folded
      (`ft_keras.models.fold_batch_norm`); one that cannot (subclassed,
      unbuilt Sequential) runs as it is, unfolded. Either runs once per
      step, frozen, in inference mode (`training=False`), without gradient.

    Args:
        teacher: A trained `keras.Model`. Frozen by this call.
        student: A `keras.Model` returning logits `(batch, classes)`.
        terms: An `ft_keras.Term` or a list of them, each with its own name.
        student_loss_weight: Weight of the classification loss (1 in the
            paper; 0.1 for RepDistiller's KD).
        **kwargs: `keras.Model` keyword arguments such as `name`.

    Raises:
        ValueError: before any work, if `teacher` or `student` is not a
            `keras.Model`; if a term taps layers of a model that cannot be
            tapped; if the student (or, for a term on the logits, the
            teacher) has not one 2-D output where its outputs are known; if
            a term compares logits of different class counts, or the two
            input shapes differ, where both are known.

    Example:

    ```python
    ft = ft_keras.FactorTransfer(paraphraser, ft_keras.Translator(32),
                                 teacher_layer="stage3",
                                 student_layer="stage3", beta=500.0)
    distiller = ft_keras.Distiller(
        teacher, student, terms=[ft, ft_keras.KnowledgeDistillation()])
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      metrics=["accuracy"])
    distiller.fit(train_ds, epochs=164)
    distiller.student.save("student.keras")

    # Terms on the logits take any model, a subclassed one included:
    kd = ft_keras.Distiller(teacher, MyStudent(),  # a keras.Model subclass
                            terms=[ft_keras.KnowledgeDistillation(4.0)])
    ```
    """

    _NESTED_OBJECTS = ("teacher", "student", "terms")

    def __init__(self, teacher, student, terms, student_loss_weight=1.0, **kwargs):
        kwargs.setdefault("name", "distiller")
        terms = checked_terms(terms)
        check_models(teacher, student, terms)
        super().__init__(["ce_loss"] + [t.loss_name for t in terms], **kwargs)
        self.student_loss_weight = _validation.non_negative(
            "student_loss_weight", student_loss_weight, "1 in the paper")
        self.teacher = features.freeze(teacher)
        self.student = student
        self._classification_loss = None
        self._teacher_taps = _tap_union([t.teacher_layers for t in terms])
        layer_taps = [n for n in self._teacher_taps if n is not None]
        # A model that cannot be tapped has no layer taps (`check_models`):
        # it runs as it is (None).
        self._teacher_features = features.frozen_features(
            teacher, layer_taps, include_output=None in self._teacher_taps
        ) if self._teacher_taps and features.has_taps(teacher) else None
        student_taps = _tap_union([t.student_layers for t in terms])
        self._student_taps = [None] + [n for n in student_taps if n is not None]
        self._student_features = features.feature_extractor(
            student, self._student_taps[1:], "student", include_output=True
        ) if features.has_taps(student) else None
        for term in terms:
            term.connect([tap_shape(teacher, n) for n in term.teacher_layers],
                         [tap_shape(student, n) for n in term.student_layers])
        self.terms = terms
        self._term_losses = [_TermLoss(term) for term in terms]
        self.epoch = None
        if any(term.needs_epoch for term in terms):
            self.epoch = self.add_weight(
                shape=(), initializer="ones", dtype="float32",
                trainable=False, name="epoch")
        self.built = True

    def _taps(self, inputs, training):
        """One forward pass of each network: `{tap: tensor}` of the teacher
        (inference mode, no gradient) and of the student."""
        teacher = {}
        if self._teacher_features is not None:
            outputs = features.as_list(self._teacher_features(inputs, training=False))
            teacher = {n: ops.stop_gradient(t) for n, t in zip(self._teacher_taps, outputs)}
        elif self._teacher_taps:  # [None]: the logits of an untappable teacher.
            teacher = {None: ops.stop_gradient(_outputs_of(
                "teacher", self.teacher, inputs, training=False))}
        if self._student_features is None:
            return teacher, {None: _outputs_of(
                "student", self.student, inputs, training=training)}
        outputs = features.as_list(self._student_features(inputs, training=training))
        return teacher, dict(zip(self._student_taps, outputs))

    def call(self, inputs, training=None):
        """One pass of each network, then each term's connectors. `inputs`:
        the images, or `{"images": images, "index": indices}`."""
        images, indices = split_inputs(inputs)
        teacher, student = self._taps(images, training)
        outputs = {}
        for term in self.terms:
            extra = {"indices": indices} if term.needs_indices else {}
            t, s = term([teacher[n] for n in term.teacher_layers],
                        [student[n] for n in term.student_layers],
                        training=training, **extra)
            outputs[term.name] = {"teacher": list(t), "student": list(s)}
        return {"logits": student[None], "terms": outputs}

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Configures the student's optimizer, loss and metrics.

        Args:
            optimizer: Optimizer of the trained parts.
            loss: Classification loss on the student's logits. Defaults to
                cross-entropy from logits against class indices or one-hot
                (CutMix / MixUp) labels alike
                (`ft_keras.losses.ClassificationCrossentropy`); the strings
                `"sparse_categorical_crossentropy"` and
                `"categorical_crossentropy"` are taken with
                `from_logits=True`, since the student returns logits.
            metrics: Metrics on the student's logits, e.g. `["accuracy"]`.
            **kwargs: Other `keras.Model.compile` arguments.
        """
        self._classification_loss = _classification_loss(loss)
        self._compiled_loss_arg = loss
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; with a term that needs the epoch, it also
        sets `epoch` at each epoch's start (see the class docstring)."""
        if self.epoch is None:
            return super().fit(*args, **kwargs)
        arguments = inspect.signature(super().fit).bind(*args, **kwargs).arguments
        arguments["callbacks"] = _with_callback(
            arguments.get("callbacks"), _EpochCounter(self.epoch))
        return super().fit(**arguments)

    def _term_inputs(self, term, y):
        """What `term.compute_loss` gets besides the maps."""
        inputs = {}
        if term.needs_labels:
            if y is None:
                raise ValueError(
                    f"The term {term.name!r} needs the labels: pass them to "
                    "`fit` and `evaluate` (`y`, or `(x, y)` batches). "
                    "Received: y=None"
                )
            inputs["labels"] = y
        if term.needs_epoch:
            inputs["epoch"] = self.epoch
        return inputs

    @property
    def needs_indices(self):
        """Whether a term needs each example's index in the training set:
        `fit` then takes `{"images": images, "index": indices}` inputs."""
        return any(term.needs_indices for term in self.terms)

    def _check_indices(self, x):
        """Refuses training a term that needs the indices without them."""
        for term in self.terms:
            if term.needs_indices and split_inputs(x)[1] is None:
                raise ValueError(
                    f"The term {term.name!r} needs each example's index in "
                    "the training set: give `fit` the inputs as "
                    f"{{{IMAGES!r}: images, {INDEX!r}: indices}}."
                )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`student_loss_weight * CE + sum of weight * term`, plus the
        trained parts' regularization when training."""
        if self._classification_loss is None:
            raise ValueError(
                "The Distiller is not compiled: call `compile(...)` before "
                "training or evaluating it."
            )
        inputs = [self._term_inputs(term, y) for term in self.terms]
        if training:
            self._check_indices(x)
        y_pred = self._outputs(x, y_pred, training)
        values = {"ce_loss": self._classification_loss(
            y, y_pred["logits"], sample_weight=sample_weight)}
        loss = self.student_loss_weight * values["ce_loss"]
        for term, term_loss, term_inputs in zip(
                self.terms, self._term_losses, inputs):
            maps = y_pred["terms"][term.name]
            values[term.loss_name] = term_loss(
                (maps["teacher"], term_inputs), maps["student"])
            loss = loss + term.weight * values[term.loss_name]
        return self._finish_loss(
            loss, values, x, y, y_pred, sample_weight, training
        )

    def get_config(self):
        return {
            "name": self.name,
            "teacher": serialize(self.teacher),
            "student": serialize(self.student),
            "terms": [serialize(term) for term in self.terms],
            "student_loss_weight": self.student_loss_weight,
        }
