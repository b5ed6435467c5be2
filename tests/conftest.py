"""Test-wide TensorFlow setup.

Runs before any test imports TensorFlow's runtime: ft_keras is imported
first, and the CPU is split into two logical devices so that
`tf.distribute.MirroredStrategy` tests have two replicas on a machine
without GPUs.
"""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Under pytest-xdist each worker gets its own temporary directory, so that a
# test counting what the runner leaves in it sees only its own worker's.
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    _tmp = os.path.join(tempfile.gettempdir(), f"ft_keras_tests_{_worker}")
    os.makedirs(_tmp, exist_ok=True)
    os.environ["TMPDIR"] = _tmp
    tempfile.tempdir = _tmp
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# First, as users get it: on a CPU where TensorFlow leaves oneDNN's kernels
# off (AVX2 without AVX512-VNNI), `import ft_keras` turns them on before
# TensorFlow loads (ft_keras._onednn); TF_ENABLE_ONEDNN_OPTS=0 in the
# environment keeps Eigen's kernels, as TensorFlow's default there.
import ft_keras  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import pathlib  # noqa: E402

import gin  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_gin(monkeypatch):
    """Runs a test from the repository root, where the configs' includes
    resolve, with gin's global config empty; clears gin and Keras' session
    after it. A module whose every test needs it says
    `pytestmark = pytest.mark.usefixtures("clean_gin")`."""
    monkeypatch.chdir(REPO)
    gin.clear_config()
    yield
    gin.clear_config()
    keras.backend.clear_session()


@pytest.fixture
def parsed_flags():
    """Defines the command line's flags on a fresh `FlagValues` and parses
    `argv`, so that `ft_keras.cli.run` runs a command in this process."""
    from absl import flags

    from ft_keras import cli

    saved = cli.FLAGS

    def parse(*argv):
        cli.FLAGS = flags.FlagValues()
        cli.define_flags(cli.FLAGS)
        cli.FLAGS(["prog", *argv])
        return cli.FLAGS

    yield parse
    cli.FLAGS = saved
    gin.clear_config()
