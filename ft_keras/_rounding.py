"""Whether this machine's 16-bit matrix products round each output once.

A convolution kernel in bfloat16 or float16 sums its products in float32
and rounds each output once. A 16-bit `matmul` does the same only where its
kernel does: TensorFlow's oneDNN kernels on a CPU with AVX-512 do, but its
Eigen kernels (TensorFlow's default on a CPU without AVX512-VNNI, or with
`TF_ENABLE_ONEDNN_OPTS=0`) round partial sums in bfloat16, putting about half
of a 3x3x64 convolution's outputs beyond half a step. No CPU flag says which
kernel runs, so `matmul_rounds_once` measures it: one product of fixed random
operands, long enough that partial-sum rounding shows, against its float32
result. The patch convolutions (`ft_keras.layers.PatchConv2D`) take the
16-bit product where it rounds once and a float32 product otherwise.

Example:

>>> matmul_rounds_once("float32")
True
>>> matmul_rounds_once("bfloat16") in (True, False)
True
"""

import contextlib

import keras
import numpy as np

# The probe's product: (ROWS, DEPTH) @ (DEPTH, COLUMNS). The patch layers'
# products are at least 9 * 1,024 deep; 1,024 already shows partial sums.
ROWS, DEPTH, COLUMNS = 16, 1024, 16
_ANSWERS = {}


def matmul_rounds_once(dtype):
    """True when `keras.ops.matmul` on two `dtype` operands gives, on every
    output of the probe, the float32 result rounded once to `dtype` (within
    half a step of it), on this backend and machine. Measured once per
    backend and dtype, eagerly, even when called while a function traces."""
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype in ("float32", "float64"):
        return True
    key = (keras.backend.backend(), dtype)
    if key not in _ANSWERS:
        with _eager():
            _ANSWERS[key] = _measure(dtype)
    return _ANSWERS[key]


def _measure(dtype):
    rng = np.random.default_rng(0)
    a = keras.ops.cast(rng.normal(size=(ROWS, DEPTH)).astype("float32"), dtype)
    b = keras.ops.cast(rng.normal(size=(DEPTH, COLUMNS)).astype("float32"),
                       dtype)
    exact = _numpy(a) @ _numpy(b)
    got = _numpy(keras.ops.matmul(a, b))
    return bool(np.all(np.abs(got - exact) <= half_step(exact, dtype) * 1.01))


def _numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")).astype(
        "float64")


def half_step(values, dtype):
    """Half the spacing of `dtype` numbers at each of `values` (float
    arrays): the largest error of a correctly rounded result.

    >>> float(half_step(np.array([1.0]), "bfloat16")[0])
    0.00390625
    """
    mantissa_bits = {"bfloat16": 7, "float16": 10, "float32": 23}[
        keras.backend.standardize_dtype(dtype)]
    exponent = np.floor(np.log2(np.abs(values) + 1e-30))
    return 2.0 ** (exponent - mantissa_bits - 1)


def _eager():
    """Eager execution here, also inside a TensorFlow function's trace."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()
