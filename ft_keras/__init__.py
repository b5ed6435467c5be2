"""ft_keras: Factor Transfer knowledge distillation for Keras 3.

Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018.

Which parts run on which Keras backend (`KERAS_BACKEND`):

- Any backend (JAX, TensorFlow, PyTorch; tests/test_backends.py trains
  them on each): the core, which imports no TensorFlow. `ft_keras.layers`
  (`Paraphraser`, `Translator`), `ft_keras.losses`, `ft_keras.metrics`,
  `ft_keras.terms` (`Term`, `FactorTransfer`, `KnowledgeDistillation`,
  `AttentionTransfer`, `DecoupledKD`, `DIST`, `CRD`, `FitNets` and its
  `HintRegressor`, `ReviewKD` and its `AttentionBasedFusion`),
  `ft_keras.distiller` (`Distiller`), `ft_keras.pretraining`
  (`ParaphraserTrainer`, `HintTrainer`),
  `ft_keras.models` and `ft_keras.optim`. `import ft_keras` imports only
  these.
- TensorFlow only: the experiment runner and its parts, each imported on
  its own (`from ft_keras import data`): `ft_keras.data`,
  `ft_keras.prepare_data`, `ft_keras.distribute`, `ft_keras.config`,
  `ft_keras.term_configs` (the runner's terms in gin),
  `ft_keras.experiment`, `ft_keras.stages` (its table is plain data),
  `ft_keras.checkpoint`, `ft_keras.train`, `ft_keras.evaluate`,
  `ft_keras.cli` and `ft_keras.export` (tf.data pipelines, `tf.distribute`
  strategies, SavedModel / TFLite export).

The console: `import ft_keras` (first, before TensorFlow) quiets it as the
command-line tools do: TensorFlow's C++ log lines (`TF_CPP_MIN_LOG_LEVEL`
3 unless the environment sets a level, which wins), its start-up lines
and the TFLite converter's printout are hidden; ft_keras' lines, Keras'
progress and Python warnings show. `FT_KERAS_VERBOSE=1` in the environment
keeps TensorFlow's own console; `ft_keras.quiet_console(False)` turns the
quiet console off later (`ft_keras._console` says what each part does).

Fast CPU kernels: on a Linux x86 CPU with AVX2 but without AVX512-VNNI,
AVX-VNNI or AMX, where TensorFlow leaves its oneDNN kernels off, `import
ft_keras` before TensorFlow turns them on (`TF_ENABLE_ONEDNN_OPTS=1`) and
says so in one line; a `TF_ENABLE_ONEDNN_OPTS` set in the environment wins
(`ft_keras._onednn` says what it measured and what changes numerically).
"""

__version__ = "0.1.0"

import sys as _sys

from ft_keras import _console
from ft_keras import _cpu
from ft_keras import _onednn

# Before TensorFlow loads: the quiet console (ft_keras._console), also for
# the tools (`python -m ft_keras.<tool>`, while Python imports this package,
# whose absl `--verbosity` flag asks for TensorFlow's logs), and oneDNN's
# kernels where TensorFlow would leave them off (ft_keras._onednn).
_console.quiet_on_import(_sys.argv[1:] if _sys.argv[:1] == ["-m"] else ())
_onednn.enable_on_import(_cpu.read_cpuinfo()[1])
with _console.tensorflow_import_quieted():
    import keras  # noqa: F401  (loads the backend, TensorFlow)

from ft_keras import losses  # noqa: E402
from ft_keras import metrics  # noqa: E402
from ft_keras import optim  # registers EpochSchedule, used by saved models
from ft_keras._console import quiet_console
from ft_keras import terms  # noqa: E402
from ft_keras.distiller import Distiller
from ft_keras.layers import Paraphraser
from ft_keras.layers import Translator
from ft_keras.losses import FactorTransferLoss
from ft_keras.pretraining import ParaphraserTrainer
from ft_keras.terms import AttentionBasedFusion
from ft_keras.terms import AttentionTransfer
from ft_keras.terms import CRD
from ft_keras.terms import DIST
from ft_keras.terms import DecoupledKD
from ft_keras.terms import FactorTransfer
from ft_keras.terms import FitNets
from ft_keras.terms import HintRegressor
from ft_keras.terms import KnowledgeDistillation
from ft_keras.terms import ReviewKD
from ft_keras.terms import Term

__all__ = [
    "AttentionBasedFusion",
    "AttentionTransfer",
    "CRD",
    "DIST",
    "DecoupledKD",
    "Distiller",
    "FactorTransfer",
    "FactorTransferLoss",
    "FitNets",
    "HintRegressor",
    "KnowledgeDistillation",
    "Paraphraser",
    "ParaphraserTrainer",
    "ReviewKD",
    "Term",
    "Translator",
    "losses",
    "metrics",
    "optim",
    "quiet_console",
    "terms",
]
