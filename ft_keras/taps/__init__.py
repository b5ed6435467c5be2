"""Feature taps: which layers of a network to tap, and tapping them in one
forward pass.

- Which layers (`discovery`): `feature_taps`, `feature_maps`, and for a
  teacher and a student `fitting_pairs` and `paper_pair`.
- Tapping them (`features`): `feature_extractor`, a functional model of a
  network's outputs at those layers; `frozen_features` for a frozen
  teacher; `has_taps` says whether a model can be tapped.
- `python -m ft_keras.taps` prints a network's taps, or a pair's
  (`listing`, which needs the runner's config and is not imported here).
"""

from ft_keras.taps.discovery import LAST_CONV
from ft_keras.taps.discovery import feature_maps
from ft_keras.taps.discovery import feature_taps
from ft_keras.taps.discovery import fitting_pairs
from ft_keras.taps.discovery import last_stage
from ft_keras.taps.discovery import paper_pair
from ft_keras.taps.discovery import taps_with_shapes
from ft_keras.taps.features import feature_extractor
from ft_keras.taps.features import frozen_features
from ft_keras.taps.features import has_taps
from ft_keras.taps.features import why_not_tappable

__all__ = [
    "LAST_CONV",
    "feature_extractor",
    "feature_maps",
    "feature_taps",
    "fitting_pairs",
    "frozen_features",
    "has_taps",
    "last_stage",
    "paper_pair",
    "taps_with_shapes",
    "why_not_tappable",
]
