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

The package's modules: `registration` (`TermConfig`, `register`,
`label`), `pretraining_terms` (`FactorTransferConfig`,
`FitNetsHintConfig`), `crd_config` (`CRDConfig`) and `configurables` (the
built-in terms' configurables).
"""

from ft_keras.term_configs.configurables import attention_transfer
from ft_keras.term_configs.configurables import crd
from ft_keras.term_configs.configurables import decoupled_kd
from ft_keras.term_configs.configurables import dist
from ft_keras.term_configs.configurables import factor_transfer
from ft_keras.term_configs.configurables import fitnets
from ft_keras.term_configs.configurables import fitnets_hint
from ft_keras.term_configs.configurables import is_term_config
from ft_keras.term_configs.configurables import knowledge_distillation
from ft_keras.term_configs.configurables import review_kd
from ft_keras.term_configs.crd_config import CRDConfig
from ft_keras.term_configs.pretraining_terms import FactorTransferConfig
from ft_keras.term_configs.pretraining_terms import FitNetsHintConfig
from ft_keras.term_configs.registration import LABELS
from ft_keras.term_configs.registration import TermConfig
from ft_keras.term_configs.registration import TrainingSet
from ft_keras.term_configs.registration import label
from ft_keras.term_configs.registration import register
