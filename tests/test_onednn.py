"""`ft_keras._onednn`: oneDNN's kernels on where TensorFlow leaves them off,
said once; the environment's setting always wins."""

import io
import os
import subprocess
import sys

import pytest

from ft_keras import _cpu
from ft_keras import _onednn

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma", "f16c"}


@pytest.mark.parametrize("flags, environ, system, machine, expected", [
    (AVX2_ONLY, {}, "Linux", "x86_64", "enable"),
    # TensorFlow turns oneDNN on itself on each of these.
    *[(AVX2_ONLY | {flag}, {}, "Linux", "x86_64", None)
      for flag in _onednn.TENSORFLOW_DEFAULT_ON],
    # The user's setting wins, whatever its value.
    (AVX2_ONLY, {"TF_ENABLE_ONEDNN_OPTS": "0"}, "Linux", "x86_64", None),
    (AVX2_ONLY, {"TF_ENABLE_ONEDNN_OPTS": "1"}, "Linux", "x86_64", None),
    # Not measured: a CPU without AVX2 or FMA, another OS or architecture.
    ({"sse4_2", "avx"}, {}, "Linux", "x86_64", None),
    (AVX2_ONLY - {"fma"}, {}, "Linux", "x86_64", None),
    (AVX2_ONLY, {}, "Windows", "AMD64", None),
    ({"asimd"}, {}, "Linux", "aarch64", None),
    (None, {}, "Linux", "x86_64", None),
])
def test_onednn_is_turned_on_only_where_tensorflow_leaves_it_off(
        flags, environ, system, machine, expected):
    assert _onednn.decide(flags, environ, system, machine) == expected


def test_import_turns_onednn_on_and_says_so_once_or_hints_when_too_late(
        monkeypatch):
    monkeypatch.setattr(_onednn.platform, "system", lambda: "Linux")
    monkeypatch.setattr(_onednn.platform, "machine", lambda: "x86_64")
    # Recorded as unset, so the value set below is removed after the test.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "unset")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    # TensorFlow is loaded in this process: too late, one line of advice.
    out = io.StringIO()
    assert _onednn.enable_on_import(AVX2_ONLY, out) == "hinted"
    assert out.getvalue() == _onednn.HINT + "\n"
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    # Before TensorFlow loads: on, and one line.
    monkeypatch.delitem(sys.modules, "tensorflow")
    out = io.StringIO()
    assert _onednn.enable_on_import(AVX2_ONLY, out) == "enabled"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert out.getvalue() == _onednn.MESSAGE + "\n"
    # Once: the setting now in the environment is left alone.
    out = io.StringIO()
    assert _onednn.enable_on_import(AVX2_ONLY, out) is None
    assert out.getvalue() == ""


_SCRIPT = (
    "import ft_keras\n"
    "from ft_keras import _onednn\n"
    "import keras\n"
    "print('onednn', _onednn.enabled())\n"
)


@pytest.mark.parametrize("setting", [None, "0"])
def test_tensorflow_runs_onednn_after_import_ft_keras_unless_told_not_to(
        setting):
    # On this machine, whatever its CPU: after `import ft_keras`, TensorFlow
    # runs oneDNN where it would itself or where ft_keras turns it on, and
    # never against the environment's setting.
    import platform

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env,
                         capture_output=True, text=True, check=True,
                         timeout=120)
    _, flags = _cpu.read_cpuinfo()
    if flags is None or platform.machine() != "x86_64":
        pytest.skip("not a Linux x86-64 CPU: TensorFlow's oneDNN policy "
                    "differs there")
    ours = _onednn.decide(flags, env, "Linux", "x86_64") == "enable"
    theirs = any(flag in flags for flag in _onednn.TENSORFLOW_DEFAULT_ON)
    expected = setting != "0" and (ours or theirs)
    assert out.stdout.split()[-2:] == ["onednn", str(expected)]
    assert (_onednn.MESSAGE in out.stderr) == ours
    # What benchmark headers write, without loading TensorFlow.
    assert _onednn.expected(flags, env, "Linux", "x86_64")[0] == expected


def test_expected_says_why_onednn_is_on_or_off():
    assert _onednn.expected(AVX2_ONLY, {"TF_ENABLE_ONEDNN_OPTS": "0"},
                            "Linux", "x86_64") == (
        False, "off: TF_ENABLE_ONEDNN_OPTS=0 in the environment")
    assert _onednn.expected(AVX2_ONLY | {"amx_bf16"}, {}, "Linux",
                            "x86_64") == (
        True, "on: TensorFlow's default on this CPU")
    assert _onednn.expected({"avx"}, {}, "Linux", "x86_64") == (
        False, "off: TensorFlow's default on this CPU")
