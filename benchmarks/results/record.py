"""Runs a command and keeps its output, with the machine, versions and date.

    python benchmarks/results/record.py benchmarks/results/commands/taps.txt -- \\
        python -m ft_keras.taps --teacher wrn16_2 --student wrn10_1 --dataset fashion_mnist

writes the file: a header of `# key: value` lines (the command, its exit
status and wall time, the date, the CPU with the flags that decide its
kernels (AMX, AVX512-BF16, AVX2...) and the oneDNN and thread settings of
the environment, the load average before and after,
the Python, TensorFlow, Keras and NumPy versions, the git revision of the
checkout) and then everything the command printed, stdout and stderr
interleaved as a terminal shows them. The docs quote these files;
`tests/test_docs_figures.py` checks every quoted line against its file.
Versions are read from the installed packages' metadata, so recording
imports nothing heavy.
"""

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("tensorflow", "keras", "numpy", "tensorflow-datasets", "torch")


# The CPU flags that decide which kernels oneDNN (TensorFlow's CPU kernels)
# and PyTorch can use, and the environment that caps oneDNN or sets threads.
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f",
             "avx2")
CPU_ENV = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS",
           "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _ft_keras_module(name):
    """`ft_keras.<name>` loaded from its file, without importing the package
    (which loads TensorFlow); the module must import nothing of ft_keras."""
    spec = importlib.util.spec_from_file_location(
        f"_record_{name}", os.path.join(REPO, "ft_keras", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cpu = _ft_keras_module("_cpu")
_onednn = _ft_keras_module("_onednn")


def cpu(path="/proc/cpuinfo"):
    """`(model name, {flag: present})` of the first CPU in `path`; the
    flags are empty where it cannot be read (not Linux)."""
    return _described(*_cpu.read_cpuinfo(path))


def _described(model, flags):
    present = {} if flags is None else {f: f in flags for f in CPU_FLAGS}
    return model or platform.processor() or platform.machine(), present


def machine():
    """The header's machine line: architecture, cores and CPU model."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {cpu()[0]}"


def cpu_lines(path="/proc/cpuinfo", environ=None):
    """The header's CPU entries: the flags present and absent, and the
    oneDNN and thread settings of the environment."""
    environ = os.environ if environ is None else environ
    model, all_flags = _cpu.read_cpuinfo(path)  # read once
    _, flags = _described(model, all_flags)
    have = " ".join(f for f, on in flags.items() if on) or "none of"
    lack = " ".join(f for f, on in flags.items() if not on)
    text = have + (f"; without {lack}" if lack else "")
    lines = {
        "cpu flags": text if flags else "unknown",
        "oneDNN and threads": ", ".join(
            f"{name}={environ.get(name, 'unset')}" for name in CPU_ENV),
    }
    if all_flags is not None:
        lines["oneDNN kernels"] = _onednn.expected(
            all_flags, environ, platform.system(), platform.machine())[1]
    return lines


def versions():
    found = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def revision():
    result = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: record.py OUT -- COMMAND [ARG ...]")
    out, command = argv[0], argv[2:]
    load_before = os.getloadavg()
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - start
    load_after = os.getloadavg()
    header = {
        "command": shlex.join(command),
        "exit status": result.returncode,
        "wall time": f"{wall:.1f} s",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        **cpu_lines(),
        "load average (1 min) before, after": f"{load_before[0]:.2f}, "
                                               f"{load_after[0]:.2f}",
        "versions": versions(),
        "revision": revision(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.writelines(f"# {key}: {value}\n" for key, value in header.items())
        f.write(result.stdout)
    print(f"{out}: exit status {result.returncode}, {wall:.1f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
