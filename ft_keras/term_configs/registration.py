"""A term config, what the runner asks of a term, and `register`, which
gives a `ft_keras.Term` its gin configurable.

Calling a configurable gives a `TermConfig`: the term's class and the
arguments gin bound, with what the stages ask of it (`build` the term for a
teacher and a student, `check` that it can distil one into the other).
Each configurable is known to gin under `ft_keras.term_configs.<name>`
(`GIN_MODULE`), whichever module registers it.
"""

import dataclasses
import inspect
import re

import gin

from ft_keras import terms as ft_terms
from ft_keras.distiller_checks import check_terms

# The module gin files name the configurables under
# (`@ft_keras.term_configs.knowledge_distillation()`).
GIN_MODULE = "ft_keras.term_configs"

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
        `student` (its taps, their shapes:
        `ft_keras.distiller_checks.check_terms`)."""
        check_terms(teacher, student, [self.build(teacher, student)])

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


def defaults(term_class):
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
    return gin.external_configurable(configurable, gin_name, module=GIN_MODULE)


def label(terms_binding):
    """The report label of a `distillation.terms` binding as a config file
    spells it (`"[@factor_transfer(), @knowledge_distillation()]"` gives
    `"FT+KD"`); None, the default, is Factor Transfer's."""
    if terms_binding is None:
        return LABELS["factor_transfer"]
    names = re.findall(r"@(?:[\w./]*/)?([\w.]+)\(\)", str(terms_binding))
    return "+".join(LABELS.get(name.rsplit(".", 1)[-1], name) for name in names)
