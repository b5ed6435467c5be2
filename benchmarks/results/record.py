"""Runs a command and keeps its output, with the machine, versions and date.

    python benchmarks/results/record.py benchmarks/results/commands/taps.txt -- \\
        python -m ft_keras.taps --teacher wrn16_2 --student wrn10_1 --dataset fashion_mnist

writes the file: a header of `# key: value` lines (the command, its exit
status and wall time, the date, the CPU, the load average before and after,
the Python, TensorFlow, Keras and NumPy versions, the git revision of the
checkout) and then everything the command printed, stdout and stderr
interleaved as a terminal shows them. The docs quote these files;
`tests/test_docs_figures.py` checks every quoted line against its file.
Versions are read from the installed packages' metadata, so recording
imports nothing heavy.
"""

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("tensorflow", "keras", "numpy", "tensorflow-datasets", "torch")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{cpu_model()}",
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
