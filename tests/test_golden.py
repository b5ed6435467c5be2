"""The quickstart's first steps give the recorded numbers.

benchmarks/golden.py runs the seeded quickstart (digits, WRN-16-2 ->
WRN-10-1, seed 0) for one epoch of 5 steps per stage through the real
runner: the teacher and the student trained alone, then the student
distilled by FT, FT+KD, KD and AT from that teacher. Here it runs again, in
a fresh process (so no other test's Keras or TensorFlow state leaks in), and
its numbers are compared with tests/golden/quickstart_short.json:

- every logged loss (loss, ce_loss, ft_loss, kd_loss, at_loss, the
  paraphraser's loss) within a relative 2e-2, and every accuracy (logged
  and evaluated top1, top5) within an absolute 0.05, on any CPU. Measured
  (see `LOSS_RTOL` in benchmarks/golden.py): two runs are bit-identical;
  other oneDNN kernels (ONEDNN_MAX_CPU_ISA=AVX2) moved the losses by at
  most 9.6e-6 relative, and one TensorFlow thread instead of two by at
  most 4.3e-3 relative and 6 of 360 test digits (0.0167);
- on the machine that wrote the file (the same CPU model and features,
  number of CPUs, kernel-picking environment variables and TensorFlow and
  Keras versions) the weights of every saved network, paraphraser and
  translator bit for bit (SHA-256). On another machine that test is
  skipped, naming what differs, and only the numbers are checked.

A change that moves the numbers on purpose regenerates the file:
`python benchmarks/golden.py --write`.
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import golden  # noqa: E402


def load_golden():
    with open(golden.GOLDEN) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The numbers of a run of benchmarks/golden.py, now."""
    output = tmp_path_factory.mktemp("golden") / "measured.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "golden.py"),
         f"--output={output}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    if not output.exists():
        pytest.fail(f"benchmarks/golden.py failed:\n{result.stderr[-3000:]}")
    with open(output) as f:
        return json.load(f)


def test_golden_file_records_every_method_and_stage():
    recorded = load_golden()
    # Written by the runs benchmarks/golden.py makes now.
    assert recorded["bindings"] == {
        run: golden.bindings_of(run, "<workdir>") for run in golden.RUNS}
    assert set(recorded["runs"]) == {"shared", "ft", "ft+kd", "kd", "at"}
    assert set(recorded["runs"]["shared"]["stages"]) == {"teacher", "baseline"}
    terms = {"ft": {"ce_loss", "ft_loss"}, "ft+kd": {"ce_loss", "ft_loss", "kd_loss"},
             "kd": {"ce_loss", "kd_loss"}, "at": {"ce_loss", "at_loss"}}
    for method, losses in terms.items():
        stages = recorded["runs"][method]["stages"]
        assert set(stages) == ({"paraphraser", "student"} if "ft" in method
                               else {"student"})
        assert losses | {"loss", "top1"} <= set(stages["student"]["log"][0])
        assert set(stages["student"]["weights"]) == (
            {"model.keras", "translator.keras"} if "ft" in method
            else {"model.keras"})


def test_a_changed_loss_fails_the_comparison():
    recorded = load_golden()
    changed = json.loads(json.dumps(recorded))
    assert golden.compare_numbers(recorded, changed) == []
    row = changed["runs"]["ft"]["stages"]["student"]["log"][0]
    row["ft_loss"] *= 1 + 2 * golden.LOSS_RTOL
    problems = golden.compare_numbers(recorded, changed)
    assert len(problems) == 1 and problems[0].startswith(
        "ft/student/epoch 0/ft_loss: recorded")
    changed["runs"]["ft"]["stages"]["student"]["weights"]["model.keras"] = "0" * 64
    assert golden.compare_weights(recorded, changed) == [
        f"ft/student/model.keras: weights differ (SHA-256 "
        f"{recorded['runs']['ft']['stages']['student']['weights']['model.keras'][:12]}"
        f"... recorded, 000000000000... now)"]


def test_losses_and_accuracies_match_the_golden_run(measured):
    problems = golden.compare_numbers(load_golden(), measured)
    assert not problems, "\n".join(problems)


def test_weights_are_bit_identical_on_the_recording_machine(measured):
    recorded = load_golden()
    other = golden.machine_differences(recorded, measured)
    if other:
        pytest.skip("another machine, only the numbers are compared: "
                    + "; ".join(other))
    problems = golden.compare_weights(recorded, measured)
    assert not problems, "\n".join(problems)
