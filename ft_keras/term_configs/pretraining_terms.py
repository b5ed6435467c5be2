"""The configs of terms pre-trained in a stage of their own: Factor
Transfer's paraphraser (`factor_transfer`) and FitNets' hint, the paper's
first stage (`fitnets_hint`)."""

import dataclasses

import keras

from ft_keras import _validation
from ft_keras import layers
from ft_keras import losses
from ft_keras import terms as ft_terms
from ft_keras.distiller_checks import feature_taps
from ft_keras.distiller_checks import tap_shape
from ft_keras.term_configs.registration import TermConfig
from ft_keras.term_configs.registration import defaults


@dataclasses.dataclass(frozen=True)
class FitNetsHintConfig(TermConfig):
    """FitNets' first stage as the paper trains it (Romero et al., ICLR
    2015, Algorithm 1): the pre-training stage trains the student's layers
    up to `student_layer` and the regressor on the teacher's hint alone
    (`FitNets.hint_trainer`, with `paraphraser/training`), and saves the
    student (`hint_student.keras`); the student stage starts from it and
    trains with the other terms, the hint no longer among them (the paper's
    second stage is KD). Gin: `fitnets_hint`, with `fitnets`' arguments
    (`weight` unused: the first stage's loss is the hint alone).

    ```python
    from ft_keras import term_configs
    hint = term_configs.fitnets_hint(teacher_layer="stage2", student_layer="stage2")
    hint.pretrains, hint.pretrained_files  # (True, ('hint_student.keras',))
    ```
    """

    pretrains = True
    pretrained_files = ("hint_student.keras",)
    student_term = False

    @property
    def term_name(self):
        """None: no term of this config trains in the student stage."""
        return None

    def build(self, teacher, student, pretrained=None):
        """The `FitNets` term whose regressor the pre-training trains; in
        the student stage (`pretrained` given), sets `student` to the
        hint-trained one and returns None."""
        if pretrained is None:
            return super().build(teacher, student)
        student.set_weights(pretrained["hint_student.keras"].get_weights())
        return None

    def pretrainer(self, term, teacher, student):
        """`term.hint_trainer(teacher, student)`: the student's lower part
        and the regressor, on the hint."""
        return term.hint_trainer(teacher, student)

    def pretrained_artifacts(self, term, teacher, student):
        """`{"hint_student.keras": student}`, its lower part hint-trained."""
        return {"hint_student.keras": student}


@dataclasses.dataclass(frozen=True)
class FactorTransferConfig:
    """The Factor Transfer term and its connectors; defaults are the
    paper's code. Gin: `factor_transfer` (`@factor_transfer()` in
    `distillation.terms`; also the method when none is bound).

    Its paraphraser is pre-trained on the teacher first (the `paraphraser`
    stage, `paraphraser.keras`); the student stage trains the translator
    (`translator.keras`) with the student.

    Args:
        teacher_layer, student_layer: The taps (layer names; required).
        rate: The paraphrase rate k.
        paraphraser_bn, translator_bn: BatchNormalization in each connector.
        negative_slope: The connectors' LeakyReLU slope.
        connector_weight_decay: An L2 penalty on the connectors' kernels
            only, with the gradient `connector_weight_decay * kernel`. To
            decay the connectors as PyTorch's SGD does (biases and BN too),
            leave it at 0 and use `training.weight_decay_mode='coupled'`.
        reconstruction: The paraphraser's reconstruction loss
            (`ft_keras.losses.reconstruction_loss`).
        beta: Weight of the factor transfer loss.
        p: 1 or 2.
        factor: `"full"` or `"attention"` (`FactorTransferLoss`).
        rounding: How `C * rate` becomes the factor's channel count
            (`ft_keras.layers.factor_channels`): `"half_even"` (the paper's
            code, `int(round(C * k))`), `"floor"` (RepDistiller and
            torchdistill, `int(C * k)`) or `"half_up"`.
        p_form: `"norm"` (the paper, torchdistill) or `"mean"` (RepDistiller):
            how the `p=2` loss reduces the difference (`FactorTransferLoss`).
    """

    teacher_layer: str
    student_layer: str
    rate: float = 0.5
    paraphraser_bn: bool = False
    translator_bn: bool = False
    negative_slope: float = 0.1
    connector_weight_decay: float = 0.0
    reconstruction: str = "l1"
    beta: float = 500.0
    p: int = 1
    factor: str = "full"
    rounding: str = "half_even"
    p_form: str = "norm"

    gin_name = "factor_transfer"
    label = "FT"
    reference = "@factor_transfer()"
    pretrains = True
    needs_indices = False
    student_term = True
    pretrained_files = ("paraphraser.keras",)
    trained_files = ("translator.keras",)

    def __post_init__(self):
        _validation.one_of("factor_transfer.rounding", self.rounding,
                           layers.ROUNDINGS)
        _validation.one_of("factor_transfer.p", self.p, (1, 2))
        _validation.one_of("factor_transfer.p_form", self.p_form,
                           losses.P_FORMS)
        _validation.non_negative(
            "factor_transfer.connector_weight_decay",
            self.connector_weight_decay,
            "an L2 penalty on the connectors' kernels, e.g. 5e-4",
        )

    @property
    def term_name(self):
        """The built term's name: `FactorTransfer`'s default."""
        return defaults(ft_terms.FactorTransfer)["name"]

    def for_data(self, training_set):
        """Itself: Factor Transfer needs nothing of the training split."""
        return self

    def connectors(self, teacher_channels):
        """A new `(Paraphraser, Translator)` pair for a teacher tap of
        `teacher_channels` channels, with these settings."""
        regularizer = (
            keras.regularizers.L2(self.connector_weight_decay / 2)
            if self.connector_weight_decay
            else None
        )
        paraphraser = layers.Paraphraser(
            rate=self.rate,
            use_bn=self.paraphraser_bn,
            negative_slope=self.negative_slope,
            kernel_regularizer=regularizer,
            rounding=self.rounding,
        )
        translator = layers.Translator(
            out_channels=layers.factor_channels(
                teacher_channels, self.rate, self.rounding
            ),
            use_bn=self.translator_bn,
            negative_slope=self.negative_slope,
            kernel_regularizer=regularizer,
        )
        return paraphraser, translator

    def build(self, teacher, student, pretrained=None):
        """A `FactorTransfer` term with new connectors for `teacher`'s tap,
        or with the pre-trained paraphraser of `pretrained`
        (`{"paraphraser.keras": model}`)."""
        paraphraser, translator = self.connectors(
            _tap_shape(teacher, "teacher", self.teacher_layer)[-1])
        if pretrained:
            paraphraser = pretrained["paraphraser.keras"].layers[-1]
        return ft_terms.FactorTransfer(
            paraphraser, translator, self.teacher_layer, self.student_layer,
            beta=self.beta, p=self.p, factor=self.factor, p_form=self.p_form,
            reconstruction=self.reconstruction,
        )

    def check(self, teacher, student):
        """Raises a `ValueError` if the taps are missing or their factors
        cannot be compared (`ft_keras.terms.check_factor_shapes`), without
        building the connectors."""
        teacher_map = _tap_shape(teacher, "teacher", self.teacher_layer)
        paraphraser, translator = self.connectors(teacher_map[-1])
        ft_terms.check_factor_shapes(
            self.teacher_layer, teacher_map, paraphraser, self.student_layer,
            _tap_shape(student, "student", self.student_layer), translator,
            self.factor)

    def pretrainer(self, term, teacher, student):
        """The model that pre-trains `term`'s paraphraser on `teacher`."""
        return term.paraphraser_trainer(teacher)

    def pretrained_artifacts(self, term, teacher, student):
        """`{file: model}` the pre-training stage saves."""
        tap = _tap_shape(teacher, "teacher", self.teacher_layer)
        return {"paraphraser.keras": keras.Sequential(
            [keras.Input(tap[1:]), term.paraphraser])}

    def trained_artifacts(self, term, student):
        """`{file: model}` the student stage saves beside the student."""
        tap = _tap_shape(student, "student", self.student_layer)
        return {"translator.keras": keras.Sequential(
            [keras.Input(tap[1:]), term.translator])}

    def bindings(self):
        """`{"factor_transfer.field": value}` for every field."""
        return {f"factor_transfer.{name}": value
                for name, value in dataclasses.asdict(self).items()}


def _tap_shape(model, role, layer):
    """The shape of `model`'s tap `layer` (`factor_transfer.<role>_layer`),
    or a `ValueError` naming the model's feature taps."""
    if layer not in [l.name for l in model.layers]:
        raise ValueError(
            f"`factor_transfer.{role}_layer`={layer!r} is not a layer of "
            f"the {role}{'' if model.name == role else ' ' + repr(model.name)}. "
            "Its feature taps: "
            f"{feature_taps(model)}"
        )
    return tap_shape(model, layer)
