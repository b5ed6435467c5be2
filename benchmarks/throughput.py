"""What Factor Transfer costs: images/second of each step, and the overhead.

For CIFAR shapes (32x32x3, 10 classes) and a batch of 128, measures
(a) the student's plain train step, (b) the teacher's inference step (its
batch normalization folded into its convolutions, as the distillers run a
frozen teacher: `ft_keras.models.fold_batch_norm`),
(c) the paraphraser pre-training step and (d) the Factor Transfer
distillation step, then prints the overhead ratio

    time(d) / (time(a) + time(b))

whose ideal is 1.0: the connectors are small, and a distillation step is one
teacher inference plus one student train step. Each step kind runs in a
fresh subprocess, so its peak memory (max RSS) is its own; timings exclude
warm-up (tracing) and are the median of `--repeats` blocks of `--steps`
steps. Train steps are timed between batch ends inside one `fit` call
(`_timing.py`), so dataset iterator start and deletion are not counted.

    python benchmarks/throughput.py                       # both pairs
    python benchmarks/throughput.py --pairs resnet56:resnet20 --steps 10
    python benchmarks/throughput.py --pairs resnet56:resnet20 --rounds 3
                                    # kinds alternate; median of the rounds
    python benchmarks/throughput.py --mixed_precision     # float16 compute
    python benchmarks/throughput.py --mixed_precision mixed_bfloat16
    python benchmarks/throughput.py --mixed_precision onednn_bfloat16  # grappler's
    python benchmarks/throughput.py --xla                 # jit_compile=True
    python benchmarks/throughput.py --profile /tmp/prof   # TF profile of (d),
                                                          # time per part
    python benchmarks/throughput.py --vs_pytorch --rounds 3
    python benchmarks/throughput.py --vs_pytorch --precisions float32

`--vs_pytorch` times (d), ResNet-56 -> ResNet-20, beside the original
code's training step in PyTorch (`torch_peer.py`; torch from the
`benchmarks` extra), in float32 and in bfloat16 (Keras's `mixed_bfloat16`
policy; `torch.autocast` for PyTorch), in alternating rounds: each round
runs ft_keras and PyTorch one after the other in fresh subprocesses, so
both see the same machine state. It prints each round's images/second and
ratio, then the medians and spreads, and whether TensorFlow ran its oneDNN
kernels (each child imports ft_keras first, as a user's script does, so an
AVX2 CPU runs them: `ft_keras._onednn`; `TF_ENABLE_ONEDNN_OPTS=0` times
TensorFlow's Eigen kernels instead).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import _timing
import profile_summary

PROFILED_STEPS = 3
ONEDNN_BF16 = "onednn_bfloat16"
# --vs_pytorch's precisions: name -> Keras policy (None: float32).
PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}
KINDS = {
    "a": "student train step",
    "b": "teacher inference step",
    "c": "paraphraser pre-training step",
    "d": "Factor Transfer distillation step",
    # The parts of (d), to explain its cost:
    "b_tap": "teacher inference up to the tap",
    "e": "connectors (paraphraser enc. fwd + translator fwd/bwd)",
}
TAPS = {"resnet20": "stage3", "resnet56": "stage3", "resnet18": "stage4",
        "resnet50": "stage4", "resnet34": "stage4", "wrn40_2": "stage3",
        "wrn16_2": "stage3", "wrn10_1": "stage3", "wrn16_1": "stage3",
        "wrn40_1": "stage3", "imagenet_resnet18": "stage4",
        "imagenet_resnet34": "stage4", "imagenet_resnet50": "stage4"}


def measure(kind, teacher_name, student_name, batch, steps, repeats, xla,
            mixed_precision, profile, image_size=32, classes=10):
    """Runs in the subprocess: times one step kind, returns a dict.

    Inputs are `image_size` x `image_size` x 3 images and `classes` logits
    (CIFAR shapes by default). Under `KERAS_BACKEND=jax` every step is
    jit-compiled (`xla` is then always on) and (b), (b_tap) run
    `jax.jit(model.stateless_call)`; (e) and `profile` need TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import ft_keras  # first, as a user's script: oneDNN where TF leaves it off

    import keras
    import numpy as np
    import tensorflow as tf

    from ft_keras import _onednn
    from ft_keras import models

    if mixed_precision == ONEDNN_BF16:
        # TensorFlow's own alternative to a Keras policy: the float32 graph,
        # rewritten by grappler to run the ops oneDNN has in bfloat16.
        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": True})
    elif mixed_precision:
        keras.mixed_precision.set_global_policy(mixed_precision)
    jax = keras.config.backend() == "jax"
    xla = xla or jax  # JAX's fit without jit runs op by op: not a step.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (image_size, image_size, 3)
    x = tf.constant(rng.normal(size=(batch, *shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, classes, size=(batch,)).astype(np.int32))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)  # noqa: E731
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = models.get(teacher_name, model_name="teacher",
                         num_classes=classes, input_shape=shape)
    student = models.get(student_name, model_name="student",
                         num_classes=classes, input_shape=shape)
    t_tap, s_tap = TAPS[teacher_name], TAPS[student_name]

    if kind in ("b", "b_tap", "e"):
        to_tap = keras.Model(teacher.input, teacher.get_layer(t_tap).output)
        if kind == "e":
            paraphraser = ft_keras.Paraphraser(0.5)
            t_map = tf.constant(np.asarray(to_tap(x[:2])).repeat(batch // 2, 0))
            s_map = tf.constant(np.asarray(keras.Model(
                student.input, student.get_layer(s_tap).output)(x[:2])).repeat(
                    batch // 2, 0))
            translator = ft_keras.Translator(ft_keras.layers.factor_channels(
                t_map.shape[-1], 0.5))
            translator.build(s_map.shape)
            paraphraser.build(t_map.shape)
            optimizer = sgd()
            loss_fn = ft_keras.FactorTransferLoss()

            @tf.function(jit_compile=xla)
            def connector_step(t, s):
                factor = paraphraser(t, training=False)
                with tf.GradientTape() as tape:
                    loss = loss_fn(factor, translator(s, training=True))
                grads = tape.gradient(loss, translator.trainable_variables)
                optimizer.apply(grads, translator.trainable_variables)
                return loss

            forward = lambda images: connector_step(t_map, s_map)  # noqa: E731
        else:
            # The frozen teacher as the distillers run it: each BN folded
            # into the conv before it.
            network = models.fold_batch_norm(teacher if kind == "b" else to_tap)
            forward = _jax_forward(network) if jax else tf.function(
                lambda images: network(images, training=False),
                jit_compile=xla)
            if jax:  # on the device once, as a tf.constant is
                x = keras.ops.convert_to_tensor(np.asarray(x))

        def run(n):
            for _ in range(n):
                out = forward(x)
            np.asarray(out)  # waits for the (asynchronous) last step
    else:
        if kind == "a":
            model = student
            model.compile(sgd(), ce, jit_compile=xla)
        elif kind == "c":
            model = ft_keras.ParaphraserTrainer(
                teacher, ft_keras.Paraphraser(0.5), t_tap)
            model.compile(sgd(), jit_compile=xla)
        else:
            paraphraser = ft_keras.Paraphraser(0.5)
            channels = teacher.get_layer(t_tap).output.shape[-1]
            translator = ft_keras.Translator(
                ft_keras.layers.factor_channels(channels, 0.5))
            model = ft_keras.Distiller(teacher, student, terms=[
                ft_keras.FactorTransfer(paraphraser, translator, t_tap, s_tap)])
            model.compile(sgd(), jit_compile=xla)

        def run(n):
            model.fit(data, epochs=1, steps_per_epoch=n, verbose=0)

    if kind in ("a", "c", "d"):
        # Timed between batch ends inside one `fit`: the iterator's start
        # and (possibly stalling, see iterator_stall.py) deletion are not
        # part of a step.
        step, seconds = _timing.fit_step_seconds(model, data, steps, repeats)
    else:
        run(2)  # warm-up: tracing and first allocations.
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(steps)
            seconds.append((time.perf_counter() - start) / steps)
        step = statistics.median(seconds)
    if profile and kind == "d":
        tf.profiler.experimental.start(profile)
        run(PROFILED_STEPS)
        tf.profiler.experimental.stop()
    return {
        "kind": kind,
        "seconds_per_step": step,
        "images_per_second": batch / step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "all_seconds_per_step": seconds,
        "onednn": _onednn.enabled(),
    }


def _jax_forward(network):
    """`network(images, training=False)` as one jitted JAX function."""
    import jax

    call = jax.jit(lambda trainable, other, images: network.stateless_call(
        trainable, other, images, training=False)[0])
    trainable = [v.value for v in network.trainable_variables]
    other = [v.value for v in network.non_trainable_variables]
    return lambda images: call(trainable, other, images)


def connector_mac_counts(teacher_name, student_name, image_size=32,
                         classes=10):
    """Analytic MACs per image, as numbers: `teacher`, `student` (forward
    passes), `encoder` (the paraphraser's encoder forward on the teacher's
    tap), `translator` (its forward on the student's tap), and the taps'
    shapes `teacher_map`, `student_map` (height, width, channels)."""
    import ft_keras
    from ft_keras import models
    from ft_keras.export import count_macs

    shape = (image_size, image_size, 3)
    teacher = models.get(teacher_name, num_classes=classes, input_shape=shape)
    student = models.get(student_name, num_classes=classes, input_shape=shape)
    t_map = teacher.get_layer(TAPS[teacher_name]).output.shape
    s_map = student.get_layer(TAPS[student_name]).output.shape
    m = ft_keras.layers.factor_channels(t_map[-1], 0.5)

    def convs(h, w, channels):
        return sum(h * w * 9 * a * b for a, b in zip(channels, channels[1:]))

    return {
        "teacher": int(count_macs(teacher)),
        "student": int(count_macs(student)),
        "encoder": convs(t_map[1], t_map[2], [t_map[-1], t_map[-1], m, m]),
        "translator": convs(s_map[1], s_map[2], [s_map[-1], s_map[-1], m, m]),
        "teacher_map": list(t_map[1:]),
        "student_map": list(s_map[1:]),
    }


def connector_macs(teacher_name, student_name, image_size=32, classes=10):
    """Analytic MACs: networks, and the connectors on their taps."""
    c = connector_mac_counts(teacher_name, student_name, image_size, classes)
    g = lambda v: f"{v / 1e9:.3f}G"  # noqa: E731
    return (f"teacher fwd {g(c['teacher'])}, student fwd "
            f"{g(c['student'])}, paraphraser encoder fwd {g(c['encoder'])} "
            f"on {tuple(c['teacher_map'])}, translator fwd "
            f"{g(c['translator'])} on {tuple(c['student_map'])}")


def machine():
    """A summary line, then `machine_info:` and the JSON of what decides the
    speeds (`ft_keras.precision.machine_info`: CPU model and AMX /
    AVX512-BF16 / AVX2 flags, cores, threads, oneDNN settings, versions)."""
    import ft_keras  # noqa: F401  (first, as in the measuring children)
    import keras
    import tensorflow as tf

    from ft_keras import precision

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(gpus)} "
            f"GPUs, Python {platform.python_version()}, TensorFlow "
            f"{tf.__version__}, Keras {keras.__version__}, load average "
            f"{os.getloadavg()[0]:.2f}\n"
            f"machine_info: {json.dumps(precision.machine_info())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=None,
                        help="teacher:student pairs (default resnet56:resnet20 "
                             "and resnet50:resnet18; with --vs_pytorch the "
                             "first, default resnet56:resnet20, of the CIFAR "
                             "ResNets both codes have)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per repeat (default: 10 for small "
                             "networks, 3 for ResNet-18/50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla", action="store_true")
    parser.add_argument(
        "--mixed_precision", nargs="?", const="mixed_float16", default=None,
        choices=["mixed_float16", "mixed_bfloat16", ONEDNN_BF16],
        help="Keras dtype policy (mixed_float16 if given without a value); "
             "bfloat16 is the one CPUs with AVX512-BF16 or AMX compute fast. "
             f"{ONEDNN_BF16}: no policy (float32 variables and graph), but "
             "TensorFlow's grappler rewrites the graph to bfloat16 for oneDNN "
             "(auto_mixed_precision_onednn_bfloat16)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--image_size", type=int, default=32,
                        help="square input images (default 32: CIFAR)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--vs_pytorch", action="store_true",
                        help="time (d) beside the PyTorch peer, float32 and "
                             "bfloat16, in alternating rounds")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        choices=list(PRECISIONS),
                        help="with --vs_pytorch: the precisions to time "
                             "(default both)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds, each step kind in a fresh "
                             "process per round (default: 1, and 3 with "
                             "--vs_pytorch)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")

    if args._child:
        kind, teacher, student, steps = args._child.split(",")
        print(json.dumps(measure(kind, teacher, student, args.batch,
                                 int(steps), args.repeats, args.xla,
                                 args.mixed_precision, args.profile,
                                 args.image_size, args.classes)))
        return

    print(f"machine: {machine()}")
    if args.vs_pytorch:
        vs_pytorch(args)
        return
    print(f"batch {args.batch}, CIFAR shapes, median of {args.repeats} "
          f"repeats, xla={args.xla}, mixed_precision={args.mixed_precision}")
    for pair in args.pairs or ["resnet56:resnet20", "resnet50:resnet18"]:
        overhead(args, pair)


def overhead(args, pair):
    """Each step kind of one pair, in fresh subprocesses; with `--rounds` > 1
    the kinds alternate round by round, and the overhead ratio is the median
    of the rounds' ratios (a process's speed varies by a few percent from
    one start to the next, so one process per kind is a noisy ratio)."""
    teacher, student = pair.split(":")
    steps = args.steps or (3 if "resnet50" in pair else 10)
    rounds = args.rounds or 1
    results = {kind: [] for kind in KINDS}
    ratios = []
    for round_ in range(1, rounds + 1):
        for kind in KINDS:
            command = [sys.executable, __file__, "--batch", str(args.batch),
                       "--repeats", str(args.repeats),
                       "--_child", f"{kind},{teacher},{student},{steps}"]
            command += ["--xla"] * args.xla
            if args.mixed_precision:
                command += ["--mixed_precision", args.mixed_precision]
            if args.profile and round_ == 1:
                command += ["--profile", _profile_dir(args.profile, pair)]
            results[kind].append(_child_result(command))
        t = {k: r[-1]["seconds_per_step"] for k, r in results.items()}
        ratios.append(t["d"] / (t["a"] + t["b"]))
        if rounds > 1:
            print(f"  round {round_}: " + ", ".join(
                f"({k}) {args.batch / s:.1f}" for k, s in t.items())
                + f" img/s, overhead ratio {ratios[-1]:.3f}", flush=True)
    print(f"\n{teacher} -> {student} ({steps} steps x {args.repeats}"
          + (f", median of {rounds} rounds" if rounds > 1 else "") + ")")
    t = {}
    for kind, name in KINDS.items():
        seconds = [r["seconds_per_step"] for r in results[kind]]
        t[kind] = statistics.median(seconds)
        spread = (f" [{args.batch / max(seconds):.1f} - "
                  f"{args.batch / min(seconds):.1f}]" if rounds > 1 else "")
        print(f"  ({kind}) {name:<34} {args.batch / t[kind]:8.1f} img/s"
              f"{spread}  {1000 * t[kind]:8.1f} ms/step  peak RSS "
              f"{max(r['peak_rss_mib'] for r in results[kind]):7.0f} MiB")
    per_round = (f"  (rounds: {' / '.join(f'{r:.3f}' for r in ratios)})"
                 if rounds > 1 else "")
    print(f"  overhead ratio time(d) / (time(a) + time(b)) = "
          f"{statistics.median(ratios):.3f}  (ideal 1.0, target <= 1.10)"
          f"{per_round}")
    parts = t["a"] + t["b_tap"] + t["e"]
    print(f"  (d) explained by its parts: (a) + (b_tap) + (e) = "
          f"{1000 * parts:.1f} ms of {1000 * t['d']:.1f} ms "
          f"({100 * parts / t['d']:.0f}%); the ratio if (d) cost just its "
          f"parts: ((a) + (b_tap) + (e)) / ((a) + (b)) = "
          f"{parts / (t['a'] + t['b']):.3f}")
    print(f"  multiply-accumulates per image: {connector_macs(teacher, student)}")
    if args.profile:
        print(f"  where the time of (d) goes ({PROFILED_STEPS} profiled steps):")
        profile_summary.summarize(_profile_dir(args.profile, pair),
                                  steps=PROFILED_STEPS)


def _child_result(command):
    """Runs a measuring subprocess; returns the dict it printed last."""
    out = subprocess.run(command, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _spread(values):
    return (f"{statistics.median(values):7.1f} "
            f"[{min(values):.1f} - {max(values):.1f}]")


def vs_pytorch(args):
    """Alternating rounds of ft_keras's (d) and the PyTorch peer's step."""
    teacher, student = (args.pairs or ["resnet56:resnet20"])[0].split(":")
    steps = args.steps or 10
    here = os.path.dirname(os.path.abspath(__file__))
    precisions = {p: policy for p, policy in PRECISIONS.items()
                  if p in args.precisions}
    ours = {p: [] for p in precisions}
    peer = {p: [] for p in precisions}
    rounds = args.rounds or 3
    onednn = set()
    print(f"FT step {teacher} -> {student}, batch {args.batch}, {steps} steps "
          f"x {args.repeats} blocks per measurement (median), "
          f"{rounds} alternating rounds")
    for round_ in range(1, rounds + 1):
        for precision, policy in precisions.items():
            command = [sys.executable, __file__, "--batch", str(args.batch),
                       "--repeats", str(args.repeats),
                       "--_child", f"d,{teacher},{student},{steps}"]
            if policy:
                command += ["--mixed_precision", policy]
            result = _child_result(command)
            ours[precision].append(result["images_per_second"])
            onednn.add(result.get("onednn"))
            peer[precision].append(_child_result([
                sys.executable, os.path.join(here, "torch_peer.py"),
                "--precision", precision, "--batch", str(args.batch),
                "--steps", str(steps), "--repeats", str(args.repeats),
                "--teacher", teacher, "--student", student])["images_per_second"])
            print(f"  round {round_} {precision:<8} ft_keras "
                  f"{ours[precision][-1]:7.1f} img/s, PyTorch "
                  f"{peer[precision][-1]:7.1f} img/s, ratio "
                  f"{ours[precision][-1] / peer[precision][-1]:.2f}",
                  flush=True)
    print("| step | ft_keras img/s, median [min - max] | PyTorch img/s | "
          "ratio per round | median ratio |")
    print("|---|---|---|---|---|")
    for precision in precisions:
        ratios = [a / b for a, b in zip(ours[precision], peer[precision])]
        print(f"| FT step, {precision} | {_spread(ours[precision])} | "
              f"{_spread(peer[precision])} | "
              f"{' / '.join(f'{r:.2f}' for r in ratios)} | "
              f"{statistics.median(ratios):.2f} |")
    print(f"ft_keras ran TensorFlow's oneDNN kernels: "
          f"{' / '.join(str(v) for v in sorted(onednn, key=str))}")
    if len(precisions) < 2:
        return ours, peer
    own = [b / f for b, f in zip(ours["bfloat16"], ours["float32"])]
    theirs = [b / f for b, f in zip(peer["bfloat16"], peer["float32"])]
    print(f"bfloat16 / float32, same round: ft_keras "
          f"{' / '.join(f'{r:.2f}' for r in own)} (median "
          f"{statistics.median(own):.2f}), PyTorch "
          f"{' / '.join(f'{r:.2f}' for r in theirs)} (median "
          f"{statistics.median(theirs):.2f})")
    return ours, peer


def _profile_dir(root, pair):
    return os.path.join(root, pair.replace(":", "-"))


if __name__ == "__main__":
    main()
