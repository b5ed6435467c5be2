"""How exact the patch convolutions are in 16 bits, beside Keras' own.

For each layer pair (`keras.layers.Conv2D` / `ft_keras.layers.PatchConv2D`,
and the transposed pair), on a 4x4x64 map with 32 filters of 3x3 in
bfloat16 and in float16 (the same inputs and weights for both layers),
prints the share of outputs beyond half a 16-bit step of the float32 result
of those same 16-bit values, and the largest error in half steps (outputs
that cancel to within 1e-5 of zero, where float32's own summation error
shows, are compared to 1e-5). A correctly rounded output is within one half
step. Also prints what `ft_keras._rounding.matmul_rounds_once` measured,
which decides the patch layers' path.

    python benchmarks/patch_rounding.py
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/patch_rounding.py   # Eigen's kernels
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ft_keras  # noqa: E402,F401  (first: the console, oneDNN)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ft_keras import _onednn  # noqa: E402
from ft_keras import _rounding  # noqa: E402
from ft_keras import layers as ft_layers  # noqa: E402

FORMS = ("Conv2D", "Conv2DTranspose")
DTYPES = ("bfloat16", "float16")


def errors(form, dtype, patch):
    """Each output's error in half steps, for Keras' layer (`patch` False)
    or the patch layer, with the weights of one seeded patch layer."""
    x = tf.cast(tf.random.stateless_normal((4, 4, 4, 64), (5, 6)), dtype)
    seeded = getattr(ft_layers, "Patch" + form)(32, 3, padding="same",
                                               dtype=dtype)
    keras.utils.set_random_seed(0)
    seeded.build(x.shape)
    weights = seeded.get_weights()
    cls = getattr(ft_layers, "Patch" + form) if patch else getattr(
        keras.layers, form)
    layer = cls(32, 3, padding="same", dtype=dtype)
    exact = getattr(keras.layers, form)(32, 3, padding="same", dtype="float32")
    layer.build(x.shape)
    exact.build(x.shape)
    layer.set_weights(weights)
    exact.set_weights([tf.cast(tf.cast(w, dtype), "float32") for w in weights])
    reference = exact(tf.cast(x, "float32")).numpy().astype("float64")
    error = np.abs(tf.cast(layer(x), "float32").numpy() - reference)
    return np.maximum(error - 1e-5, 0) / _rounding.half_step(reference, dtype)


def main():
    print(f"oneDNN kernels: {_onednn.enabled()}; TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")
    for dtype in DTYPES:
        print(f"16-bit matmul rounds once ({dtype}): "
              f"{_rounding.matmul_rounds_once(dtype)}")
    print()
    print("| layer | dtype | outputs beyond half a step | largest error "
          "(half steps) |")
    print("|---|---|---|---|")
    for form in FORMS:
        for dtype in DTYPES:
            for patch in (False, True):
                e = errors(form, dtype, patch)
                name = ("ft_keras.layers.Patch" if patch
                        else "keras.layers.") + form
                print(f"| `{name}` | {dtype} | {np.mean(e > 1.01):.0%} "
                      f"| {e.max():.2f} |")


if __name__ == "__main__":
    main()
