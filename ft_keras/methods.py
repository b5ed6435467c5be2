"""The runner's distillation methods as lists of terms.

`distillation.method` names a list of `ft_keras.terms`; this module is the
one place that says which:

    method   terms                                   paraphraser stage
    ft       FactorTransfer                          yes
    ft+kd    FactorTransfer, KnowledgeDistillation   yes
    kd       KnowledgeDistillation                   no
    at       AttentionTransfer                       no

and which weights a method defaults to (RepDistiller's KD: cross-entropy
0.1, KD 0.9). The tables import nothing (the report and the stage table
read them without Keras); `terms` imports `ft_keras.terms`. From Python, build the same lists yourself:

```python
import ft_keras
from ft_keras import config, methods

distillation = config.DistillationConfig("kd")
[type(t).__name__ for t in methods.terms(distillation, config.FactorTransferConfig())]
# ['KnowledgeDistillation']
```
"""

# method -> the names of its terms, in the order their losses are summed.
METHODS = {
    "ft": ("ft",),
    "ft+kd": ("ft", "kd"),
    "kd": ("kd",),
    "at": ("at",),
}
# method -> weights it defaults to when `distillation.ce_weight` /
# `distillation.kd_weight` are not set.
DEFAULT_WEIGHTS = {
    "ft": {"ce_weight": 1.0, "kd_weight": 0.0},
    "ft+kd": {"ce_weight": 1.0, "kd_weight": 1.0},
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9},  # RepDistiller
    "at": {"ce_weight": 1.0, "kd_weight": 0.0},
}


def uses_factor_transfer(method):
    """Whether `method` pre-trains a paraphraser and distils through a
    translator (FT, FT+KD)."""
    return "ft" in METHODS[method]


def label(method):
    """The method's name in reports: `"FT+KD"` for `"ft+kd"`."""
    return method.upper()


def terms(distillation, factor_transfer, paraphraser=None, translator=None):
    """The terms `distillation.method` trains the student with.

    Args:
        distillation: A `config.DistillationConfig`.
        factor_transfer: A `config.FactorTransferConfig` (its taps serve AT
            too when `distillation.at_*_layers` are empty).
        paraphraser: The pre-trained `Paraphraser` (FT methods only).
        translator: The `Translator` to train (FT methods only).

    Returns:
        A list of `ft_keras.Term`s, in the order their losses are summed.
    """
    from ft_keras import terms as ft_terms  # Keras: only when terms are built

    ft = factor_transfer
    built = []
    for name in METHODS[distillation.method]:
        if name == "ft":
            built.append(ft_terms.FactorTransfer(
                paraphraser, translator, ft.teacher_layer, ft.student_layer,
                beta=ft.beta, p=ft.p, factor=ft.factor, p_form=ft.p_form,
                reconstruction=ft.reconstruction,
            ))
        elif name == "kd":
            built.append(ft_terms.KnowledgeDistillation(
                distillation.temperature, weight=distillation.kd_weight))
        else:
            built.append(ft_terms.AttentionTransfer(
                list(distillation.at_teacher_layers) or [ft.teacher_layer],
                list(distillation.at_student_layers) or [ft.student_layer],
                weight=distillation.at_weight,
            ))
    return built
