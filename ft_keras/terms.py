"""Distillation terms: what a `ft_keras.Distiller` adds to the student's loss.

A term is a serialisable Keras layer that names the taps it needs (teacher
and student layer names; `None` for a network's output, its logits), owns
its connectors (trainable layers between a tap and the loss, such as Factor
Transfer's translator) and has a weight. The `Distiller` runs the teacher
and the student once per step over the union of its terms' taps and trains
the student on

    student_loss_weight * CE(y, logits) + sum of weight * term

- `FactorTransfer`: the paper's term, through a frozen pre-trained
  `Paraphraser` (teacher factor) and a trained `Translator` (student
  factor); `paraphraser_trainer(teacher)` is its pre-training model.
- `KnowledgeDistillation`: Hinton's KD on the logits, `T^2 * KL`.
- `AttentionTransfer`: Zagoruyko & Komodakis' attention maps at tap pairs.

FT, KD, AT, FT+KD and any new combination are lists of terms. A term of
your own is a subclass that overrides `compute_loss` (and `call` when it
has connectors):

```python
import keras
import ft_keras

class FeatureL2(ft_keras.Term):
    \"\"\"Mean squared difference of two maps of the same shape.\"\"\"

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]),
                              axis=(1, 2, 3))

term = FeatureL2(teacher_layers=["stage3"], student_layers=["stage3"],
                 weight=10.0, name="l2")
term.loss_name  # 'l2_loss': the column `fit` logs, before the weight
```
"""

import keras
from keras import ops

from ft_keras import _validation
from ft_keras import features
from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras._training_model import deserialize
from ft_keras._training_model import serialize
from ft_keras.pretraining import ParaphraserTrainer

_PACKAGE = "ft_keras"


def _layer_names(name, value):
    names = [value] if value is None or isinstance(value, str) else list(value)
    for layer_name in names:
        if layer_name is not None and not isinstance(layer_name, str):
            raise ValueError(
                f"`{name}` must list layer names (strings), or None for the "
                f"network's output. Received: {name}={value!r}"
            )
    return names


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Term(keras.layers.Layer):
    """Base class of the distillation terms of a `ft_keras.Distiller`.

    The `Distiller` runs each network once per step and hands every term
    the maps it tapped:

    - `call(teacher, student, training=None)` runs the term's connectors.
      `teacher` and `student` are lists of tensors in the order of
      `teacher_layers` and `student_layers` (the teacher's carry no
      gradient and come from the frozen teacher in inference mode). It
      returns `(teacher, student)`, the lists `compute_loss` receives.
      The default returns them unchanged.
    - `compute_loss(teacher, student)` returns the loss per example, shape
      `(batch,)`, as `keras.losses.Loss.call` does, from those lists cast
      to float32. A scalar is taken as the loss of the batch. The
      `Distiller` averages it over the global batch (under `tf.distribute`
      too), logs it as `loss_name` and adds `weight` times it to the loss.
    - `connect(teacher_shapes, student_shapes)` checks the taps' shapes and
      builds the connectors; the `Distiller` calls it once.

    Terms do not cast their inputs to a mixed precision policy's compute
    dtype (`autocast=False`): their connectors keep their own policy.

    Args:
        teacher_layers: Teacher layer names the term taps; `None` for the
            teacher's output (its logits).
        student_layers: Student layer names, likewise.
        weight: The term's weight in the student's loss (non-negative).
        **kwargs: `keras.layers.Layer` keyword arguments, such as `name`
            (which names the logged loss, `<name>_loss`).

    Example:

    ```python
    import keras
    import ft_keras

    class Hint(ft_keras.Term):
        \"\"\"FitNets' hint: a 1x1 regressor from the student's map to the
        teacher's, and their mean squared difference.\"\"\"

        def connect(self, teacher_shapes, student_shapes):
            self.regressor = keras.layers.Conv2D(teacher_shapes[0][-1], 1)
            self.regressor.build(student_shapes[0])
            self.built = True

        def call(self, teacher, student, training=None):
            return teacher, [self.regressor(student[0])]

        def compute_loss(self, teacher, student):
            return keras.ops.mean(keras.ops.square(teacher[0] - student[0]),
                                  axis=(1, 2, 3))

    hint = Hint(["stage2"], ["stage2"], weight=1.0, name="hint")
    ```
    """

    def __init__(self, teacher_layers=(), student_layers=(), weight=1.0, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.teacher_layers = _layer_names("teacher_layers", teacher_layers)
        self.student_layers = _layer_names("student_layers", student_layers)
        self.weight = _validation.non_negative("weight", weight, "1 to start")

    @property
    def loss_name(self):
        """The name `fit` logs this term's loss under: `<name>_loss`."""
        return f"{self.name}_loss"

    def connect(self, teacher_shapes, student_shapes):
        """Checks the tapped maps' shapes and builds the connectors.

        Args:
            teacher_shapes: Shapes of the teacher's taps, in the order of
                `teacher_layers`.
            student_shapes: Shapes of the student's taps, likewise.

        Raises:
            ValueError: if the term cannot use these maps.
        """
        self.built = True

    def call(self, teacher, student, training=None):
        return teacher, student

    def compute_loss(self, teacher, student):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute_loss(teacher, "
            "student)`, returning the loss per example."
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layers": self.teacher_layers,
                "student_layers": self.student_layers,
                "weight": self.weight,
            }
        )
        return config


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
    if not features.comparable_maps(
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactorTransfer(Term):
    """Factor Transfer (Kim, Park & Kwak, NeurIPS 2018) as a term.

    The frozen paraphraser's encoder turns the teacher's map at
    `teacher_layer` into the teacher factor `F_T` (inference mode, no
    gradient); the translator, trained with the student, turns the
    student's map at `student_layer` into the student factor `F_S`. The
    term is `FactorTransferLoss(p, factor, p_form)(F_T, F_S)`, weighted by
    `beta`, and logged as `ft_loss` (before `beta`).

    Pre-train the paraphraser first, with `paraphraser_trainer(teacher)`;
    the `Distiller` freezes it.

    Args:
        paraphraser: An `ft_keras.Paraphraser`.
        translator: An `ft_keras.Translator` whose `out_channels` equals
            the paraphraser's factor channels (`factor="full"`). None: a
            `Translator` with the paraphraser's factor channels and default
            options, made when the `Distiller` connects the term.
        teacher_layer: Teacher layer name of the teacher factor's map.
        student_layer: Student layer name of the student factor's map.
        beta: The term's weight (500 in the paper's code).
        p: 1 or 2, the norm of `FactorTransferLoss`.
        factor: `"full"` (the paper) or `"attention"` (RepDistiller).
        p_form: `"norm"` (the paper, torchdistill) or `"mean"` (RepDistiller):
            how `p=2` reduces the difference.
        reconstruction: The paraphraser's pre-training loss: `"l1"` (the
            paper's code), `"mse"` (RepDistiller, torchdistill) or
            `"normalized_l2"` (MMRazor).
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    ft = ft_keras.FactorTransfer(
        ft_keras.Paraphraser(rate=0.5), ft_keras.Translator(32),
        teacher_layer="stage3", student_layer="stage3", beta=500.0)
    # ft_keras.Translator(32): the factor channels, 64 * 0.5 (translator=None
    # makes this one).
    trainer = ft.paraphraser_trainer(teacher)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    trainer.fit(train_ds, epochs=30)
    distiller = ft_keras.Distiller(teacher, student, terms=[ft])
    ```
    """

    def __init__(
        self,
        paraphraser,
        translator,
        teacher_layer,
        student_layer,
        beta=500.0,
        p=1,
        factor="full",
        p_form="norm",
        reconstruction="l1",
        name="ft",
        **kwargs,
    ):
        for arg, value, cls in (
            ("paraphraser", paraphraser, ft_layers.Paraphraser),
            ("translator", translator, ft_layers.Translator),
        ):
            if not isinstance(value, cls) and not (arg == "translator" and value is None):
                raise ValueError(
                    f"`{arg}` must be an `ft_keras.{cls.__name__}`. "
                    f"Received: {arg}={value!r}"
                )
        beta = _validation.non_negative("beta", beta, "500 in the paper's code")
        super().__init__(
            [teacher_layer], [student_layer], weight=beta, name=name, **kwargs
        )
        self.loss_fn = ft_losses.FactorTransferLoss(p=p, factor=factor, p_form=p_form)
        ft_losses.reconstruction_loss(reconstruction)  # validates the name
        self.reconstruction = reconstruction
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.paraphraser = paraphraser
        self.translator = translator

    @property
    def beta(self):
        """The term's weight."""
        return self.weight

    def paraphraser_trainer(self, teacher, **kwargs):
        """The model that pre-trains this term's paraphraser on `teacher`'s
        map at `teacher_layer` (`ft_keras.ParaphraserTrainer`)."""
        return ParaphraserTrainer(
            teacher,
            self.paraphraser,
            self.teacher_layer,
            reconstruction=self.reconstruction,
            **kwargs,
        )

    def connect(self, teacher_shapes, student_shapes):
        teacher_map, student_map = tuple(teacher_shapes[0]), tuple(student_shapes[0])
        if self.translator is None:
            channels = self.paraphraser.compute_output_shape(teacher_map)[-1]
            self.translator = ft_layers.Translator(channels)
        check_factor_shapes(
            self.teacher_layer, teacher_map, self.paraphraser,
            self.student_layer, student_map, self.translator, self.loss_fn.factor,
        )
        if not self.paraphraser.built:
            self.paraphraser.build(teacher_map)
        if not self.translator.built:
            self.translator.build(student_map)
        # Frozen once built: freezing marks the variables that exist.
        features.freeze(self.paraphraser)
        self.built = True

    def teacher_factor(self, teacher_map):
        """The frozen teacher factor of a teacher map (no gradient)."""
        return ops.stop_gradient(self.paraphraser(teacher_map, training=False))

    def call(self, teacher, student, training=None):
        """`([F_T], [F_S])`: the paraphraser (inference mode) on the
        teacher's map and the translator on the student's."""
        student_factor = self.translator(student[0], training=training)
        return [self.teacher_factor(teacher[0])], [student_factor]

    def compute_loss(self, teacher, student):
        return self.loss_fn.call(teacher[0], student[0])

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers", "weight"):
            config.pop(key)
        config.update(
            {
                "paraphraser": serialize(self.paraphraser),
                "translator": serialize(self.translator),
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "beta": self.beta,
                "p": self.loss_fn.p,
                "factor": self.loss_fn.factor,
                "p_form": self.loss_fn.p_form,
                "reconstruction": self.reconstruction,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("paraphraser", "translator"):
            config[key] = deserialize(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KnowledgeDistillation(Term):
    """Hinton's knowledge distillation on the logits, as a term.

    `KnowledgeDistillationLoss(temperature)`: `T^2 * KL(softmax(t / T) ||
    softmax(s / T))` of the teacher's and the student's logits, logged as
    `kd_loss` (before `weight`). RepDistiller's KD: `weight=0.9` with the
    `Distiller`'s `student_loss_weight=0.1`, `temperature=4`.

    Args:
        temperature: The softmax temperature (4 in RepDistiller).
        weight: The term's weight.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    kd = ft_keras.KnowledgeDistillation(temperature=4.0, weight=0.9)
    distiller = ft_keras.Distiller(teacher, student, terms=[kd],
                                   student_loss_weight=0.1)
    ```
    """

    def __init__(self, temperature=4.0, weight=1.0, name="kd", **kwargs):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)
        self.loss_fn = ft_losses.KnowledgeDistillationLoss(temperature)

    @property
    def temperature(self):
        return self.loss_fn.temperature

    def compute_loss(self, teacher, student):
        return self.loss_fn.call(teacher[0], student[0])

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionTransfer(Term):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) as a term.

    At each pair of taps, the squared difference of the L2-normalised
    attention maps (`AttentionTransferLoss(power)`); the pairs' losses are
    summed and logged as `at_loss` (before `weight`). RepDistiller:
    `weight=1000`, `power=2`.

    Args:
        teacher_layers: Teacher tap names.
        student_layers: Student tap names, paired with `teacher_layers`.
        weight: The term's weight.
        power: The exponent of the attention maps.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    at = ft_keras.AttentionTransfer(["stage2", "stage3"],
                                    ["stage2", "stage3"], weight=1000.0)
    distiller = ft_keras.Distiller(teacher, student, terms=[at])
    ```
    """

    def __init__(
        self, teacher_layers, student_layers, weight=1000.0, power=2, name="at",
        **kwargs,
    ):
        super().__init__(
            teacher_layers, student_layers, weight=weight, name=name, **kwargs
        )
        if not self.teacher_layers or len(self.teacher_layers) != len(
            self.student_layers
        ):
            raise ValueError(
                "Attention transfer needs paired taps: `teacher_layers` and "
                "`student_layers` of the same, non-zero length. Received: "
                f"teacher_layers={self.teacher_layers}, "
                f"student_layers={self.student_layers}"
            )
        self.loss_fn = ft_losses.AttentionTransferLoss(power=power)

    @property
    def power(self):
        return self.loss_fn.power

    def connect(self, teacher_shapes, student_shapes):
        pairs = zip(self.teacher_layers, teacher_shapes,
                    self.student_layers, student_shapes)
        for t_name, t_shape, s_name, s_shape in pairs:
            if not features.comparable_maps(tuple(t_shape), tuple(s_shape)):
                raise ValueError(
                    f"Attention transfer cannot pair teacher layer {t_name!r} "
                    f"{tuple(t_shape)} with student layer {s_name!r} "
                    f"{tuple(s_shape)}: both must be (batch, height, width, "
                    "channels) maps whose heights/widths are integer "
                    "multiples of each other."
                )
        self.built = True

    def compute_loss(self, teacher, student):
        per_pair = [self.loss_fn.call(t, s) for t, s in zip(teacher, student)]
        total = per_pair[0]
        for loss in per_pair[1:]:
            total = total + loss
        return total

    def get_config(self):
        config = super().get_config()
        config["power"] = self.power
        return config
