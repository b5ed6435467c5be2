"""The connectors' 3x3 convolutions on small maps: Keras' convolution
layers (oneDNN's kernels) against ft_keras' patch layers (matrix
products).

The paraphraser and translator run 3x3 convolutions on the tapped map,
which for the shipped pairs is small (4x4x2048 for ResNet-50 at CIFAR
shapes). This times each pair's largest connector convolutions alone,
forward and forward + backward (gradients of the input and the variables,
as the connectors train), in float32 and bfloat16: `keras.layers.Conv2D`
against `ft_keras.layers.PatchConv2D`, and the paraphraser decoder's
`keras.layers.Conv2DTranspose` against `PatchConv2DTranspose`, with the
same weights, and prints the largest difference of the two outputs.

    python benchmarks/small_map_conv.py
    python benchmarks/small_map_conv.py --repeats 5 --steps 10
    python benchmarks/small_map_conv.py --pairs wrn16_2:wrn10_1

Timings are medians of `--repeats` blocks of `--steps` calls after two
warm-up calls, all in one process (the ratio is what matters).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (pair, connector, layer, batch, map side, input channels, output
# channels): each pair's widest connector convolutions at the batch the
# cost curve measured. "conv" is a paraphraser encoder or translator
# convolution, "transpose" a paraphraser decoder's.
SHAPES = [
    ("resnet56:resnet20", "paraphraser/translator", "conv", 128, 8, 64, 64),
    ("resnet56:resnet20", "paraphraser", "transpose", 128, 8, 64, 64),
    ("wrn40_2:wrn16_2", "paraphraser/translator", "conv", 128, 8, 128, 128),
    ("wrn40_2:wrn16_2", "paraphraser", "transpose", 128, 8, 128, 128),
    ("resnet50:resnet18", "paraphraser", "conv", 32, 4, 2048, 2048),
    ("resnet50:resnet18", "paraphraser", "transpose", 32, 4, 2048, 2048),
    ("resnet50:resnet18", "paraphraser", "transpose", 32, 4, 1024, 1024),
    ("resnet50:resnet18", "translator", "conv", 32, 4, 512, 512),
    ("imagenet_resnet34:imagenet_resnet18", "paraphraser/translator", "conv",
     32, 7, 512, 512),
    ("imagenet_resnet34:imagenet_resnet18", "paraphraser", "transpose", 32, 7,
     512, 512),
    # The Fashion-MNIST table's pair (28x28 images, batch 128): the teacher's
    # 7x7x128 tap.
    ("wrn16_2:wrn10_1", "paraphraser", "conv", 128, 7, 128, 128),
    ("wrn16_2:wrn10_1", "paraphraser", "transpose", 128, 7, 128, 128),
]


def layers(kind, channels_in, channels_out, dtype, seed=0):
    """`(keras_layer, patch_layer)`: one 3x3 'same' convolution ("conv") or
    transposed convolution ("transpose") in both forms, same weights."""
    import keras

    from ft_keras import layers as ft_layers

    base, patch = {
        "conv": (keras.layers.Conv2D, ft_layers.PatchConv2D),
        "transpose": (keras.layers.Conv2DTranspose,
                      ft_layers.PatchConv2DTranspose),
    }[kind]
    pair = [cls(channels_out, 3, padding="same", dtype=dtype,
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=0.01, seed=seed))
            for cls in (base, patch)]
    for layer in pair:
        layer.build((None, None, None, channels_in))
    pair[1].set_weights(pair[0].get_weights())
    return tuple(pair)


def with_gradients(tf, layer):
    """`layer` with the gradients of its input and variables."""
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32))
        return tape.gradient(loss, [x] + layer.trainable_variables)

    return step


def seconds(tf, fn, x, steps, repeats):
    fn = tf.function(fn)
    for _ in range(2):
        tf.nest.map_structure(lambda t: t.numpy(), fn(x))
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn(x)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        blocks.append((time.perf_counter() - start) / steps)
    return statistics.median(blocks)


def row(tf, shape, dtype_name, steps, repeats):
    pair, connector, kind, batch, side, cin, cout = shape
    x = tf.cast(tf.random.stateless_normal((batch, side, side, cin), (0, 2)),
                dtype_name)
    base, patch = layers(kind, cin, cout, dtype_name)
    difference = float(tf.reduce_max(tf.abs(
        tf.cast(base(x), tf.float32) - tf.cast(patch(x), tf.float32))))
    times = {
        "forward": [seconds(tf, f, x, steps, repeats) for f in (base, patch)],
        "forward + backward": [
            seconds(tf, with_gradients(tf, f), x, steps, repeats)
            for f in (base, patch)],
    }
    macs = batch * side * side * 9 * cin * cout
    cells = []
    for base_s, patch_s in times.values():
        cells += [f"{1000 * base_s:.1f}", f"{1000 * patch_s:.1f}",
                  f"{base_s / patch_s:.2f}"]
    return (f"| {pair} | {connector} | {type(base).__name__} | {batch}x{side}x"
            f"{side}x{cin} -> {cout} | {dtype_name} | "
            f"{macs / times['forward'][0] / 1e9:.0f} | "
            + " | ".join(cells) + f" | {difference:.2g} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", nargs="+", default=None,
                        help="only these pairs' rows (default: every pair)")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be at least 1, got "
                     f"{args.steps} and {args.repeats}.")
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; median "
          f"of {args.repeats} blocks of {args.steps} calls")
    print("| pair | connector | Keras layer | input -> channels | dtype | "
          "Keras GMAC/s | forward: Keras ms | patch ms | Keras / patch | "
          "fwd + bwd: Keras ms | patch ms | Keras / patch | "
          "largest difference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        if args.pairs and shape[0] not in args.pairs:
            continue
        for dtype_name in ("float32", "bfloat16"):
            print(row(tf, shape, dtype_name, args.steps, args.repeats),
                  flush=True)


if __name__ == "__main__":
    main()
