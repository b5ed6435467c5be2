"""Factor Transfer (Kim, Park & Kwak, NeurIPS 2018) as a term."""

import keras
from keras import ops

from ft_keras import _validation
from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras._training_model import deserialize
from ft_keras._training_model import serialize
from ft_keras.pretraining import ParaphraserTrainer
from ft_keras.taps import features
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"


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

