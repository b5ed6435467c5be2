"""Multi-worker scaling on this host: 1 process vs N workers (CPU).

Times the Factor Transfer distillation step (`ft_keras.Distiller.fit` with a `FactorTransfer` term) of
the quickstart's networks (WRN-16-2 teacher, WRN-10-1 student, digits 8x8,
`--batch` images per replica) in

1. one process, default strategy: 1 replica, global batch B;
2. N worker processes on 127.0.0.1 with a generated TF_CONFIG
   (`ft_keras.distribute.make_strategy`, MultiWorkerMirroredStrategy):
   N replicas, global batch N x B, each worker on its shard;

and prints steps/second (median step time over `--steps` steps after a
warm-up epoch that traces the step), the cost of the preemption check a
run with checkpoints makes after each step on several workers
(`ft_keras.distribute.any_worker`, median of 100 calls), and the
weak-scaling efficiency

    efficiency = images/s of N workers / (N x images/s of 1 process)
               = steps/s of N workers / steps/s of 1 process

(1.0 is perfect). The input is an infinite digits pipeline (fit with
`steps_per_epoch`), so the figure is the step itself, not the start of each
epoch (creating a distributed iterator costs ~0.5 s per epoch on this host,
noticeable only on tiny datasets such as digits). On one host the workers
share its cores, which one process already uses: this measures the cost of
the multi-worker machinery (gRPC all-reduce, contention), not a speed-up;
across machines each worker brings its own cores. `os.getloadavg()` is
printed beside the figures: other work on the machine lowers them.

    python benchmarks/multiworker.py
    python benchmarks/multiworker.py --workers 2 --batch 128 --steps 60
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    """Runs in each process: builds a Distiller and times its steps."""
    import _timing
    from ft_keras import distribute

    strategy = distribute.make_strategy("auto")
    import keras

    import ft_keras
    from ft_keras import data
    from ft_keras import models

    keras.utils.set_random_seed(0)
    replicas = strategy.num_replicas_in_sync
    dataset = data.build_dataset(
        "digits", "train", batch_size=args.batch * replicas, training=True,
        seed=0, deterministic=True, repeat=True)
    with distribute.scope(strategy):
        kwargs = dict(num_classes=10, input_shape=(8, 8, 1), weight_decay=5e-4)
        teacher = models.get("wrn16_2", model_name="teacher", **kwargs)
        student = models.get("wrn10_1", model_name="student", **kwargs)
        ft = ft_keras.FactorTransfer(
            ft_keras.Paraphraser(rate=0.5), ft_keras.Translator(64),
            teacher_layer="stage3", student_layer="stage3", beta=500.0)
        distiller = ft_keras.Distiller(teacher, student, terms=[ft])
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")])

    distiller.fit(dataset, epochs=1, steps_per_epoch=10, verbose=0)  # trace
    timer = _timing.StepTimes()
    distiller.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0,
                  callbacks=[timer])
    check = _preemption_check_seconds(strategy)
    info = distribute.task_info(strategy)
    if info.is_chief:
        step = statistics.median(timer.durations)
        with open(args.out, "w") as f:
            json.dump({"replicas": replicas, "global_batch":
                       args.batch * replicas, "steps_per_second": 1 / step,
                       "images_per_second": args.batch * replicas / step,
                       "preemption_check_seconds": check}, f)


def _preemption_check_seconds(strategy, calls=100):
    """Median time of `distribute.any_worker`, which a run with checkpoints
    calls after each step so that a preemption signal to one worker stops
    all at the same step (one all-reduce of a flag; nothing for one
    worker)."""
    import time

    from ft_keras import distribute

    for _ in range(5):
        distribute.any_worker(strategy, False)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        distribute.any_worker(strategy, False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def measure(label, workers, args, root):
    """Runs `workers` processes of `worker`; returns the chief's figures."""
    out = os.path.join(root, f"{label}.json")
    base = {k: v for k, v in os.environ.items()
            if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    base.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join(
                    [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    processes = []
    load_before = os.getloadavg()
    try:
        for index in range(workers):
            env = dict(base)
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({
                    "cluster": {"worker": addresses},
                    "task": {"type": "worker", "index": index}})
            log = open(os.path.join(root, f"{label}_{index}.log"), "w")
            processes.append(subprocess.Popen(
                [sys.executable, __file__, "--role=worker", f"--out={out}",
                 f"--batch={args.batch}", f"--steps={args.steps}"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        for p in processes:
            p.wait(timeout=1800)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in processes):
        with open(os.path.join(root, f"{label}_0.log")) as f:
            sys.exit(f"{label} failed:\n{f.read()[-3000:]}")
    with open(out) as f:
        result = json.load(f)
    result.update(label=label, load_before=load_before,
                  load_after=os.getloadavg())
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="driver", choices=["driver", "worker"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64,
                        help="images per replica")
    parser.add_argument("--steps", type=int, default=60,
                        help="timed steps (after a 10-step warm-up)")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="ft_mw_bench") as root:
        one = measure("1 process", 1, args, root)
        many = measure(f"{args.workers} workers", args.workers, args, root)
    print(f"Factor Transfer distillation step, WRN-16-2 -> WRN-10-1 on digits, "
          f"{args.batch} images per replica, {os.cpu_count()} CPU cores, "
          f"median of {args.steps} steps")
    print(f"{'run':>10} {'replicas':>8} {'global batch':>12} {'steps/s':>8} "
          f"{'images/s':>9}   load avg before -> after (1/5/15 min)")
    for r in (one, many):
        load = (f"{'/'.join(f'{x:.2f}' for x in r['load_before'])} -> "
                f"{'/'.join(f'{x:.2f}' for x in r['load_after'])}")
        print(f"{r['label']:>10} {r['replicas']:>8} {r['global_batch']:>12} "
              f"{r['steps_per_second']:>8.1f} {r['images_per_second']:>9.0f}"
              f"   {load}")
    check = many["preemption_check_seconds"]
    print(f"preemption check after each step ({args.workers} workers, one "
          f"all-reduce of a flag): {check * 1e3:.2f} ms, "
          f"{check * many['steps_per_second']:.1%} of a step")
    efficiency = many["images_per_second"] / (
        args.workers * one["images_per_second"])
    print(f"scaling efficiency: {efficiency:.2f} "
          f"({many['steps_per_second']:.1f} / {one['steps_per_second']:.1f} "
          f"steps/s; images/s x{many['images_per_second'] / one['images_per_second']:.2f})")


if __name__ == "__main__":
    main()
