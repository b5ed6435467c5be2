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
- `DecoupledKD`: Zhao et al.'s DKD on the logits, `alpha * TCKD + beta *
  NCKD` with mdistiller's warm-up; it needs the labels and the epoch.
- `DIST`: Huang et al.'s inter- and intra-class relations of the softened
  predictions, by Pearson correlation (one value per batch).
- `FitNets`: Romero et al.'s hint, the mean squared difference of the
  teacher's map and a trained `HintRegressor` of the student's.
- `CRD`: Tian et al.'s contrastive representation distillation,
  RepDistiller's: trained embedding heads of the penultimate features
  against memory banks of every training example, negatives from the
  other classes; it needs each example's index (`needs_indices`).
- `ReviewKD`: Chen et al.'s knowledge review, mdistiller's: trained
  `AttentionBasedFusion` connectors fuse the student's maps from the
  deepest up, matched to the teacher's by a pyramid of mean squared
  differences, with a warm-up; it needs the epoch.

One module per term (`ft_keras.terms.factor_transfer`, ...); this package
exports them all. FT, KD, AT, FT+KD and any new combination are lists of
terms. A term of your own is a subclass that overrides `compute_loss` (and
`call` when it has connectors; `needs_labels` / `needs_epoch` when its loss
reads the labels / the epoch, see `Term`):

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

from ft_keras.terms.attention_transfer import AttentionTransfer
from ft_keras.terms.base import Term
from ft_keras.terms.crd import CRD
from ft_keras.terms.decoupled_kd import DecoupledKD
from ft_keras.terms.dist import DIST
from ft_keras.terms.factor_transfer import FactorTransfer
from ft_keras.terms.factor_transfer import check_factor_shapes
from ft_keras.terms.fitnets import FitNets
from ft_keras.terms.fitnets import HintRegressor
from ft_keras.terms.knowledge_distillation import KnowledgeDistillation
from ft_keras.terms.review_kd import AttentionBasedFusion
from ft_keras.terms.review_kd import ReviewKD

__all__ = [
    "AttentionBasedFusion",
    "AttentionTransfer",
    "CRD",
    "DIST",
    "DecoupledKD",
    "FactorTransfer",
    "FitNets",
    "HintRegressor",
    "KnowledgeDistillation",
    "ReviewKD",
    "Term",
    "check_factor_shapes",
]
