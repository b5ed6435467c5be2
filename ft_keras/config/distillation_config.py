"""How the student distils: `DistillationConfig`, gin's `distillation`."""

import dataclasses

from ft_keras import _validation
from ft_keras import term_configs
from ft_keras.config._frozen import set_field


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """How the `student` stage distils: the method is its list of terms.
    Gin: `distillation`.

    Args:
        terms: The terms the student learns from, each a term's
            configurable called in gin (`ft_keras.term_configs`):
            `[@factor_transfer(), @knowledge_distillation()]`. None (not
            bound): Factor Transfer alone, `[@factor_transfer()]`.
            `gin/methods/*.gin` are the named methods.
        student_loss_weight: Weight of the student's cross-entropy (1 in
            the paper; 0.1 in RepDistiller's KD).
        label: The distilled student's name in reports, before
            `" student"`; None: the terms' labels joined by `+` (`"FT+KD"`).
    """

    terms: tuple = None
    student_loss_weight: float = 1.0
    label: str = None

    def __post_init__(self):
        _validation.non_negative("distillation.student_loss_weight",
                                 self.student_loss_weight, "1 in the paper")
        if self.terms is None:
            return  # Factor Transfer, read from gin by `from_gin`
        terms = tuple(self.terms) if isinstance(self.terms, (list, tuple)) else (
            self.terms,)
        for term in terms:
            if not term_configs.is_term_config(term):
                call = "()" if callable(term) else ""
                raise ValueError(
                    "`distillation.terms` lists terms' configurables, called: "
                    "`[@factor_transfer(), @knowledge_distillation()]` "
                    f"(ft_keras.term_configs). Received: {term!r}{call and ' (add ())'}"
                )
        if not terms:
            raise ValueError(
                "`distillation.terms` is empty: list at least one term, or "
                "train the student alone with `experiment.stages = "
                "['baseline', 'evaluate']` (gin/methods/alone.gin)."
            )
        names = [term.term_name for term in terms if term.term_name is not None]
        if len(set(names)) != len(names):
            # The Distiller's rule, refused before any work.
            raise ValueError(
                f"`distillation.terms` lists {[t.reference for t in terms]}, "
                f"whose terms are named {names}; each needs its own name (its "
                "loss is logged as `<name>_loss`): call a term twice under two "
                "scopes with a name each (`@t1/attention_transfer()`, "
                "`t1/attention_transfer.name = 'at1'`)."
            )
        if not any(term.student_term for term in terms):
            raise ValueError(
                f"`distillation.terms` lists {[t.reference for t in terms]}, "
                "which only pre-train: add the terms the student stage trains "
                "with, e.g. `@knowledge_distillation()` (FitNets' second stage)."
            )
        pretraining = [term.reference for term in terms if term.pretrains]
        if len(pretraining) > 1:
            raise ValueError(
                f"`distillation.terms` lists {pretraining}, which each "
                "pre-train connectors in the one `paraphraser` stage: keep one."
            )
        set_field(self, "terms", terms)
        if self.label is None:
            set_field(self, "label", "+".join(term.label for term in terms))

    @property
    def pretrains(self):
        """Whether a term pre-trains connectors (the `paraphraser` stage)."""
        return any(term.pretrains for term in self.terms)
