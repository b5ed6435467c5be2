"""`ft_keras.precision`: a mixed policy slower than float32 here is measured,
said in one line, and (with `precision_check = 'fallback'`) replaced."""

import json
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest

from ft_keras import config
from ft_keras import precision

# Run in a subprocess whose oneDNN is capped below bf16 instructions
# (`ONEDNN_MAX_CPU_ISA` is read when TensorFlow loads).
_CAPPED_SCRIPT = textwrap.dedent("""
    import contextlib, io, json
    import ft_keras
    from ft_keras import precision

    speedup = precision.measure_speedup("mixed_bfloat16")
    result = {"speedup": speedup}
    if speedup < precision.MARGIN:
        for mode in ("warn", "fallback"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                # 'warn' measures again; 'fallback' reuses the measurement.
                policy = precision.check(
                    "mixed_bfloat16", mode,
                    speedup=None if mode == "warn" else speedup)
            result[mode] = [policy, out.getvalue()]
    print(json.dumps(result))
""")


# oneDNN without bf16 instructions; and TensorFlow's Eigen kernels, its
# default on a CPU without AVX512-VNNI (an AVX2 CPU), where bf16 measured
# 0.07x float32 (AMD Zen 5 with TF_ENABLE_ONEDNN_OPTS=0).
@pytest.mark.parametrize("setting", [("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"),
                                     ("TF_ENABLE_ONEDNN_OPTS", "0")])
def test_bfloat16_without_bf16_instructions_warns_or_falls_back(setting):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env[setting[0]] = setting[1]
    out = subprocess.run([sys.executable, "-c", _CAPPED_SCRIPT], env=env,
                         check=True, capture_output=True, text=True,
                         timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["speedup"] >= precision.MARGIN:
        pytest.skip(
            f"{setting[0]}={setting[1]} did not make bf16 slower on this "
            f"CPU (measured {result['speedup']:.2f}x float32's speed): not an "
            "x86 CPU with oneDNN, or its float32 path is as slow")
    assert result["speedup"] < 1
    policy, line = result["warn"]
    assert policy == "mixed_bfloat16"
    assert line.count("\n") == 1 and line.startswith(
        "[ft_keras] precision: mixed_bfloat16 measured ")
    assert "x the speed of float32 on this CPU (" in line
    assert f"{setting[0]}={setting[1]}" in line
    assert line.rstrip().endswith(
        "training will be slower; set experiment.precision = 'float32' (or "
        "experiment.precision_check = 'fallback' to switch automatically)")
    policy, line = result["fallback"]
    assert policy == "float32"
    assert line.count("\n") == 1 and "training in float32 instead" in line


def test_measure_speedup_touches_no_keras_or_random_state():
    # No speed is asserted: bf16's ratio depends on the CPU (AMX or not).
    policy = keras.mixed_precision.global_policy().name
    np_state = np.random.get_state()[1].copy()
    speedup = precision.measure_speedup("mixed_bfloat16", rounds=2)
    assert np.isfinite(speedup) and speedup > 0
    assert keras.mixed_precision.global_policy().name == policy
    assert (np.random.get_state()[1] == np_state).all()


def test_check_line_names_the_ratio_the_cpu_and_its_bf16_units(capsys):
    info = precision.cpu_info()
    assert precision.check("mixed_bfloat16", "warn", speedup=0.72) == (
        "mixed_bfloat16")
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert "mixed_bfloat16 measured 0.72x the speed of float32 on this CPU" in line
    assert info["model"] in line
    bf16 = info["flags"]["avx512_bf16"]
    if bf16 is not None:
        assert ("no AVX512-BF16" in line) == (not bf16)
        assert ("no AMX-BF16" in line) == (not info["flags"]["amx_bf16"])


def test_fallback_trains_float32_and_says_so(capsys):
    assert precision.check("mixed_bfloat16", "fallback", speedup=0.31) == "float32"
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert "measured 0.31x" in line and "training in float32 instead" in line


def test_not_slower_off_and_float32_are_silent_and_measure_nothing(
        monkeypatch, capsys):
    # Within MARGIN of float32: the benchmark's noise, no line.
    assert precision.check("mixed_bfloat16", "fallback", speedup=0.97) == (
        "mixed_bfloat16")
    assert precision.check("mixed_bfloat16", "warn", speedup=2.0) == (
        "mixed_bfloat16")

    def no_measuring(policy):
        raise AssertionError("measured")

    monkeypatch.setattr(precision, "measure_speedup", no_measuring)
    assert precision.check("mixed_bfloat16", "off") == "mixed_bfloat16"
    assert precision.check("float32", "fallback") == "float32"
    assert capsys.readouterr().out == ""


def test_a_policy_that_cannot_run_falls_back(monkeypatch, capsys):
    import tensorflow as tf

    def no_kernel(policy):
        raise tf.errors.AbortedError(None, None, "no fp16 convolution")

    monkeypatch.setattr(precision, "measure_speedup", no_kernel)
    assert precision.check("mixed_float16", "fallback") == "float32"
    line = capsys.readouterr().out
    assert "mixed_float16 could not run (AbortedError) on this CPU" in line


def test_cpu_info_reads_model_and_flags_and_unknown_without_the_file(
        tmp_path, monkeypatch, capsys):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9575F\n"
                       "flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert precision.cpu_info(cpuinfo) == {
        "model": "AMD EPYC 9575F",
        "flags": {"amx_bf16": False, "amx_fp16": False, "avx512_bf16": True,
                  "avx512_fp16": False, "avx2": True},
    }
    missing = precision.cpu_info(tmp_path / "missing")
    assert set(missing["flags"].values()) == {None} and missing["model"]

    read = precision.cpu_info
    monkeypatch.setattr(precision, "cpu_info", lambda: read(cpuinfo))
    precision.check("mixed_bfloat16", "warn", speedup=0.5)
    assert "(AMD EPYC 9575F, no AMX-BF16, AVX512-BF16" in capsys.readouterr().out
    monkeypatch.setattr(precision, "cpu_info",
                        lambda: read(tmp_path / "missing"))
    precision.check("mixed_bfloat16", "warn", speedup=0.5)
    assert "bf16 units unknown: no /proc/cpuinfo" in capsys.readouterr().out


def test_machine_info_records_cpu_threads_onednn_and_versions(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    info = json.loads(json.dumps(precision.machine_info()))
    assert info["cpu"] == precision.cpu_info()["model"]
    assert set(info["flags"]) >= {"amx_bf16", "avx512_bf16", "avx2"}
    assert info["cores"] >= 1 and info["usable_cores"] >= 1
    from ft_keras import _onednn

    # TensorFlow is loaded here: whether it runs oneDNN is known.
    assert info["onednn"] == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
                              "TF_ENABLE_ONEDNN_OPTS": None,
                              "enabled": _onednn.enabled()}
    assert isinstance(info["onednn"]["enabled"], bool)
    assert {"OMP_NUM_THREADS", "intra_op", "inter_op"} <= set(info["threads"])
    assert info["versions"]["tensorflow"] and info["versions"]["keras"]


def test_precision_check_rejects_unknown_values_in_one_line():
    assert config.ExperimentConfig().precision_check == "warn"
    with pytest.raises(ValueError) as error:
        config.ExperimentConfig(precision_check="auto")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "`experiment.precision_check` must be one of ('warn', 'fallback', "
        "'off'). Received: precision_check='auto'")


def test_runner_checks_once_per_run_and_never_in_a_dry_run(monkeypatch):
    from ft_keras import experiment

    calls = []

    def measured(policy):
        calls.append(policy)
        return 0.3

    monkeypatch.setattr(precision, "measure_speedup", measured)
    settings = types.SimpleNamespace(experiment=config.ExperimentConfig(
        precision="mixed_bfloat16", precision_check="fallback"))
    dry = types.SimpleNamespace(settings=settings, dry_run=True, policy=None)
    with experiment.Experiment.precision(dry):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert calls == []

    run = types.SimpleNamespace(settings=settings, dry_run=False, policy=None)
    for _ in range(2):
        with experiment.Experiment.precision(run):
            assert keras.mixed_precision.global_policy().name == "float32"
    assert calls == ["mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"
