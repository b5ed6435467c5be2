"""Pre-training models: `ParaphraserTrainer` and `HintTrainer`.

The Factor Transfer paraphraser learns to reconstruct the frozen teacher's
map before the student is distilled through it (`ft_keras.FactorTransfer`,
whose `paraphraser_trainer(teacher)` builds this model for its own
paraphraser). FitNets' first stage trains the student's lower layers and
the regressor on the teacher's hint alone (`ft_keras.FitNets`, whose
`hint_trainer(teacher, student)` builds `HintTrainer` for its own taps and
regressor).
"""

import keras
from keras import ops

from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras._training_model import TrainingModel
from ft_keras._training_model import serialize
from ft_keras.taps import features

_PACKAGE = "ft_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ParaphraserTrainer(TrainingModel):
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
        self.teacher = features.freeze(teacher)
        self.teacher_layer = teacher_layer
        self.paraphraser = paraphraser
        self._teacher_features = features.frozen_features(teacher, [teacher_layer])
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
            "teacher": serialize(self.teacher),
            "paraphraser": serialize(self.paraphraser),
            "teacher_layer": self.teacher_layer,
            "reconstruction": self.reconstruction,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HintTrainer(TrainingModel):
    """FitNets' first stage: the student's layers up to `student_layer`,
    and the regressor, trained on the frozen teacher's hint alone.

    Romero et al. (ICLR 2015, section 2.2 and Algorithm 1) first train the
    student's lower part `W_Guided` and the regressor `W_r` on `L_HT = 1/2
    ||u_h - r(v_g)||^2`, the teacher's map `u_h` at the hint layer against
    the regressed student map `r(v_g)`, then the whole student with KD (the
    second stage: a `Distiller` with `ft_keras.KnowledgeDistillation`).
    Here the hint loss is the mean squared difference over all elements,
    RepDistiller's `HintLoss` and the `FitNets` term's (half the paper's
    sum divided by the elements: a constant factor that the learning rate
    takes up). RepDistiller itself trains FitNets in one stage, hint and
    CE together (`FitNets`); this model is the paper's recipe.

        loss = mean((u_h - regressor(v_g))^2)
               + the trained parts' regularization losses

    Only the student's layers that lead to `student_layer` and the
    regressor train (the model tracks those, not the whole student); the
    teacher runs in inference mode, frozen. Labels, if the data has any,
    are ignored. `call` returns `{"regressed", "teacher_map"}`; `predict`
    the regressed student map.

    Args:
        teacher: A trained functional `keras.Model`. Frozen by this call.
        student: A functional `keras.Model`; its layers up to
            `student_layer` train (they are the student's own layers).
        regressor: A layer from the student's map to the teacher map's
            shape, e.g. `FitNets.regressor` (an `ft_keras.HintRegressor`).
            Built on the student's map if it is not built yet.
        teacher_layer: Teacher layer name of the hint.
        student_layer: Student layer name of the guided map.
        **kwargs: `keras.Model` keyword arguments such as `name`.

    Example:

    ```python
    fitnets = ft_keras.FitNets("stage2", "stage2")
    trainer = fitnets.hint_trainer(teacher, student)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    trainer.fit(train_ds, epochs=30)
    # Second stage: the whole student, with KD.
    distiller = ft_keras.Distiller(teacher, student,
                                   [ft_keras.KnowledgeDistillation()])
    ```
    """

    _PREDICTION = "regressed"
    _NESTED_OBJECTS = ("teacher", "student", "regressor")

    def __init__(self, teacher, student, regressor, teacher_layer,
                 student_layer, **kwargs):
        kwargs.setdefault("name", "hint_trainer")
        super().__init__(**kwargs)
        self.teacher = features.freeze(teacher)
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self._teacher_features = features.frozen_features(teacher, [teacher_layer])
        self.student_features = features.feature_extractor(
            student, [student_layer], "student")
        self.regressor = regressor
        student_map = tuple(self.student_features.output.shape)
        teacher_map = tuple(self._teacher_features.output.shape)
        regressed = tuple(regressor.compute_output_shape(student_map))
        if regressed[1:] != teacher_map[1:]:
            raise ValueError(
                f"The regressor maps student layer {student_layer!r} "
                f"{student_map} to {regressed}, not to the shape of teacher "
                f"layer {teacher_layer!r} {teacher_map}. Pass a regressor "
                "made for these taps (`FitNets.hint_trainer` makes one)."
            )
        if not regressor.built:
            regressor.build(student_map)
        self.hint_loss = keras.losses.MeanSquaredError(name="hint")
        self.built = True

    def call(self, inputs, training=None):
        """One pass of the frozen teacher to its hint and of the student's
        lower layers and the regressor."""
        teacher_map = ops.stop_gradient(
            self._teacher_features(inputs, training=False))
        student_map = self.student_features(inputs, training=training)
        return {"regressed": self.regressor(student_map, training=training),
                "teacher_map": teacher_map}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The hint loss, plus the trained parts' regularization when
        training."""
        y_pred = self._outputs(x, y_pred, training)
        loss = self.hint_loss(y_pred["teacher_map"], y_pred["regressed"])
        return self._finish_loss(loss, {}, x, y, y_pred, sample_weight, training)

    def compile(self, optimizer="sgd", **kwargs):
        """Configures the optimizer. The loss is the hint loss."""
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                "HintTrainer's loss is the hint loss; do not pass `loss` to "
                "`compile`."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        # The student's part that trains, as a functional model whose last
        # layer is `student_layer`.
        return {
            "name": self.name,
            "teacher": serialize(self.teacher),
            "student": serialize(self.student_features),
            "regressor": serialize(self.regressor),
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
        }
