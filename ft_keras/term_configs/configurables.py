"""The gin configurable of every built-in term (`@knowledge_distillation()`
in `distillation.terms`, ...)."""

import gin

from ft_keras import terms as ft_terms
from ft_keras.term_configs.crd_config import CRDConfig
from ft_keras.term_configs.pretraining_terms import FactorTransferConfig
from ft_keras.term_configs.pretraining_terms import FitNetsHintConfig
from ft_keras.term_configs.registration import GIN_MODULE
from ft_keras.term_configs.registration import TermConfig
from ft_keras.term_configs.registration import register

factor_transfer = gin.external_configurable(
    FactorTransferConfig, "factor_transfer", module=GIN_MODULE)
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


def is_term_config(value):
    """Whether `value` is what a term's configurable returns."""
    return isinstance(value, (TermConfig, FactorTransferConfig))
