"""The step machinery `ParaphraserTrainer` and `Distiller` share.

Both leave the step to Keras' own trainer, as `keras.distillation.Distiller`
does: overriding `compute_loss` (not `train_step`) keeps one class that
trains on the JAX, TensorFlow and PyTorch backends, with `fit`, callbacks,
mixed precision and `tf.distribute` owning the step.

- `call` runs each network exactly once and returns a dict of what the loss
  needs; the entry `_PREDICTION` is what `predict` returns and what the
  compiled metrics see;
- `compute_loss` computes the loss terms from that dict and returns
  `self._finish_loss(...)`, which records each term in its own tracker,
  for the global batch, and adds the trained parts' regularization.

Keras' trainer differentiates with respect to the trainable variables only
(the frozen parts have none), scales the loss for mixed precision and
across replicas, and keeps the `loss` tracker.
"""

import keras
from keras import ops

from ft_keras import _keras_private


class TrainingModel(keras.Model):
    """A `keras.Model` whose `call` returns a dict and whose
    `compute_loss` reports named loss terms.

    `from_config` deserializes the Keras objects held in the config under
    `_NESTED_OBJECTS` (lists of them too).
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

    def get_compile_config(self):
        """Keras' compile config, with the loss argument `compile` took
        (Keras records `loss=None`: the loss is this model's own)."""
        config = super().get_compile_config()
        if config:
            config["loss"] = serialize(getattr(self, "_compiled_loss_arg", None))
        return config

    def compile_from_config(self, config):
        """Compiles a loaded model as it was saved, optimizer state
        included: `keras.saving.load_model` calls this."""
        self.compile(**deserialize(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls._NESTED_OBJECTS:
            value = config[key]
            config[key] = (
                [deserialize(v) for v in value]
                if isinstance(value, list)
                else deserialize(value)
            )
        return cls(**config)


def serialize(obj):
    """`keras.saving.serialize_keras_object`."""
    return keras.saving.serialize_keras_object(obj)


def deserialize(config):
    """`keras.saving.deserialize_keras_object`."""
    return keras.saving.deserialize_keras_object(config)
