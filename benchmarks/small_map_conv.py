"""The connectors' 3x3 convolutions on small maps: oneDNN's convolution
against the same convolution as one matrix product (im2col + matmul).

The paraphraser and translator run 3x3 convolutions on the tapped map,
which for the shipped pairs is small (4x4x2048 for ResNet-50 at CIFAR
shapes). `cost_curve.py` found the ResNet-50 -> ResNet-18 step far slower
than its multiply-accumulates explain; this times each pair's largest
connector convolution alone, forward and forward + backward (gradients of
the input and the kernel, as the translator trains), in float32 and
bfloat16, as `tf.nn.conv2d` and as `tf.image.extract_patches` + `tf.matmul`,
and prints the largest difference of the two outputs.

    python benchmarks/small_map_conv.py
    python benchmarks/small_map_conv.py --repeats 5 --steps 10

Timings are medians of `--repeats` blocks of `--steps` calls after two
warm-up calls, all in one process (the ratio is what matters).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (pair, connector, batch, map side, input channels, output channels): the
# first convolution of each pair's paraphraser encoder and translator at
# the batch the cost curve measured.
SHAPES = [
    ("resnet56:resnet20", "paraphraser/translator", 128, 8, 64, 64),
    ("wrn40_2:wrn16_2", "paraphraser/translator", 128, 8, 128, 128),
    ("resnet50:resnet18", "paraphraser", 32, 4, 2048, 2048),
    ("resnet50:resnet18", "translator", 32, 4, 512, 512),
    ("imagenet_resnet34:imagenet_resnet18", "paraphraser/translator", 32, 7,
     512, 512),
]


def functions(tf, channels_in, channels_out, dtype, seed=0):
    """`(conv, im2col, kernel)`: the two forms of one 3x3 'same' conv."""
    kernel = tf.Variable(tf.random.stateless_normal(
        (3, 3, channels_in, channels_out), (seed, 1)) * 0.01)

    def conv(x):
        return tf.nn.conv2d(x, tf.cast(kernel, dtype), 1, "SAME")

    def im2col(x):
        patches = tf.image.extract_patches(
            x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
        shape = tf.shape(x)
        flat = tf.reshape(patches, (-1, 9 * channels_in))
        out = tf.matmul(flat, tf.reshape(tf.cast(kernel, dtype),
                                         (9 * channels_in, channels_out)))
        return tf.reshape(out, (shape[0], shape[1], shape[2], channels_out))

    return conv, im2col, kernel


def with_gradients(tf, fn, kernel):
    """`fn` with the gradients of its input and kernel, as a trained layer."""
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(fn(x), tf.float32))
        return tape.gradient(loss, [x, kernel])

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
    pair, connector, batch, side, cin, cout = shape
    dtype = getattr(tf, dtype_name)
    x = tf.cast(tf.random.stateless_normal((batch, side, side, cin), (0, 2)),
                dtype)
    conv, im2col, kernel = functions(tf, cin, cout, dtype)
    difference = float(tf.reduce_max(tf.abs(
        tf.cast(conv(x), tf.float32) - tf.cast(im2col(x), tf.float32))))
    times = {
        "forward": [seconds(tf, f, x, steps, repeats) for f in (conv, im2col)],
        "forward + backward": [
            seconds(tf, with_gradients(tf, f, kernel), x, steps, repeats)
            for f in (conv, im2col)],
    }
    macs = batch * side * side * 9 * cin * cout
    cells = []
    for conv_s, im2col_s in times.values():
        cells += [f"{1000 * conv_s:.1f}", f"{1000 * im2col_s:.1f}",
                  f"{conv_s / im2col_s:.2f}"]
    return (f"| {pair} | {connector} | {batch}x{side}x{side}x{cin} -> {cout} | "
            f"{dtype_name} | {macs / times['forward'][0] / 1e9:.0f} | "
            + " | ".join(cells) + f" | {difference:.2g} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be at least 1, got "
                     f"{args.steps} and {args.repeats}.")
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; median "
          f"of {args.repeats} blocks of {args.steps} calls")
    print("| pair | connector | input -> channels | dtype | conv GMAC/s | "
          "forward: conv ms | im2col ms | conv / im2col | fwd + bwd: conv ms "
          "| im2col ms | conv / im2col | largest difference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for dtype_name in ("float32", "bfloat16"):
            print(row(tf, shape, dtype_name, args.steps, args.repeats),
                  flush=True)


if __name__ == "__main__":
    main()
