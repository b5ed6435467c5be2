"""Test-wide TensorFlow setup.

Runs before any test imports TensorFlow's runtime: the CPU is split into two
logical devices so that `tf.distribute.MirroredStrategy` tests have two
replicas on a machine without GPUs.
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

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)
