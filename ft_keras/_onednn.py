"""oneDNN, TensorFlow's fast CPU kernels, on where TensorFlow leaves it off.

TensorFlow's Linux x86 wheels run oneDNN's convolution and matrix kernels
by default only on a CPU with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX
(`DefaultOneDnnPolicy` in tensorflow/core/util/util.cc); on any other CPU
(AMD before Zen 4, Intel before Cascade Lake) they run Eigen's, and say
nothing. With oneDNN's AVX2 kernels (an AMD Zen 5 capped with
`ONEDNN_MAX_CPU_ISA=AVX2`, 2 cores) the Factor Transfer step (ResNet-56 ->
ResNet-20, batch 128, float32) ran 1.7x as fast as on Eigen's kernels, and
1.35x the PyTorch peer's step instead of 0.79x (benchmarks/README.md, "The
FT step on every CPU kind"). So `import ft_keras`, before TensorFlow loads, sets
`TF_ENABLE_ONEDNN_OPTS=1` on a Linux x86 CPU with AVX2 and FMA that
TensorFlow would leave on Eigen, and says so in one line; a value the
environment already sets always wins (`TF_ENABLE_ONEDNN_OPTS=0` keeps
Eigen's kernels). Where TensorFlow loaded first, it is too late: one line
says how to get the fast kernels.

What changes numerically: oneDNN sums a convolution's products in another
order than Eigen, so float32 results differ in their last bits (a run is
bit-identical again on the same machine and setting, not between the two);
bfloat16 products stay on Eigen on a CPU without AVX-512, where TensorFlow's
oneDNN has no bfloat16 kernels.

Example:

>>> decide({"avx2", "fma"}, environ={}, system="Linux", machine="x86_64")
'enable'
>>> decide({"avx2", "fma", "avx512_vnni"}, {}, "Linux", "x86_64") is None
True
>>> decide({"avx2", "fma"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, "Linux",
...        "x86_64") is None
True
"""

import os
import platform
import sys

FLAG = "TF_ENABLE_ONEDNN_OPTS"
# The flags of /proc/cpuinfo on which TensorFlow turns oneDNN on itself.
TENSORFLOW_DEFAULT_ON = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                         "amx_int8", "amx_bf16")
# What the measured gain needs (the CPU kind it was measured on).
NEEDED = ("avx2", "fma")
MESSAGE = (
    "[ft_keras] oneDNN: TensorFlow leaves its oneDNN CPU kernels off on this "
    "CPU (no AVX512-VNNI, AVX-VNNI or AMX); ft_keras turned them on ("
    "TF_ENABLE_ONEDNN_OPTS=1: 1.7x the Factor Transfer step's speed with "
    "AVX2 kernels). Set TF_ENABLE_ONEDNN_OPTS=0 to keep Eigen's kernels."
)
HINT = (
    "[ft_keras] oneDNN: TensorFlow loaded before ft_keras with its oneDNN "
    "CPU kernels off on this CPU; set TF_ENABLE_ONEDNN_OPTS=1 before "
    "TensorFlow loads (or import ft_keras first) for 1.7x the Factor "
    "Transfer step's speed with AVX2 kernels."
)


def decide(flags, environ, system, machine):
    """`'enable'` where ft_keras should turn oneDNN on: a Linux x86-64 CPU
    whose `flags` (a set of /proc/cpuinfo flags, None if unknown) have AVX2
    and FMA but none of `TENSORFLOW_DEFAULT_ON`, and an `environ` without
    `TF_ENABLE_ONEDNN_OPTS`; else None (TensorFlow's own choice stands)."""
    if FLAG in environ or flags is None:
        return None
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return None
    if any(flag in flags for flag in TENSORFLOW_DEFAULT_ON):
        return None
    if not all(flag in flags for flag in NEEDED):
        return None
    return "enable"


def expected(flags, environ, system, machine):
    """`(on, why)`: whether TensorFlow runs oneDNN's kernels in a process
    that imports ft_keras first, on a Linux x86-64 CPU with `flags`, and the
    reason in words (for benchmark headers).

    >>> expected({"avx2", "fma"}, {}, "Linux", "x86_64")
    (True, 'on: set by ft_keras (TensorFlow leaves it off on this CPU)')
    """
    value = environ.get(FLAG)
    if value is not None:
        on = value.strip().lower() in ("1", "true")
        return on, f"{'on' if on else 'off'}: {FLAG}={value} in the environment"
    if decide(flags, environ, system, machine) == "enable":
        return True, "on: set by ft_keras (TensorFlow leaves it off on this CPU)"
    if system == "Linux" and flags and any(
            flag in flags for flag in TENSORFLOW_DEFAULT_ON):
        return True, "on: TensorFlow's default on this CPU"
    return False, "off: TensorFlow's default on this CPU"


def enable_on_import(flags, stream=None):
    """What `import ft_keras` does, on a CPU with `flags` (`ft_keras._cpu`):
    where `decide` says so, sets `TF_ENABLE_ONEDNN_OPTS=1` before
    TensorFlow loads and writes `MESSAGE` to `stream` (standard error), or,
    with TensorFlow already loaded, writes `HINT` only. Returns what it did:
    `'enabled'`, `'hinted'` or None. (This module imports nothing of
    ft_keras, so benchmark headers load it without TensorFlow.)"""
    if decide(flags, os.environ, platform.system(), platform.machine()) is None:
        return None
    stream = sys.stderr if stream is None else stream
    if "tensorflow" in sys.modules:
        print(HINT, file=stream)
        return "hinted"
    os.environ[FLAG] = "1"
    print(MESSAGE, file=stream)
    return "enabled"


def enabled():
    """Whether the loaded TensorFlow runs oneDNN's kernels (its private
    `IsMklEnabled`, which tests/test_onednn.py checks); None before
    TensorFlow loads."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
