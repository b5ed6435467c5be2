"""`distillation.method` -> terms (ft_keras.methods): each method is the
list of terms its name says, with the weights it defaults to."""

import keras
import numpy as np
import pytest

import ft_keras
from ft_keras import config
from ft_keras import methods
from ft_keras import models


def build(method, **bindings):
    distillation = config.DistillationConfig(method, **bindings)
    ft = config.FactorTransferConfig(teacher_layer="stage3",
                                     student_layer="stage3", beta=250.0)
    paraphraser = translator = None
    if methods.uses_factor_transfer(method):
        paraphraser, translator = ft_keras.Paraphraser(0.5), ft_keras.Translator(64)
    return distillation, methods.terms(distillation, ft, paraphraser, translator)


@pytest.mark.parametrize("method, expected", [
    ("ft", [("FactorTransfer", 250.0)]),
    ("ft+kd", [("FactorTransfer", 250.0), ("KnowledgeDistillation", 1.0)]),
    ("kd", [("KnowledgeDistillation", 0.9)]),
    ("at", [("AttentionTransfer", 1000.0)]),
])
def test_each_method_is_its_list_of_terms(method, expected):
    distillation, terms = build(method)
    assert [(type(t).__name__, t.weight) for t in terms] == expected
    assert distillation.ce_weight == (0.1 if method == "kd" else 1.0)
    assert distillation.factor_transfer == method.startswith("ft")
    assert methods.label(method) == method.upper()


def test_set_weights_and_taps_reach_the_terms():
    _, (kd,) = build("kd", kd_weight=0.3, temperature=2.0, ce_weight=0.7)
    assert (kd.weight, kd.temperature) == (0.3, 2.0)
    _, (at,) = build("at")  # the FT taps by default
    assert (at.teacher_layers, at.student_layers) == (["stage3"], ["stage3"])
    _, (at,) = build("at", at_teacher_layers=("stage2", "stage3"),
                     at_student_layers=("stage2", "stage3"), at_weight=50.0)
    assert (at.teacher_layers, at.weight) == (["stage2", "stage3"], 50.0)
    _, (ft, kd) = build("ft+kd", kd_weight=0.0)
    assert kd.weight == 0.0


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_a_methods_distiller_logs_one_loss_per_term(method):
    distillation, terms = build(method)
    kwargs = dict(num_classes=10, input_shape=(8, 8, 1))
    distiller = ft_keras.Distiller(
        models.get("wrn16_2", **kwargs), models.get("wrn10_1", **kwargs),
        terms, student_loss_weight=distillation.ce_weight)
    distiller.compile(keras.optimizers.SGD(0.0))
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    result = distiller.evaluate(x, np.arange(4), verbose=0, return_dict=True)
    names = {"ft": "ft_loss", "kd": "kd_loss", "at": "at_loss"}
    assert set(result) == {"loss", "ce_loss"} | {
        names[t] for t in methods.METHODS[method]}
    expected = distillation.ce_weight * result["ce_loss"] + sum(
        t.weight * result[t.loss_name] for t in terms)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"\('ft', 'ft\+kd', 'kd', 'at'\).*"
                                         r"method='fitnet'"):
        config.DistillationConfig("fitnet")
