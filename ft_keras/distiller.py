"""The training stages of Factor Transfer, and its baselines, as `keras.Model`s.

- `ParaphraserTrainer`: unsupervised pre-training of the paraphraser on the
  frozen teacher's feature map.
- `Distiller`: training of student and translator on
  `ce_weight * CE(y, student_logits) + beta * FactorTransferLoss(F_T, F_S)`.
- `BaselineDistiller`: Hinton KD and attention transfer, the baselines FT
  is compared with, trained the same way.

All three leave the step to Keras' own trainer, as `keras.distillation.
Distiller` does, so `compile`, `fit`, `evaluate`, `predict`, callbacks,
mixed precision and `tf.distribute` strategies work as for any Keras model,
on the JAX, TensorFlow and PyTorch backends alike:

- `call` runs each network exactly once and returns a dict of what the loss
  needs: the student's logits and tapped maps from one forward pass; the
  frozen teacher (and paraphraser) in inference mode, behind
  `stop_gradient`;
- `compute_loss` holds the model's loss, written once for training and
  evaluation, and records each term (`ce_loss`, `ft_loss`, ...) in its own
  tracker, for the global batch;
- `compute_metrics` and `predict` see only the main output (the student's
  logits; the teacher factor for `ParaphraserTrainer`).

Keras' trainer differentiates with respect to the trainable variables only
(the frozen parts have none), scales the loss for mixed precision and
across replicas, and keeps the `loss` tracker.
"""

import keras
from keras import ops

from ft_keras import _keras_private
from ft_keras import _validation
from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras.models.folding import fold_batch_norm

_PACKAGE = "ft_keras"

# String losses that would silently assume probabilities: the student returns
# logits, so these names are taken with `from_logits=True`.
_LOGIT_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
}


def feature_extractor(model, layer_names, role, include_output=False):
    """A functional model returning `model`'s outputs at `layer_names`.

    Shares `model`'s layers and weights. With `include_output`, the model's
    own output comes first.

    Raises:
        ValueError: if `model` is not functional, or a name is not one of its
            layers (the message lists the valid ones).
    """
    if getattr(model, "inputs", None) is None or not model.inputs:
        raise ValueError(
            f"The {role} must be a functional or Sequential `keras.Model` "
            f"with known inputs so that its layer outputs can be tapped. "
            f"Received: {model!r}. Build it with `keras.Input`, or call it "
            "once on data."
        )
    valid = [layer.name for layer in model.layers]
    outputs = []
    if include_output:
        outputs.append(model.outputs[0])
    for name in layer_names:
        if name not in valid:
            raise ValueError(
                f"`{role}_layer`={name!r} is not a layer of the {role} model "
                f"{model.name!r}. Valid layer names: {valid}"
            )
        outputs.append(model.get_layer(name).output)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if len(outputs) == 1:
        outputs = outputs[0]
    return keras.Model(inputs, outputs, name=f"{model.name}_{role}_features")


def frozen_features(teacher, layer_names, include_output=False):
    """`feature_extractor` of a frozen teacher, for inference: its
    BatchNormalizations folded into the convolutions before them
    (`ft_keras.models.fold_batch_norm`), one conv instead of a conv and a
    pass over the map. Shares the teacher's variables."""
    return fold_batch_norm(
        feature_extractor(teacher, layer_names, "teacher", include_output)
    )


def check_factor_shapes(
    teacher_layer,
    teacher_map,
    paraphraser,
    student_layer,
    student_map,
    translator,
    factor="full",
):
    """Raises a `ValueError` naming both taps if their factors can't be
    compared: in `"full"` mode they need equal channels, and in every mode
    heights/widths that are integer multiples of each other.

    `teacher_map` and `student_map` are the taps' shapes `(N, H, W, C)`; the
    connectors need not be built.
    """
    for layer, shape in ((teacher_layer, teacher_map), (student_layer, student_map)):
        if len(shape) != 4:
            raise ValueError(
                f"Layer {layer!r} gives a tensor of shape {tuple(shape)}; a "
                "factor transfer tap must be a (batch, height, width, "
                "channels) feature map, such as a stage output."
            )
    teacher_factor = tuple(paraphraser.compute_output_shape(teacher_map))
    student_factor = tuple(translator.compute_output_shape(student_map))
    if not _comparable_maps(
        teacher_factor, student_factor, same_channels=factor == "full"
    ):
        raise ValueError(
            "The teacher factor and the student factor cannot be compared: "
            f"teacher layer {teacher_layer!r} gives a map of shape "
            f"{tuple(teacher_map)} and a teacher factor of shape "
            f"{teacher_factor}; student layer {student_layer!r} gives a map of "
            f"shape {tuple(student_map)} and a student factor of shape "
            f"{student_factor}. The factors need the same number of channels "
            f"(set `Translator(out_channels={teacher_factor[-1]})`) and "
            "heights/widths that are integer multiples of each other."
        )


def _comparable_maps(a, b, same_channels=False):
    """Whether two map shapes `(N, H, W, C)` can enter one loss: both 4-D,
    heights/widths integer multiples of each other (`match_spatial_size`),
    and, if `same_channels`, equal channels."""
    if len(a) != 4 or len(b) != 4 or (same_channels and a[-1] != b[-1]):
        return False
    try:
        ft_losses.match_spatial_size(keras.KerasTensor(a), keras.KerasTensor(b))
    except ValueError:
        return False
    return True


def _freeze(model):
    model.trainable = False
    return model


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj)


def _deserialize(config):
    return keras.saving.deserialize_keras_object(config)


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class _DistillationModel(keras.Model):
    """The step machinery every model here shares; the maths is the
    subclass's.

    A subclass's `call` returns a dict of tensors whose `_PREDICTION` entry
    is what `predict` returns and what compiled metrics see; its
    `compute_loss` computes the loss terms from that dict and returns
    `self._finish_loss(...)`. `from_config` deserializes the Keras objects
    held in the config under `_NESTED_OBJECTS`.
    """

    _PREDICTION = "logits"
    _NESTED_OBJECTS = ()

    def __init__(self, loss_terms=(), **kwargs):
        super().__init__(**kwargs)
        # `loss` is Keras' own tracker; one more per reported loss term.
        self.loss_term_trackers = [keras.metrics.Mean(name=n) for n in loss_terms]

    def _outputs(self, x, y_pred, training):
        return self(x, training=training) if y_pred is None else y_pred

    def _finish_loss(self, loss, terms, x, y, y_pred, sample_weight, training):
        """Records `terms` and returns `loss` plus, when training, the
        regularization of the trained parts.

        Each term (a Keras loss value: under `tf.distribute`, one replica's
        share) is recorded in its tracker as Keras records `loss`, for the
        global batch. The regularization is what Keras' `Model.compute_loss`
        adds when no loss is compiled: `self.losses`, summed and scaled
        across replicas. Its weight regularizers are those of the trainable
        weights, so the frozen teacher's and paraphraser's never count.
        Evaluation reports the loss without regularization.
        """
        batch_size = ops.shape(y_pred[self._PREDICTION])[0]
        for tracker in self.loss_term_trackers:
            tracker.update_state(
                _keras_private.unscale_loss_for_distribution(terms[tracker.name]),
                sample_weight=batch_size,
            )
        # Keras' `compute_loss` refuses to run with nothing to add.
        if not training or not self.losses:
            return loss
        return loss + super().compute_loss(
            x, y, y_pred, sample_weight, training=training
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics with `call`'s main output."""
        return super().compute_metrics(
            x, y, y_pred[self._PREDICTION], sample_weight=sample_weight
        )

    def predict_step(self, *args, **kwargs):
        """Keras' `predict_step`, keeping only `call`'s main output."""
        result = super().predict_step(*args, **kwargs)
        if keras.config.backend() == "jax":
            # JAX's trainer returns `(outputs, non_trainable_variables)`.
            outputs, state = result
            return outputs[self._PREDICTION], state
        return result[self._PREDICTION]

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls._NESTED_OBJECTS:
            config[key] = _deserialize(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ParaphraserTrainer(_DistillationModel):
    """Pre-trains a `Paraphraser` on the frozen teacher's feature map.

    The teacher runs in inference mode and is never updated; only the
    paraphraser learns to reconstruct the teacher's map `F` at
    `teacher_layer`, on

        loss = reconstruction(F, decode(encode(F)))
               + the paraphraser's regularization losses

    Labels, if the data has any, are ignored. `fit` reports `loss`, the
    reconstruction loss (plus regularization when training). `call` returns
    the dict `{"teacher_factor", "teacher_map", "reconstruction"}`;
    `predict` returns the teacher factor.

    Args:
        teacher: A trained functional `keras.Model`. Frozen by this call
            (`teacher.trainable = False`).
        paraphraser: The `Paraphraser` to train. Built on the tap's shape if
            it is not built yet.
        teacher_layer: Name of the teacher layer whose output is the map to
            paraphrase, e.g. `"stage3"`.
        reconstruction: `"l1"` (the paper's code), `"mse"` (RepDistiller,
            torchdistill) or `"normalized_l2"` (MMRazor).
        **kwargs: `keras.Model` keyword arguments such as `name`.

    Example:

    ```python
    trainer = ft_keras.ParaphraserTrainer(
        teacher, ft_keras.Paraphraser(rate=0.5), teacher_layer="stage3")
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    trainer.fit(train_ds, epochs=6)
    paraphraser = trainer.paraphraser
    ```
    """

    _PREDICTION = "teacher_factor"
    _NESTED_OBJECTS = ("teacher", "paraphraser")

    def __init__(
        self, teacher, paraphraser, teacher_layer, reconstruction="l1", **kwargs
    ):
        kwargs.setdefault("name", "paraphraser_trainer")
        super().__init__(**kwargs)
        if not isinstance(paraphraser, ft_layers.Paraphraser):
            raise ValueError(
                "`paraphraser` must be an `ft_keras.Paraphraser`. Received: "
                f"paraphraser={paraphraser!r}"
            )
        self.reconstruction = reconstruction
        self.reconstruction_loss = ft_losses.reconstruction_loss(reconstruction)
        self.teacher = _freeze(teacher)
        self.teacher_layer = teacher_layer
        self.paraphraser = paraphraser
        self._teacher_features = frozen_features(teacher, [teacher_layer])
        if not paraphraser.built:
            paraphraser.build(tuple(self._teacher_features.output.shape))
        # Every part is built: the model is ready to train, save and load.
        self.built = True

    def call(self, inputs, training=None):
        """One pass of the frozen teacher to its map `F` and of the
        paraphraser through encoder and decoder.

        Returns:
            A dict: `"teacher_factor"` (`encode(F)`), `"teacher_map"` (`F`,
            no gradient) and `"reconstruction"` (`decode(encode(F))`).
        """
        teacher_map = ops.stop_gradient(
            self._teacher_features(inputs, training=False)
        )
        factor = self.paraphraser(teacher_map, training=training)
        return {
            "teacher_factor": factor,
            "teacher_map": teacher_map,
            "reconstruction": self.paraphraser.decode(factor, training=training),
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The reconstruction loss of the teacher map, plus the
        paraphraser's regularization when training."""
        y_pred = self._outputs(x, y_pred, training)
        loss = self.reconstruction_loss(
            y_pred["teacher_map"], y_pred["reconstruction"]
        )
        return self._finish_loss(
            loss, {}, x, y, y_pred, sample_weight, training
        )

    def compile(self, optimizer="sgd", **kwargs):
        """Configures the optimizer. The loss is fixed by `reconstruction`."""
        if kwargs.get("loss") is not None:
            raise ValueError(
                "ParaphraserTrainer's loss is set by its `reconstruction` "
                "argument; do not pass `loss` to `compile`. Received: "
                f"loss={kwargs['loss']!r}"
            )
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "teacher": _serialize(self.teacher),
            "paraphraser": _serialize(self.paraphraser),
            "teacher_layer": self.teacher_layer,
            "reconstruction": self.reconstruction,
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
        loss = "sparse_categorical_crossentropy"
    if isinstance(loss, str) and loss in _LOGIT_LOSSES:
        return _LOGIT_LOSSES[loss](from_logits=True)
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if callable(loss):
        return _FunctionLoss(loss)
    raise ValueError(f"Could not interpret `loss`. Received: loss={loss!r}")


class _TeacherStudentModel(_DistillationModel):
    """What both distillers share: a frozen teacher and a student returning
    logits, each run once per step through its taps (`_taps`), a compiled
    classification loss on the logits (`_ce`) and the Hinton KD term
    (`_kd`)."""

    def __init__(
        self,
        teacher,
        student,
        loss_terms,
        teacher_layers,
        student_layers,
        kd_weight,
        temperature,
        **kwargs,
    ):
        super().__init__(loss_terms, **kwargs)
        self.teacher = _freeze(teacher)
        self.student = student
        self.kd_weight = kd_weight
        self.temperature = float(temperature)
        self.kd_loss_fn = ft_losses.KnowledgeDistillationLoss(temperature)
        self._classification_loss = None
        # The teacher's logits only feed the KD term.
        self._teacher_features = frozen_features(
            teacher, teacher_layers, include_output=bool(kd_weight)
        )
        self._student_features = feature_extractor(
            student, student_layers, "student", include_output=True
        )

    def _taps(self, inputs, training):
        """One forward pass of each network through its taps.

        Returns `(teacher, student)`: the teacher's outputs (inference mode,
        no gradient), its logits first when `kd_weight > 0`, then its maps
        at the teacher layers; the student's logits, then its maps at the
        student layers.
        """
        teacher = [
            ops.stop_gradient(t)
            for t in _as_list(self._teacher_features(inputs, training=False))
        ]
        student = _as_list(self._student_features(inputs, training=training))
        return teacher, student

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Configures the student's optimizer, loss and metrics.

        Args:
            optimizer: Optimizer of the trained parts.
            loss: Classification loss on the student's logits. Defaults to
                sparse categorical cross-entropy from logits; the strings
                `"sparse_categorical_crossentropy"` and
                `"categorical_crossentropy"` are taken with
                `from_logits=True`, since the student returns logits.
            metrics: Metrics on the student's logits, e.g. `["accuracy"]`.
            **kwargs: Other `keras.Model.compile` arguments.
        """
        self._classification_loss = _classification_loss(loss)
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def _ce(self, y, y_pred, sample_weight):
        if self._classification_loss is None:
            raise ValueError(
                f"The {type(self).__name__} is not compiled: call "
                "`compile(...)` before training or evaluating it."
            )
        return self._classification_loss(
            y, y_pred["logits"], sample_weight=sample_weight
        )

    def _kd(self, y_pred):
        return self.kd_loss_fn(y_pred["teacher_logits"], y_pred["logits"])

    def _base_config(self):
        return {
            "name": self.name,
            "teacher": _serialize(self.teacher),
            "student": _serialize(self.student),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Distiller(_TeacherStudentModel):
    """Factor Transfer distillation of a student from a frozen teacher.

    Per step, the teacher (inference mode) gives its map at `teacher_layer`,
    the frozen paraphraser's encoder turns it into the teacher factor `F_T`;
    the student gives its logits and its map at `student_layer` in the same
    forward pass, the translator turns that map into the student factor
    `F_S`. Student and translator are trained on

        loss = ce_weight * CE(y, logits)
               + beta * FactorTransferLoss(p, factor)(F_T, F_S)
               [+ kd_weight * KnowledgeDistillationLoss(T)(teacher, logits)]
               + the student's and translator's regularization losses

    `fit` reports `loss`, `ce_loss` (before `ce_weight`), `ft_loss` (before
    `beta`), `kd_loss` when `kd_weight > 0`, and the compiled metrics, all for
    the global batch.
    `call` returns the dict `{"logits", "student_factor", "teacher_factor"}`
    (and `"teacher_logits"` when `kd_weight > 0`); `predict` and the metrics
    use the logits. `distiller.student` is the plain student model to save or
    export.

    Args:
        teacher: A trained functional `keras.Model`. Frozen by this call.
        student: A functional `keras.Model` returning logits.
        paraphraser: A `Paraphraser`, pre-trained by `ParaphraserTrainer`.
            Frozen by this call.
        translator: A `Translator` whose `out_channels` equals the
            paraphraser's `factor_channels`.
        teacher_layer: Teacher layer name for the teacher factor.
        student_layer: Student layer name for the student factor.
        beta: Weight of the factor transfer loss (500 in the paper's code).
        p: 1 or 2, the norm of `FactorTransferLoss`.
        factor: `"full"` (the paper) or `"attention"` (RepDistiller).
        p_form: `"norm"` (the paper, torchdistill) or `"mean"`
            (RepDistiller): how `FactorTransferLoss` reduces the difference
            when `p=2`.
        kd_weight: Weight of an added Hinton KD term on the logits (FT+KD);
            0 (the paper) leaves it out.
        temperature: Temperature of the KD term.
        ce_weight: Weight of the classification loss; 1 (the paper).
        **kwargs: `keras.Model` keyword arguments such as `name`.

    Example:

    ```python
    distiller = ft_keras.Distiller(
        teacher, student, paraphraser, ft_keras.Translator(32),
        teacher_layer="stage3", student_layer="stage3", beta=500.0)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        metrics=["accuracy"])
    distiller.fit(train_ds, epochs=164)
    distiller.student.save("student.keras")
    ```
    """

    _NESTED_OBJECTS = ("teacher", "student", "paraphraser", "translator")

    def __init__(
        self,
        teacher,
        student,
        paraphraser,
        translator,
        teacher_layer,
        student_layer,
        beta=500.0,
        p=1,
        factor="full",
        kd_weight=0.0,
        temperature=4.0,
        p_form="norm",
        ce_weight=1.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "distiller")
        if not isinstance(paraphraser, ft_layers.Paraphraser):
            raise ValueError(
                "`paraphraser` must be an `ft_keras.Paraphraser`. Received: "
                f"paraphraser={paraphraser!r}"
            )
        if not isinstance(translator, ft_layers.Translator):
            raise ValueError(
                "`translator` must be an `ft_keras.Translator`. Received: "
                f"translator={translator!r}"
            )
        self.ft_loss_fn = ft_losses.FactorTransferLoss(
            p=p, factor=factor, p_form=p_form
        )
        check = _validation.non_negative
        beta = check("beta", beta, "500 in the paper's code")
        kd_weight = check("kd_weight", kd_weight, "0 for plain FT")
        ce_weight = check("ce_weight", ce_weight, "1 in the paper")
        terms = ["ce_loss", "ft_loss"] + (["kd_loss"] if kd_weight else [])
        super().__init__(
            teacher,
            student,
            terms,
            teacher_layers=[teacher_layer],
            student_layers=[student_layer],
            kd_weight=kd_weight,
            temperature=temperature,
            **kwargs,
        )
        self.ce_weight = ce_weight
        self.beta = beta
        self.p = p
        self.factor = factor
        self.p_form = p_form
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.translator = translator
        teacher_map = tuple(teacher.get_layer(teacher_layer).output.shape)
        student_map = tuple(self._student_features.outputs[1].shape)
        check_factor_shapes(
            teacher_layer, teacher_map, paraphraser,
            student_layer, student_map, translator, factor,
        )
        if not paraphraser.built:
            paraphraser.build(teacher_map)
        if not translator.built:
            translator.build(student_map)
        # Frozen once built: freezing marks the variables that exist.
        self.paraphraser = _freeze(paraphraser)
        self.built = True

    def _teacher_factor(self, teacher_map):
        return ops.stop_gradient(self.paraphraser(teacher_map, training=False))

    def teacher_factor(self, x):
        """The frozen teacher factor of a batch (no gradient)."""
        teacher_map = _as_list(self._teacher_features(x, training=False))[-1]
        return self._teacher_factor(teacher_map)

    def call(self, inputs, training=None):
        """One pass of each network.

        Returns:
            A dict: the student's `"logits"`, the `"student_factor"` (the
            translator on the student's map from the same pass) and the
            frozen `"teacher_factor"`; with `kd_weight > 0`, also the
            teacher's `"teacher_logits"`. Teacher entries carry no gradient.
        """
        teacher, (logits, student_map) = self._taps(inputs, training)
        outputs = {
            "logits": logits,
            "student_factor": self.translator(student_map, training=training),
            "teacher_factor": self._teacher_factor(teacher[-1]),
        }
        if self.kd_weight:
            outputs["teacher_logits"] = teacher[0]
        return outputs

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`ce_weight * CE + beta * FT [+ kd_weight * KD]`, plus the
        student's and translator's regularization when training."""
        y_pred = self._outputs(x, y_pred, training)
        terms = {
            "ce_loss": self._ce(y, y_pred, sample_weight),
            "ft_loss": self.ft_loss_fn(
                y_pred["teacher_factor"], y_pred["student_factor"]
            ),
        }
        loss = self.ce_weight * terms["ce_loss"] + self.beta * terms["ft_loss"]
        if self.kd_weight:
            terms["kd_loss"] = self._kd(y_pred)
            loss = loss + self.kd_weight * terms["kd_loss"]
        return self._finish_loss(
            loss, terms, x, y, y_pred, sample_weight, training
        )

    def get_config(self):
        config = self._base_config()
        config.update(
            {
                "paraphraser": _serialize(self.paraphraser),
                "translator": _serialize(self.translator),
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "ce_weight": self.ce_weight,
                "beta": self.beta,
                "p": self.p,
                "factor": self.factor,
                "p_form": self.p_form,
                "kd_weight": self.kd_weight,
                "temperature": self.temperature,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BaselineDistiller(_TeacherStudentModel):
    """The baselines Factor Transfer is compared with, in the same framework.

    Trains the student on

        loss = ce_weight * CE(y, logits)
               + kd_weight * KnowledgeDistillationLoss(T)(teacher, logits)
               + at_weight * sum over tap pairs of AttentionTransferLoss
               + the student's regularization losses

    - Hinton KD: `kd_weight > 0` (RepDistiller: `ce_weight=0.1,
      kd_weight=0.9, temperature=4`);
    - Attention Transfer: `at_weight > 0` with `teacher_layers` and
      `student_layers` (RepDistiller: `at_weight=1000`), on the same taps as
      Factor Transfer or on several;
    - both at once.

    The teacher runs once per step in inference mode, the student once.
    `fit` reports `loss`, `ce_loss` and the active terms' `kd_loss`,
    `at_loss` (before their weights). `call` returns the dict `{"logits",
    "student_maps", "teacher_maps"}` (and `"teacher_logits"` when
    `kd_weight > 0`); `predict` and the metrics use the logits.

    Args:
        teacher: A trained functional `keras.Model`. Frozen by this call.
        student: A functional `keras.Model` returning logits.
        ce_weight: Weight of the classification loss.
        kd_weight: Weight of the KD loss; 0 leaves it out.
        temperature: KD temperature.
        at_weight: Weight of the attention transfer loss; 0 leaves it out.
        teacher_layers: Teacher tap names for AT.
        student_layers: Student tap names for AT, paired with
            `teacher_layers`.
        at_power: The exponent of the attention maps.
        **kwargs: `keras.Model` keyword arguments such as `name`.

    Example:

    ```python
    kd = ft_keras.BaselineDistiller(teacher, student, ce_weight=0.1,
                                    kd_weight=0.9, temperature=4.0)
    at = ft_keras.BaselineDistiller(teacher, student, at_weight=1000.0,
                                    teacher_layers=["stage3"],
                                    student_layers=["stage3"])
    kd.compile(keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    kd.fit(train_ds, epochs=240)
    ```
    """

    _NESTED_OBJECTS = ("teacher", "student")

    def __init__(
        self,
        teacher,
        student,
        ce_weight=1.0,
        kd_weight=0.0,
        temperature=4.0,
        at_weight=0.0,
        teacher_layers=(),
        student_layers=(),
        at_power=2,
        **kwargs,
    ):
        kwargs.setdefault("name", "baseline_distiller")
        check = _validation.non_negative
        ce_weight = check("ce_weight", ce_weight, "1 without KD")
        kd_weight = check("kd_weight", kd_weight, "0.9 in RepDistiller")
        at_weight = check("at_weight", at_weight, "1000 in RepDistiller")
        teacher_layers, student_layers = list(teacher_layers), list(student_layers)
        if len(teacher_layers) != len(student_layers):
            raise ValueError(
                "`teacher_layers` and `student_layers` are paired and must "
                f"have the same length. Received: teacher_layers="
                f"{teacher_layers}, student_layers={student_layers}"
            )
        if at_weight and not teacher_layers:
            raise ValueError(
                "Attention transfer needs taps: give `teacher_layers` and "
                f"`student_layers`. Received: at_weight={at_weight}, no layers."
            )
        if not (kd_weight or at_weight):
            raise ValueError(
                "BaselineDistiller needs a teacher term: set `kd_weight` "
                "(Hinton KD) and/or `at_weight` (attention transfer) above 0; "
                "train the student alone with a plain `keras.Model.fit`."
            )
        self.at_loss_fn = ft_losses.AttentionTransferLoss(power=at_power)
        terms = (
            ["ce_loss"]
            + (["kd_loss"] if kd_weight else [])
            + (["at_loss"] if at_weight else [])
        )
        teacher_layers = teacher_layers if at_weight else []
        student_layers = student_layers if at_weight else []
        super().__init__(
            teacher,
            student,
            terms,
            teacher_layers=teacher_layers,
            student_layers=student_layers,
            kd_weight=kd_weight,
            temperature=temperature,
            **kwargs,
        )
        self.ce_weight = ce_weight
        self.at_weight = at_weight
        self.at_power = at_power
        self.teacher_layers = teacher_layers
        self.student_layers = student_layers
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t_shape = tuple(teacher.get_layer(t_name).output.shape)
            s_shape = tuple(student.get_layer(s_name).output.shape)
            if not _comparable_maps(t_shape, s_shape):
                raise ValueError(
                    f"Attention transfer cannot pair teacher layer {t_name!r} "
                    f"{t_shape} with student layer {s_name!r} {s_shape}: both "
                    "must be (batch, height, width, channels) maps whose "
                    "heights/widths are integer multiples of each other."
                )
        self.built = True

    def call(self, inputs, training=None):
        """One pass of each network.

        Returns:
            A dict: the student's `"logits"`, its `"student_maps"` at
            `student_layers` from the same pass and the teacher's
            `"teacher_maps"` at `teacher_layers` (empty lists without AT);
            with `kd_weight > 0`, also the teacher's `"teacher_logits"`.
            Teacher entries carry no gradient.
        """
        teacher, student = self._taps(inputs, training)
        outputs = {"logits": student[0], "student_maps": student[1:]}
        if self.kd_weight:
            outputs["teacher_logits"] = teacher[0]
            teacher = teacher[1:]
        outputs["teacher_maps"] = teacher
        return outputs

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`ce_weight * CE [+ kd_weight * KD] [+ at_weight * AT]`, plus the
        student's regularization when training."""
        y_pred = self._outputs(x, y_pred, training)
        terms = {"ce_loss": self._ce(y, y_pred, sample_weight)}
        loss = self.ce_weight * terms["ce_loss"]
        if self.kd_weight:
            terms["kd_loss"] = self._kd(y_pred)
            loss = loss + self.kd_weight * terms["kd_loss"]
        if self.at_weight:
            pairs = zip(y_pred["teacher_maps"], y_pred["student_maps"])
            terms["at_loss"] = ops.sum(
                ops.stack([self.at_loss_fn(t, s) for t, s in pairs])
            )
            loss = loss + self.at_weight * terms["at_loss"]
        return self._finish_loss(
            loss, terms, x, y, y_pred, sample_weight, training
        )

    def get_config(self):
        config = self._base_config()
        config.update(
            {
                "ce_weight": self.ce_weight,
                "kd_weight": self.kd_weight,
                "temperature": self.temperature,
                "at_weight": self.at_weight,
                "teacher_layers": self.teacher_layers,
                "student_layers": self.student_layers,
                "at_power": self.at_power,
            }
        )
        return config
