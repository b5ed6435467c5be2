"""ft_keras: Factor Transfer knowledge distillation for Keras 3.

Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018.

Which parts run on which Keras backend (`KERAS_BACKEND`):

- Any backend (JAX, TensorFlow, PyTorch; tests/test_backends.py trains
  them on each): the core, which imports no TensorFlow. `ft_keras.layers`
  (`Paraphraser`, `Translator`), `ft_keras.losses`, `ft_keras.distiller`
  (`ParaphraserTrainer`, `Distiller`, `BaselineDistiller`),
  `ft_keras.models` and `ft_keras.optim`. `import ft_keras` imports only
  these.
- TensorFlow only: the experiment runner and its parts, each imported on
  its own (`from ft_keras import data`): `ft_keras.data`,
  `ft_keras.prepare_data`, `ft_keras.distribute`, `ft_keras.config`,
  `ft_keras.experiment`, `ft_keras.train`, `ft_keras.evaluate`,
  `ft_keras.cli` and `ft_keras.export` (tf.data pipelines, `tf.distribute`
  strategies, SavedModel / TFLite export).
"""

__version__ = "0.1.0"

import sys as _sys

if _sys.argv[:1] == ["-m"]:
    # `python -m ft_keras.<tool>`, while Python imports this package: quiet
    # TensorFlow's C++ logging before TensorFlow loads (ft_keras._console).
    from ft_keras import _console

    _console.quiet_before_tensorflow(_sys.argv[1:])
    with _console.tensorflow_import_quieted():
        import keras  # noqa: F401  (loads the backend, TensorFlow)

from ft_keras import losses  # noqa: E402
from ft_keras import optim  # registers EpochSchedule, used by saved models
from ft_keras.distiller import BaselineDistiller
from ft_keras.distiller import Distiller
from ft_keras.distiller import ParaphraserTrainer
from ft_keras.layers import Paraphraser
from ft_keras.layers import Translator
from ft_keras.losses import FactorTransferLoss

__all__ = [
    "BaselineDistiller",
    "Distiller",
    "FactorTransferLoss",
    "Paraphraser",
    "ParaphraserTrainer",
    "Translator",
    "losses",
    "optim",
]
