"""Pre-training of the Factor Transfer paraphraser: `ParaphraserTrainer`.

The paraphraser learns to reconstruct the frozen teacher's map before the
student is distilled through it (`ft_keras.FactorTransfer`, whose
`paraphraser_trainer(teacher)` builds this model for its own paraphraser).
"""

import keras
from keras import ops

from ft_keras import features
from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras._training_model import TrainingModel
from ft_keras._training_model import serialize

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
