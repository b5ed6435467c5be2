"""The measuring tools under benchmarks/ measure what they say."""

import pathlib
import platform
import statistics
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import ft_keras
from ft_keras import models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent
                       / "benchmarks"))
import _timing  # noqa: E402
import iterator_stall  # noqa: E402
import profile_summary  # noqa: E402


def small_distiller():
    kwargs = dict(num_classes=10, input_shape=(8, 8, 1))
    teacher = models.get("wrn16_2", model_name="teacher", **kwargs)
    student = models.get("wrn10_1", model_name="student", **kwargs)
    distiller = ft_keras.Distiller(teacher, student, terms=[
        ft_keras.FactorTransfer(ft_keras.Paraphraser(0.5),
                                ft_keras.Translator(64), "stage3", "stage3")])
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=(16,)).astype("int32")
    return distiller, tf.data.Dataset.from_tensors((x, y)).repeat()


def test_fit_step_seconds_times_blocks_of_steps_inside_one_fit():
    distiller, data = small_distiller()
    step, blocks = _timing.fit_step_seconds(distiller, data, steps=3,
                                            repeats=4, warmup=2)
    assert len(blocks) == 4 and all(b > 0 for b in blocks)
    assert step == statistics.median(blocks)
    # One fit call of warm-up + 3 x 4 steps.
    assert int(distiller.optimizer.iterations) == 2 + 12


def test_profile_attributes_ops_to_parts_and_frozen_parts_get_no_gradient(
    tmp_path,
):
    distiller, data = small_distiller()
    distiller.fit(data, epochs=1, steps_per_epoch=2, verbose=0)  # trace
    tf.profiler.experimental.start(str(tmp_path))
    distiller.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    tf.profiler.experimental.stop()
    parts, total, wall = profile_summary.summarize(str(tmp_path), steps=2)
    for part in ("teacher forward", "paraphraser forward", "student forward",
                 "student backward", "translator forward",
                 "translator backward"):
        assert parts[part] > 0, part
    # Frozen teacher and paraphraser: inference only, no gradient ops.
    assert "teacher backward" not in parts
    assert "paraphraser backward" not in parts
    assert total > 0 and wall > 0


@pytest.mark.parametrize("name, part", [
    ("distiller_1/teacher_1/stage1_block0_conv1_1/convolution", "teacher forward"),
    ("gradient_tape/distiller_1/student_1/conv_1/convolution/Conv2DBackpropInput",
     "student backward"),
    ("distiller_1/translator_1/conv2d_3_1/convolution", "translator forward"),
    ("distiller_1/paraphraser_1/conv2d_1/convolution", "paraphraser forward"),
    ("SGD/AssignAddVariableOp", "optimizer"),
    ("distiller_1/factor_transfer_loss/Mean", "losses, metrics, other"),
])
def test_part_of_op_names(name, part):
    assert profile_summary.part_of(name) == part


def test_throughput_onednn_bfloat16_is_grapplers_rewrite_of_float32():
    """`--mixed_precision onednn_bfloat16` keeps the float32 policy and
    variables and turns on grappler's oneDNN bfloat16 rewrite, for that
    child process only."""
    import throughput

    try:
        result = throughput.measure("b", "resnet20", "resnet20", batch=4,
                                    steps=1, repeats=1, xla=False,
                                    mixed_precision=throughput.ONEDNN_BF16,
                                    profile=None)
        options = tf.config.optimizer.get_experimental_options()
        assert options["auto_mixed_precision_onednn_bfloat16"]
        assert keras.mixed_precision.global_policy().name == "float32"
        # One block of one step of a batch of 4: the reported rate is the
        # batch over the median of the blocks' seconds per step.
        assert result["kind"] == "b"
        assert len(result["all_seconds_per_step"]) == 1
        assert result["all_seconds_per_step"][0] > 0
        assert result["seconds_per_step"] == statistics.median(
            result["all_seconds_per_step"])
        assert result["images_per_second"] == pytest.approx(
            4 / result["seconds_per_step"], rel=1e-12)
    finally:
        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": False})


def test_iterator_stall_measures_a_deletion():
    assert 0 <= iterator_stall.stall(False, 0.05) < 5


def test_reproduce_runs_each_method_with_its_stages():
    import reproduce

    assert reproduce.stages("teacher") == ["teacher", "evaluate"]
    assert reproduce.stages("student alone") == ["baseline", "evaluate"]
    assert reproduce.stages("KD") == ["teacher", "student", "evaluate"]
    assert reproduce.stages("AT") == ["teacher", "student", "evaluate"]
    assert reproduce.stages("FT") == [
        "teacher", "paraphraser", "student", "evaluate"]
    assert reproduce.stages("FT+KD") == [
        "teacher", "paraphraser", "student", "evaluate"]
    for method in ("DKD", "DIST", "FitNets", "ReviewKD", "CRD"):
        assert reproduce.stages(method) == ["teacher", "student", "evaluate"]


def test_reproduce_keeps_the_references_warm_up_fraction():
    import reproduce

    # 20 of mdistiller's 240 epochs; at least one.
    assert [reproduce.warmup_epochs(e) for e in (240, 164, 12, 5, 1)] == [
        20, 14, 1, 1, 1]
    assert reproduce.student_epochs(
        ["gin/fashion_mnist/wrn16_2_wrn10_1.gin"], []) == 5
    assert reproduce.student_epochs(
        ["gin/fashion_mnist/wrn16_2_wrn10_1.gin"],
        ["student/training.epochs = 36"]) == 36


@pytest.mark.parametrize("method, term, warmup", [
    ("KD", "KD", None), ("AT", "AT", None), ("FT", "FT", None),
    ("DKD", "DKD", 1), ("DIST", "DIST", None), ("FitNets", "FitNets", None),
    ("ReviewKD", "ReviewKD", 1), ("CRD", "CRD", None)])
def test_reproduce_bindings_give_each_method_its_term_on_the_table_config(
        method, term, warmup, monkeypatch):
    import gin

    import reproduce
    from ft_keras import cli
    from ft_keras import config

    monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)
    files = ["gin/fashion_mnist/wrn16_2_wrn10_1.gin"]
    bindings = reproduce.bindings_of(method, 2, "/w", [], None, epochs=5)
    gin.clear_config()
    try:
        cli.parse_config(files, bindings)
        settings = config.from_gin()
    finally:
        gin.clear_config()
    terms = settings.distillation.terms
    assert [t.label for t in terms] == [term]
    assert list(settings.experiment.stages) == reproduce.stages(method)
    assert settings.experiment.seed == 2
    arguments = dict(getattr(terms[0], "arguments", ()))
    # The method file's warm-up (20) gives way to the table's.
    assert arguments.get("warmup_epochs") == warmup


def _run(method, seed, top1, curve, wall=10.0, cpu=None):
    run = {"method": method, "seed": seed, "top1": top1, "curve": curve,
           "wall_time_s": wall, "workdir": "/gone", "key": f"{method}{seed}"}
    return dict(run, cpu=cpu) if cpu else run


def test_reproduce_writes_table_summary_curves_and_readme_block(tmp_path):
    import argparse
    import json

    import reproduce

    args = argparse.Namespace(gin_file=["gin/x.gin"], gin_bindings=[],
                              seeds=[0, 1], workdir=str(tmp_path),
                              results_dir=str(tmp_path / "out"),
                              shared_teacher=False, teacher=None)
    methods = ["teacher", "FT"]
    runs = {"teacher": [_run("teacher", 0, 90.0, [80.0, 90.0],
                             cpu=reproduce.cpu_kind())], "FT": []}
    # A run recorded by an earlier invocation (its workdir is gone).
    records = {"FT1": _run("FT", 1, 86.0, [70.0, 86.0], wall=30.0),
               "FT0": _run("FT", 0, 84.0, [60.0, 84.0], wall=20.0)}
    summary, text = reproduce.write(args, methods, runs, records, 1.0)
    assert [r["seed"] for r in summary["methods"]["FT"]["runs"]] == [0, 1]
    assert summary["methods"]["FT"]["top1_mean"] == 85.0
    assert abs(summary["methods"]["FT"]["top1_std"] - 1.4142) < 1e-4
    # Runs recorded before the table named their CPU say so.
    assert "| FT | 85.00 ± 1.41 | 2 | 25 | not recorded |" in text
    assert f"| teacher | 90.00 | 1 | 10 | {reproduce.cpu_kind()} |" in text
    assert reproduce.cpu_kind().endswith(" cores")
    # The file says where and with what it was written.
    from ft_keras import precision

    assert summary["machine"]["cpu"] == precision.machine_info()["cpu"]
    assert summary["machine"]["versions"]["keras"] == keras.__version__
    assert summary["written"].endswith("Z")
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(summary))
    assert (out / "table.md").read_text() == text + "\n"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # The records come back as they were written.
    loaded = reproduce.load_records(str(out / "summary.json"))
    assert loaded["FT1"]["top1"] == 86.0 and loaded["teacher0"]["seed"] == 0

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- reproduce:x -->\nold\n<!-- /reproduce:x -->\nb\n")
    reproduce.write_readme(str(readme), "x", text)
    assert readme.read_text() == (
        f"a\n<!-- reproduce:x -->\n{text}\n<!-- /reproduce:x -->\nb\n")
    with pytest.raises(SystemExit, match="no <!-- reproduce:y -->"):
        reproduce.write_readme(str(readme), "y", text)


def test_reproduce_from_a_given_teacher_trains_none_and_totals_the_runs(
        tmp_path, capsys):
    import argparse

    import reproduce

    teacher = tmp_path / "t.keras"
    teacher.write_bytes(b"weights")
    args = argparse.Namespace(gin_file=["gin/x.gin"], gin_bindings=[],
                              seeds=[0], workdir=str(tmp_path),
                              results_dir=None, shared_teacher=False,
                              teacher=str(teacher),
                              teacher_sha256="ab" * 32)
    assert reproduce.teacher_seed(args, 3) == str(teacher)
    bindings = reproduce.bindings_of("FT", 3, str(tmp_path), [],
                                     reproduce.teacher_seed(args, 3))
    assert f"experiment.teacher_checkpoint = '{teacher}'" in bindings
    assert '"teacher_sha256": "' + "ab" * 32 in reproduce.key_of(args, 3, "FT")
    results = {"evaluation": {"teacher": {"top1": 0.9},
                              "student": {"top1": 0.8}}}
    row = reproduce.given_teacher(results, "/run")
    assert row["top1"] == 90.0 and row["wall_time_s"] is None
    runs = {"teacher": [dict(row, key="t")],
            "FT": [_run("FT", 0, 80.0, [], wall=20.0),
                   _run("FT", 1, 82.0, [], wall=30.0)]}
    _, text = reproduce.write(args, ["teacher", "FT"], runs, {}, 1.0)
    assert "| teacher | 90.00 | 1 | not trained here | not recorded |" in text
    assert text.endswith("| all 2 runs | | | total 50 | |")
    # A later invocation for one more method keeps the rows recorded.
    records = reproduce.load_records(str(tmp_path / "summary.json"))
    summary, text = reproduce.write(
        args, ["teacher", "KD"], {"teacher": [], "KD": [
            _run("KD", 0, 81.0, [], wall=5.0)]}, records, 1.0)
    assert list(summary["methods"]) == ["teacher", "KD", "FT"]
    assert text.endswith("| all 3 runs | | | total 55 | |")

    for argv, message in [
            ([f"--teacher={tmp_path / 'none.keras'}"], "no such file"),
            ([f"--teacher={teacher}", "--shared_teacher"], "pass one of them")]:
        with pytest.raises(SystemExit):
            reproduce.main(["--gin_file=gin/x.gin"] + argv)
        assert message in capsys.readouterr().err


def test_reproduce_curve_keeps_the_last_row_of_a_resumed_epoch(tmp_path):
    import reproduce

    stage = tmp_path / "student"
    stage.mkdir()
    (stage / "log.csv").write_text(
        "epoch,top1,val_top1\n0,0.5,0.40\n1,0.6,0.50\n1,0.6,0.55\n2,0.7,0.6\n")
    assert reproduce.curve(str(tmp_path), "student") == pytest.approx(
        [40.0, 55.0, 60.0])
    assert reproduce.curve(str(tmp_path), "baseline") == []


def test_reproduce_keeps_the_shared_teacher_without_optimizer_state(tmp_path):
    import reproduce

    teacher = models.get("wrn10_1", num_classes=10, input_shape=(8, 8, 1))
    teacher.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    teacher.fit(np.ones((4, 8, 8, 1)), np.ones((4, 10)), verbose=0)
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    teacher.save(tmp_path / "run" / "teacher" / "model.keras")
    reproduce.keep_teacher(str(tmp_path / "run"), str(tmp_path / "out"))
    kept = keras.models.load_model(tmp_path / "out" / "shared_teacher.keras")
    assert getattr(kept, "optimizer", None) is None
    for a, b in zip(kept.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_torch_peer_is_the_original_step_on_our_networks():
    """The PyTorch peer trains networks of the same size as ours (the
    original ResNet_simple has our CIFAR ResNets' parameters), updates only
    the student and the translator, and lowers its loss."""
    torch = pytest.importorskip("torch")
    import torch_peer

    for name in ("resnet20", "resnet56"):
        theirs = sum(p.numel() for p in torch_peer.ResNetSimple(
            torch_peer.DEPTHS[name]).parameters())
        assert theirs == models.get(name).count_params() - sum(
            int(np.prod(w.shape)) for layer in models.get(name).layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance))
    torch.manual_seed(0)
    step, parts = torch_peer.build("resnet20", "resnet20", lr=0.01,
                                   return_parts=True)
    frozen = {k: v.clone() for k, v in parts["teacher"].state_dict().items()}
    inputs, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    losses = [step(inputs, targets, autocast).detach().item() for _ in range(5)]
    assert losses[-1] < losses[0]
    for key, value in parts["teacher"].state_dict().items():
        assert torch.equal(value, frozen[key]), key
    result = torch_peer.measure("bfloat16", batch=4, steps=1, repeats=2,
                                warmup=1, teacher="resnet20")
    # Two blocks of one step of a batch of 4: the rate is the batch over
    # the median (the mean of two) of the blocks' seconds per step.
    assert result["precision"] == "bfloat16"
    assert len(result["all_seconds_per_step"]) == 2
    assert min(result["all_seconds_per_step"]) > 0
    assert result["seconds_per_step"] == pytest.approx(
        sum(result["all_seconds_per_step"]) / 2, rel=1e-12)
    assert result["images_per_second"] == pytest.approx(
        4 / result["seconds_per_step"], rel=1e-12)


def test_throughput_vs_pytorch_prints_alternating_rounds_and_ratios():
    pytest.importorskip("torch")
    import subprocess

    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"
    out = subprocess.run(
        [sys.executable, str(script), "--vs_pytorch", "--rounds", "1",
         "--steps", "1", "--repeats", "1", "--batch", "4",
         "--pairs", "resnet20:resnet20"],
        check=True, capture_output=True, text=True, timeout=600).stdout
    assert "FT step resnet20 -> resnet20" in out
    assert "round 1 float32" in out and "round 1 bfloat16" in out
    rows = [line for line in out.splitlines() if line.startswith("| FT step")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "FT step, float32", "FT step, bfloat16"]
    assert "bfloat16 / float32, same round: ft_keras" in out
    # The children import ft_keras first, as this process did (conftest).
    from ft_keras import _onednn

    assert (f"ft_keras ran TensorFlow's oneDNN kernels: {_onednn.enabled()}\n"
            in out)


def test_throughput_overhead_rounds_alternate_kinds_and_take_the_median(
        monkeypatch, capsys):
    import argparse
    import re
    import subprocess

    import throughput

    # Every kind's real measurement, in this process instead of one fresh
    # process each (a process per kind and round is the script's way to a
    # steady ratio; the vs_pytorch test runs real child processes).
    order = []

    def measured_here(command):
        child = command[command.index("--_child") + 1]
        kind, teacher, student, steps = child.split(",")
        order.append(kind)
        return throughput.measure(kind, teacher, student, batch=4,
                                  steps=int(steps), repeats=1, xla=False,
                                  mixed_precision=None, profile=None)

    monkeypatch.setattr(throughput, "_child_result", measured_here)
    args = argparse.Namespace(batch=4, steps=1, repeats=1, xla=False,
                              mixed_precision=None, profile=None, rounds=2)
    # WRN-10-1, the smallest pair with known taps: the order, the rounds
    # and the arithmetic checked here are the same for any pair.
    throughput.overhead(args, "wrn10_1:wrn10_1")
    out = capsys.readouterr().out
    assert order == list(throughput.KINDS) * 2  # the kinds alternate
    rounds = [float(m) for m in re.findall(
        r"round \d: .* img/s, overhead ratio ([\d.]+)", out)]
    assert len(rounds) == 2
    assert "wrn10_1 -> wrn10_1 (1 steps x 1, median of 2 rounds)" in out
    for kind in ("(a)", "(b)", "(c)", "(d)", "(b_tap)", "(e)"):
        assert re.search(re.escape(kind) + r" .* img/s \[[\d.]+ - [\d.]+\]", out)
    median = re.search(r"= ([\d.]+)  \(ideal 1.0, target <= 1.10\)  "
                       r"\(rounds: ([\d.]+) / ([\d.]+)\)", out)
    assert [float(median.group(2)), float(median.group(3))] == rounds
    assert float(median.group(1)) == pytest.approx(statistics.median(rounds),
                                                   abs=1e-3)
    assert "the ratio if (d) cost just its parts" in out

    script = pathlib.Path(throughput.__file__)
    bad = subprocess.run([sys.executable, str(script), "--rounds", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--rounds must be at least 1, got 0" in bad.stderr


def _processes_with(text):
    """PIDs of the live processes whose command line contains `text`."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if text.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not pathlib.Path("/proc/self/cmdline").exists(),
                    reason="reads the process table from /proc")
def test_reproduce_stopped_by_sigterm_stops_the_run_it_started(tmp_path):
    """A run left training after its driver was killed would finish beside
    the next jobs, and be recorded with a wall time measured under
    contention."""
    import signal
    import subprocess
    import time

    repo = pathlib.Path(__file__).resolve().parent.parent
    workdir = tmp_path / "runs"
    driver = subprocess.Popen(
        [sys.executable, str(repo / "benchmarks" / "reproduce.py"),
         "--gin_file=gin/quickstart.gin", "--seeds", "0", "--methods", "FT",
         "--workdir", str(workdir)],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _processes_with(f"--workdir={workdir}"):
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=120) == 128 + signal.SIGTERM
    assert _processes_with(f"--workdir={workdir}") == []


# An AMD Zen 5 as /proc/cpuinfo lists it (flags trimmed to the ones that
# matter and a few others): AVX512-BF16, no AMX.
ZEN5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 sha_ni

processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 sha_ni
"""


def test_record_header_names_the_cpu_its_flags_and_onednn_settings(tmp_path):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent
                           / "benchmarks" / "results"))
    import record

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN5_CPUINFO)
    assert record.cpu(cpuinfo) == ("AMD EPYC 9B45", {
        "amx_bf16": False, "amx_tile": False, "avx512_bf16": True,
        "avx512_vnni": True, "avx512f": True, "avx2": True})
    lines = record.cpu_lines(cpuinfo, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                                       "OMP_NUM_THREADS": "2"})
    assert lines == {
        "cpu flags": "avx512_bf16 avx512_vnni avx512f avx2; "
                     "without amx_bf16 amx_tile",
        "oneDNN and threads": "ONEDNN_MAX_CPU_ISA=AVX512_CORE, "
        "TF_ENABLE_ONEDNN_OPTS=unset, OMP_NUM_THREADS=2, "
        "TF_NUM_INTRAOP_THREADS=unset, TF_NUM_INTEROP_THREADS=unset",
        # Where the platform is Linux x86-64, as here.
        **({"oneDNN kernels": "on: TensorFlow's default on this CPU"}
           if platform.system() == "Linux" and platform.machine() == "x86_64"
           else {"oneDNN kernels": "off: TensorFlow's default on this CPU"})}
    # An AVX2 CPU: ft_keras turns oneDNN on, unless the environment says.
    cpuinfo.write_text(ZEN5_CPUINFO.replace(
        " avx512f avx512_vnni avx512_bf16", " fma"))
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert record.cpu_lines(cpuinfo, {})["oneDNN kernels"] == (
            "on: set by ft_keras (TensorFlow leaves it off on this CPU)")
    assert record.cpu_lines(cpuinfo, {"TF_ENABLE_ONEDNN_OPTS": "0"})[
        "oneDNN kernels"] == "off: TF_ENABLE_ONEDNN_OPTS=0 in the environment"
    assert record.cpu_lines(tmp_path / "absent")["cpu flags"] == "unknown"
    # A recorded command: this machine's header, then what it printed.
    out = tmp_path / "out.txt"
    assert record.main([str(out), "--", sys.executable, "-c", "print(42)"]) == 0
    text = out.read_text().splitlines()
    header = dict(l[2:].split(": ", 1) for l in text if l.startswith("# "))
    assert header["cpu flags"] == record.cpu_lines()["cpu flags"]
    assert header["command"].endswith("-c 'print(42)'")
    assert text[-1] == "42"


def test_cost_curve_records_every_field_continues_and_rerenders(
        tmp_path, capsys):
    import json

    import cost_curve
    import throughput

    # Each child's real measurement, in this process instead of a fresh
    # process per kind (the throughput tests run real child processes).
    commands = []

    def measured_here(command, backend):
        assert backend == "tensorflow"
        if len(commands) == stop_after:
            raise KeyboardInterrupt  # the run stopped by hand
        commands.append(command)
        flag = lambda name: command[command.index(name) + 1]  # noqa: E731
        kind, teacher, student, steps = flag("--_child").split(",")
        return throughput.measure(
            kind, teacher, student, batch=int(flag("--batch")),
            steps=int(steps), repeats=int(flag("--repeats")), xla=False,
            mixed_precision=None, profile=None,
            image_size=int(flag("--image_size")),
            classes=int(flag("--classes")))

    # The smallest pair with known taps (the fields are any pair's).
    argv = ["--pairs", "wrn10_1:wrn10_1", "--batches", "4", "6", "--steps",
            "1", "--repeats", "1", "--rounds", "1", "--precisions", "float32",
            "--backends", "tensorflow", "--results_dir", str(tmp_path),
            "--name", "smoke"]
    # Stopped in the second row's first child: the first row is kept.
    stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        cost_curve.main(argv, run=measured_here)
    stopped = json.loads((tmp_path / "smoke.json").read_text())
    assert not stopped["complete"] and len(stopped["rows"]) == 1
    # Rows measured on another CPU are not kept.
    args = cost_curve.parse(argv)
    settings, configs = stopped["settings"], cost_curve.configurations(args)
    assert len(cost_curve.kept_rows(tmp_path / "smoke.json", settings,
                                    configs)[0]) == 1
    moved = dict(stopped, header={**stopped["header"], "cpu flags": "avx2"})
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    assert cost_curve.kept_rows(tmp_path / "moved.json", settings,
                                configs) == ([], 0.0)
    # The same command measures only the missing row.
    commands, stop_after = [], None
    assert cost_curve.main(argv, run=measured_here) == 0
    measured = capsys.readouterr().out
    assert "continuing the unfinished run" in measured
    assert [c[c.index("--_child") + 1] for c in commands] == [
        "a,wrn10_1,wrn10_1,1", "b,wrn10_1,wrn10_1,1",
        "d,wrn10_1,wrn10_1,1"]
    assert {c[c.index("--batch") + 1] for c in commands} == {"6"}
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["rows"][0] == stopped["rows"][0]
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert {"command", "date", "machine", "cpu flags", "oneDNN and threads",
            "versions", "revision"} <= set(result["header"])
    assert result["settings"]["pairs"] == ["wrn10_1:wrn10_1"]
    assert result["complete"]
    row = result["rows"][1]
    assert (row["pair"], row["batch"], row["precision"], row["backend"],
            row["image_size"], row["classes"]) == (
                "wrn10_1:wrn10_1", 6, "float32", "tensorflow", 32, 10)
    t = row["seconds_per_step"]
    [round_] = row["rounds"]
    assert {k: round_[k] for k in "abd"} == t
    assert row["overhead"] == pytest.approx(
        t["d"] / (t["a"] + t["b"]), abs=1e-9)
    for kind in "abd":
        assert row["images_per_second"][kind] == pytest.approx(
            6 / t[kind], rel=1e-12)
    macs = throughput.connector_mac_counts("wrn10_1", "wrn10_1")
    assert row["macs"] == macs
    assert row["mac_fraction"] == pytest.approx(
        (macs["encoder"] + macs["translator"]) / macs["student"], rel=1e-12)
    connectors = ((macs["encoder"] + 3 * macs["translator"]) * t["a"]
                  / (3 * macs["student"]))
    assert row["connector_seconds"] == pytest.approx(connectors, rel=1e-9)
    assert row["framework_overhead_seconds"] == pytest.approx(
        t["d"] - t["a"] - t["b"] - connectors, abs=1e-9)
    # A mixed-precision row's connectors (float32) run at the float32 row's
    # student rate; without such a row, at its own.
    mixed = {**row, "precision": "mixed_bfloat16",
             "student_macs_per_second": 2 * row["student_macs_per_second"]}
    cost_curve.split([mixed, row])
    assert mixed["connector_rate"] == "float32 student step"
    assert mixed["connector_seconds"] == pytest.approx(connectors, rel=1e-9)
    cost_curve.split([mixed])
    assert mixed["connector_rate"] == "own student step"
    assert mixed["connector_seconds"] == pytest.approx(connectors / 2,
                                                       rel=1e-9)

    table = measured[measured.index("| pair |"):].split("\n\n")[0]
    assert table.count("| wrn10_1 -> wrn10_1 | 32x32, 10 classes | ") == 2
    (tmp_path / "smoke.png").unlink()
    assert cost_curve.main(["--from_json", str(tmp_path / "smoke.json")]) == 0
    again = capsys.readouterr().out
    assert again[again.index("| pair |"):].split("\n\n")[0] == table
    assert (tmp_path / "smoke.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--batches", "3"], "--batches must be even and at least 2, got 3."),
    (["--backends", "torch"],
     "--backends: unknown 'torch'; use tensorflow or jax."),
    (["--pairs", "resnet20"], "--pairs: 'resnet20' is not teacher:student"),
    (["--pairs", "vgg8:resnet20"], "--pairs: no tap known for 'vgg8'"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0."),
])
def test_cost_curve_bad_flag_is_one_clear_line(argv, message, capsys):
    import cost_curve

    with pytest.raises(SystemExit) as exit_:
        cost_curve.parse(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_small_map_conv_times_two_forms_of_one_convolution(kind):
    import small_map_conv

    base, patch = small_map_conv.layers(kind, 5, 7, "float32")
    x = tf.random.stateless_normal((2, 4, 4, 5), (1, 1))
    np.testing.assert_allclose(patch(x), base(x), rtol=1e-5, atol=1e-6)
    for a, b in zip(small_map_conv.with_gradients(tf, base)(x),
                    small_map_conv.with_gradients(tf, patch)(x)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    line = small_map_conv.row(tf, ("a:b", "paraphraser", kind, 2, 4, 5, 7),
                              "bfloat16", steps=1, repeats=1)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["a:b", "paraphraser", type(base).__name__,
                         "2x4x4x5 -> 7", "bfloat16"]
    numbers = [float(c) for c in cells[5:]]
    assert len(numbers) == 8 and min(numbers) >= 0
    assert numbers[3] > 0 and numbers[6] > 0  # the two Keras / patch ratios
    # The two forms differ by bfloat16 rounding only (outputs of about 0.1).
    assert 0 <= float(cells[12]) < 2e-3
