"""The runner's terms in gin: one configurable per `ft_keras.Term`.

A method is the list `distillation.terms`; each entry is a gin reference to
a term's configurable, whose bindings are the term's constructor arguments:

    distillation.terms = [@factor_transfer(), @knowledge_distillation()]
    factor_transfer.teacher_layer = 'stage3'
    knowledge_distillation.temperature = 4.0

    configurable            term                     pre-trains
    factor_transfer         FactorTransfer           its paraphraser
    knowledge_distillation  KnowledgeDistillation    -
    attention_transfer      AttentionTransfer        -
    decoupled_kd            DecoupledKD              -
    dist                    DIST                     -
    fitnets                 FitNets                  -
    fitnets_hint            FitNets                  the student's lower part
                                                     (the paper's first stage)
    review_kd               ReviewKD                 -
    crd                     CRD                      -

Calling a configurable gives a term config: the term's settings, and what
the runner asks of it (`build` the term for a teacher and a student, and
for a term that pre-trains its connectors, the model that pre-trains them
and the files it leaves). A term of your own joins the runner with
`register`:

```python
import keras
import ft_keras
from ft_keras import term_configs

class LogitL2(ft_keras.Term):
    def __init__(self, weight=1.0, name="logit_l2", **kwargs):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]), axis=-1)

logit_l2 = term_configs.register(LogitL2, "logit_l2", label="L2")
logit_l2(weight=0.5).label  # 'L2'
# gin: distillation.terms = [@logit_l2()]; logit_l2.weight = 0.5
```
"""

import dataclasses
import inspect
import re

import gin
import keras

from ft_keras import _validation
from ft_keras import layers
from ft_keras import losses
from ft_keras import terms as ft_terms


# gin name -> report label, of every registered term.
LABELS = {"factor_transfer": "FT"}


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """What the runner tells a term config about the training split
    (`TermConfig.for_data`), for terms that keep state per training
    example (`needs_indices`).

    Attributes:
        num_examples: The split's size.
        num_classes: The dataset's number of classes.
        labels: Each example's class, int32, in the order of its index
            (`ft_keras.data.split_labels`).
    """

    num_examples: int
    num_classes: int
    labels: object = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class TermConfig:
    """One entry of `distillation.terms`: a Term class and the arguments
    gin bound for it (defaults filled in).

    Attributes:
        term_class: The `ft_keras.Term` subclass.
        arguments: `((name, value), ...)`, its constructor's arguments.
        gin_name: The configurable's name in gin (`knowledge_distillation`).
        label: The term's name in reports (`"KD"`).
        scope: The gin scope it was called under (`""` for none), so that
            two terms of one class can differ (`@t2/attention_transfer()`).
    """

    term_class: type
    arguments: tuple
    gin_name: str
    label: str
    scope: str = ""

    # Constructor arguments the training split fills where gin leaves them
    # None (`for_data`; see `CRDConfig`).
    data_arguments = ()
    # A term that pre-trains connectors says so (see `FactorTransferConfig`).
    pretrains = False
    # Whether `build` gives a term for the student stage's Distiller.
    student_term = True
    pretrained_files = ()
    trained_files = ()
    connector_weight_decay = 0.0

    @property
    def needs_indices(self):
        """Whether the term needs each example's index in the training set
        (`Term.needs_indices`): the runner's training pipeline then yields
        them and the config is given the split (`for_data`)."""
        return self.term_class.needs_indices

    def for_data(self, training_set):
        """This config for the training split `training_set` (a
        `TrainingSet`): itself, where the term needs nothing of it."""
        return self

    def build(self, teacher, student, pretrained=None):
        """A new term for `teacher` and `student` (Keras models).

        `pretrained` is `{file: loaded model}` of the config's
        `pretrained_files` in the student stage (unused here). A config
        whose term takes no part in the student stage (its pre-training set
        the student up, `FitNetsHintConfig`) returns None there."""
        return self.term_class(**dict(self.arguments))

    @property
    def term_name(self):
        """The built term's name (its loss is logged as `<name>_loss`), or
        None where the constructor takes none."""
        return dict(self.arguments).get("name")

    def trained_artifacts(self, term, student):
        """`{file: model}` the student stage saves beside the student:
        none (`trained_files` is empty)."""
        return {}

    def check(self, teacher, student):
        """Raises a `ValueError` if the term cannot distil `teacher` into
        `student` (its taps, their shapes: `Distiller.check_terms`)."""
        from ft_keras import distiller  # the Distiller imports the terms

        distiller.check_terms(teacher, student, [self.build(teacher, student)])

    @property
    def reference(self):
        """How `distillation.terms` names it: `@scope/gin_name()`."""
        return f"@{self.scope + '/' if self.scope else ''}{self.gin_name}()"

    def bindings(self):
        """`{"scope/gin_name.argument": value}`: gin bindings that give
        this config back."""
        prefix = f"{self.scope + '/' if self.scope else ''}{self.gin_name}"
        return {f"{prefix}.{name}": value for name, value in self.arguments}


def _parameters(term_class):
    """The constructor's keyword parameters, without `self` and `**kwargs`."""
    signature = inspect.signature(term_class.__init__)
    return [
        parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def _defaults(term_class):
    """`{parameter: default}` of the constructor's keyword parameters."""
    return {p.name: p.default for p in _parameters(term_class)}


def register(term_class, gin_name, label=None, config_class=TermConfig):
    """Registers `term_class` with gin as `gin_name`: calling the returned
    configurable (`@gin_name()` in `distillation.terms`) gives a
    `TermConfig`, whose term is `term_class(**bindings)`.

    Args:
        term_class: An `ft_keras.Term` subclass.
        gin_name: Its configurable's name, e.g. `"knowledge_distillation"`.
        label: Its name in reports (`"KD"`); `term_class.__name__` if None.
        config_class: `TermConfig` or a subclass that says what the stages
            ask of the term (a pre-training, the files it leaves).

    Returns:
        The configurable.
    """
    if not (isinstance(term_class, type) and issubclass(term_class, ft_terms.Term)):
        raise ValueError(
            "`register` takes an `ft_keras.Term` subclass. "
            f"Received: term_class={term_class!r}"
        )
    LABELS[gin_name] = label or term_class.__name__
    # What the training split fills may stay unbound.
    parameters = [
        p.replace(default=None)
        if p.name in config_class.data_arguments and p.default is inspect.Parameter.empty
        else p
        for p in _parameters(term_class)
    ]
    signature = inspect.Signature(parameters)

    def configurable(**arguments):
        missing = [p.name for p in parameters
                   if p.default is inspect.Parameter.empty and p.name not in arguments]
        if missing:
            raise ValueError(
                f"`{gin_name}.{missing[0]}` is required: bind it, e.g. "
                f"`{gin_name}.{missing[0]} = ...`"
            )
        bound = signature.bind(**arguments)
        bound.apply_defaults()
        return config_class(term_class, tuple(bound.arguments.items()), gin_name,
                            label or term_class.__name__, gin.current_scope_str())

    configurable.__signature__ = signature
    configurable.__name__ = gin_name
    configurable.__doc__ = f"A `TermConfig` of `{term_class.__name__}`."
    return gin.external_configurable(configurable, gin_name)


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
class CRDConfig(TermConfig):
    """CRD in the runner: the training split fills `num_examples` and
    `num_classes` where gin leaves them unbound (a bound value must match
    it), and the term gets each example's class (`CRD.set_labels`); the
    training pipeline yields each example's index (`needs_indices`).

    ```python
    from ft_keras import term_configs
    crd = term_configs.crd().for_data(term_configs.TrainingSet(
        num_examples=6, num_classes=3, labels=[0, 0, 1, 1, 2, 2]))
    dict(crd.arguments)["num_examples"]  # 6
    ```
    """

    data_arguments = ("num_examples", "num_classes")
    labels: object = dataclasses.field(default=None, repr=False, compare=False)

    def for_data(self, training_set):
        """This config with the split's size, classes and labels."""
        arguments = dict(self.arguments)
        for name in self.data_arguments:
            value, bound = getattr(training_set, name), arguments.get(name)
            if bound is None:
                arguments[name] = value
            elif bound != value:
                raise ValueError(
                    f"`{self.gin_name}.{name} = {bound!r}`, but the training "
                    f"split has {value}: leave `{self.gin_name}.{name}` "
                    "unbound (the split's) or bind the split's value.")
        return dataclasses.replace(self, arguments=tuple(arguments.items()),
                                   labels=training_set.labels)

    def build(self, teacher, student, pretrained=None):
        """A new `CRD`, given the training split's labels (`for_data`)
        for its negatives of other classes."""
        if dict(self.arguments).get("num_examples") is None:
            raise ValueError(
                f"{self.reference} needs the training split's size: the "
                "runner gives it (`for_data`); in Python, bind "
                f"`{self.gin_name}.num_examples`.")
        term = super().build(teacher, student)
        if self.labels is not None and term.negatives == "other_classes":
            term.set_labels(self.labels)
        return term


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
        return _defaults(ft_terms.FactorTransfer)["name"]

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
    if layer not in [l.name for l in model.layers]:
        from ft_keras import models  # registry: only to name the taps

        raise ValueError(
            f"`factor_transfer.{role}_layer`={layer!r} is not a layer of "
            f"the {role}{'' if model.name == role else ' ' + repr(model.name)}. "
            "Its feature taps: "
            f"{models.feature_taps(model)}"
        )
    return tuple(model.get_layer(layer).output.shape)


factor_transfer = gin.external_configurable(FactorTransferConfig, "factor_transfer")
knowledge_distillation = register(
    ft_terms.KnowledgeDistillation, "knowledge_distillation", "KD")
attention_transfer = register(ft_terms.AttentionTransfer, "attention_transfer", "AT")
decoupled_kd = register(ft_terms.DecoupledKD, "decoupled_kd", "DKD")
dist = register(ft_terms.DIST, "dist", "DIST")
fitnets = register(ft_terms.FitNets, "fitnets", "FitNets")
review_kd = register(ft_terms.ReviewKD, "review_kd", "ReviewKD")
fitnets_hint = register(ft_terms.FitNets, "fitnets_hint", "FitNets-hint",
                        config_class=FitNetsHintConfig)
# The runner feeds CRD each example's index and its config the training
# split (`CRDConfig`).
crd = register(ft_terms.CRD, "crd", "CRD", config_class=CRDConfig)


def label(terms_binding):
    """The report label of a `distillation.terms` binding as a config file
    spells it (`"[@factor_transfer(), @knowledge_distillation()]"` gives
    `"FT+KD"`); None, the default, is Factor Transfer's."""
    if terms_binding is None:
        return LABELS["factor_transfer"]
    names = re.findall(r"@(?:[\w./]*/)?([\w.]+)\(\)", str(terms_binding))
    return "+".join(LABELS.get(name.rsplit(".", 1)[-1], name) for name in names)


def is_term_config(value):
    """Whether `value` is what a term's configurable returns."""
    return isinstance(value, (TermConfig, FactorTransferConfig))
