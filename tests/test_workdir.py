"""ft_keras.workdir: one run per workdir, and artifacts that prove they are
whole, through the library and through the command line."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import gin
import keras
import pytest

from ft_keras import config
from ft_keras import experiment as ft_experiment
from ft_keras import stages as ft_stages
from ft_keras import workdir as ft_workdir
from _settings import digits_settings

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
# A quickstart that trains for seconds, exports nothing.
SHORT = ["--gin_file=gin/quickstart.gin",
         "--gin_bindings=training.epochs = 2",
         "--gin_bindings=paraphraser/training.epochs = 1",
         "--gin_bindings=experiment.stages = ['teacher', 'paraphraser', "
         "'student', 'evaluate']"]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()
    # Names start afresh; no full garbage collection (this file runs last on
    # its test worker, which collected 34 s of earlier files' garbage here).
    keras.backend.clear_session(free_memory=False)


def train(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "ft_keras.train", *args], cwd=REPO, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def holder(workdir):
    """A process that takes the workdir's lock and keeps it."""
    script = ("import sys, time; from ft_keras import workdir as w; "
              "w.WorkdirLock(sys.argv[1]).acquire(); print('locked', "
              "flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", script, str(workdir)],
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path):
    process = holder(tmp_path)
    try:
        with pytest.raises(ft_workdir.WorkdirError) as error:
            ft_workdir.WorkdirLock(tmp_path).acquire()
        message = str(error.value)
        assert str(tmp_path) in message and "in use by another run" in message
        assert f"host {socket.gethostname()}, pid {process.pid}" in message
    finally:
        process.send_signal(signal.SIGKILL)  # no clean-up of any kind
        process.wait()
    # The lock file is still there, the lock is not.
    assert (tmp_path / ft_workdir.LOCK_FILE).exists()
    with ft_workdir.WorkdirLock(tmp_path) as lock:
        assert lock.held
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
    assert not lock.held


def test_a_second_run_on_a_workdir_in_use_exits_2_and_the_first_finishes(
    tmp_path
):
    workdir = tmp_path / "w"
    first = train(*SHORT, f"--workdir={workdir}")
    lock_file = workdir / ft_workdir.LOCK_FILE
    deadline = time.monotonic() + 120
    while f"pid {first.pid}," not in (
        lock_file.read_text() if lock_file.exists() else ""
    ):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    # The same command, and one that would delete the workdir.
    for extra in ([], ["--overwrite"]):
        second = train(*SHORT, f"--workdir={workdir}", *extra)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("ft_keras: error: The workdir ")
        assert str(workdir) in line and f"pid {first.pid}" in line
        # Refused at once, not after waiting for the lock: the first run
        # still holds it.
        assert first.poll() is None
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["evaluation"]) == {"teacher", "student"}


def settings(**experiment):
    return digits_settings(**experiment)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workdir whose teacher, paraphraser and student stages finished
    (two steps each: the dry run's)."""
    gin.clear_config()
    workdir = tmp_path_factory.mktemp("finished")
    ft_experiment.Experiment(
        workdir, dry_run=True,
        settings=settings(stages=("teacher", "paraphraser", "student"))).run()
    return workdir


def copy_of(finished, tmp_path):
    import shutil
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def test_each_stage_records_its_artifacts(finished):
    for stage, names in ft_stages.artifacts(
            [config.FactorTransferConfig("stage3", "stage3")]).items():
        if stage == "baseline":
            continue
        recorded = json.loads((finished / stage / "stage.json").read_text())
        for name in names:
            assert recorded["artifacts"][name] == ft_workdir.fingerprint(
                finished / stage / name)
    # Nothing half-written is left beside them.
    assert not list(finished.glob("**/*.tmp*"))


def state(path):
    return ft_workdir.fingerprint(path) if path.exists() else None


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(1000)


def flip_a_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage, message", [
    (truncate, r"is truncated or changed: 1,000 bytes, its stage wrote"),
    (flip_a_byte, r"has changed since its stage wrote it \(SHA-256 differs\)"),
    (os.remove, r"is missing, though its stage finished and recorded it"),
])
@pytest.mark.parametrize("artifact", ["teacher/model.keras",
                                      "paraphraser/paraphraser.keras"])
def test_a_damaged_artifact_stops_the_next_run_naming_it(
    finished, tmp_path, damage, message, artifact
):
    workdir = copy_of(finished, tmp_path)
    damage(workdir / artifact)
    damaged = state(workdir / artifact)
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=message) as error:
        ft_experiment.Experiment(
            workdir, dry_run=True,
            settings=settings(stages=("student", "evaluate")))
    assert str(workdir / artifact) in str(error.value)
    stage_dir = str(workdir / artifact.split("/")[0])
    assert f"delete {stage_dir} and rerun the same command" in str(error.value)
    # Nothing was redone over it.
    assert state(workdir / artifact) == damaged


def test_an_unrecorded_artifact_that_cannot_be_read_is_named(
    finished, tmp_path
):
    # A workdir written before fingerprints: nothing to compare with, so
    # the damage shows when the file is loaded, and is named then.
    workdir = copy_of(finished, tmp_path)
    stage_json = workdir / "teacher" / "stage.json"
    stage = json.loads(stage_json.read_text())
    del stage["artifacts"]
    stage_json.write_text(json.dumps(stage))
    truncate(workdir / "teacher" / "model.keras")
    experiment = ft_experiment.Experiment(
        workdir, dry_run=True, settings=settings(stages=("evaluate",)))
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=r"teacher/model.keras cannot be read .*"
                             r"may be truncated or corrupt"):
        experiment.run()


def test_the_cli_exits_2_with_one_line_for_a_truncated_artifact(tmp_path):
    workdir = tmp_path / "w"
    # The quickstart's teacher stage, on its smaller network: the check of
    # the artifact is the same for any.
    args = ["--gin_file=gin/quickstart.gin", f"--workdir={workdir}",
            "--gin_bindings=teacher/training.epochs = 1",
            "--gin_bindings=teacher/network.name = 'wrn10_1'",
            "--gin_bindings=experiment.stages = ['teacher']"]
    first = train(*args)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    truncate(workdir / "teacher" / "model.keras")
    second = train(*args)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("ft_keras: error: The artifact ")
    assert "teacher/model.keras is truncated" in lines[-1]
    assert "stage teacher" not in out  # not retrained over it


def other_process_can_lock(workdir):
    script = ("import sys; from ft_keras import workdir as w\n"
              "try:\n    w.WorkdirLock(sys.argv[1]).acquire()\n"
              "except w.WorkdirError:\n    sys.exit(3)\n")
    code = subprocess.run([sys.executable, "-c", script, str(workdir)],
                          cwd=REPO, env=ENV, timeout=300).returncode
    assert code in (0, 3)
    return code == 0


def test_an_experiment_holds_the_lock_while_it_runs(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    experiment = ft_experiment.Experiment(
        workdir, dry_run=True, settings=settings(stages=("evaluate",)))
    assert not other_process_can_lock(workdir)
    experiment.run()  # releases it at the end ...
    assert other_process_can_lock(workdir)
    process = holder(workdir)
    try:
        with pytest.raises(ft_experiment.ConfigurationError,
                           match=f"pid {process.pid}"):
            experiment.run()  # ... and takes it again to run again
    finally:
        process.kill()
        process.wait()


def test_writes_are_whole_or_absent(tmp_path):
    ft_workdir.write_json(tmp_path / "a.json", {"x": 1})
    assert ft_workdir.read_json(tmp_path / "a.json") == {"x": 1}
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ft_workdir.save_model(model, str(tmp_path / "m.keras"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.keras"]
    assert ft_workdir.check_artifact(tmp_path / "m.keras")  # unrecorded: as is
    assert not ft_workdir.check_artifact(tmp_path / "absent.keras")


def test_a_refused_config_leaves_a_new_workdir_unmade(tmp_path):
    workdir = tmp_path / "new"
    bad = settings(stages=("teacher",))
    bad = dataclasses.replace(bad, network={
        **bad.network, "student": config.NetworkConfig("wrn10_1", {"alpha": 1})})
    with pytest.raises(ft_experiment.ConfigurationError, match="'alpha'"):
        ft_experiment.Experiment(workdir, settings=bad, dry_run=True)
    assert not workdir.exists()


def test_a_refused_config_leaves_a_workdir_as_it_was_and_the_fixed_rerun_resumes(
        finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    def files():
        return {p: state(p) for p in workdir.rglob("*")
                if p.is_file() and p.name != ".lock"}

    before = files()
    # A tap that does not exist, with --overwrite too: nothing is written
    # or deleted.
    bad = settings(stages=("teacher", "paraphraser", "student"))
    bad = dataclasses.replace(bad, distillation=config.DistillationConfig(
        terms=[config.FactorTransferConfig("stage3", "stage9")]))
    for overwrite in (False, True):
        with pytest.raises(ft_experiment.ConfigurationError, match="'stage9'"):
            ft_experiment.Experiment(workdir, settings=bad, dry_run=True,
                                     overwrite=overwrite)
        assert files() == before
    # The corrected command is the original one: it finds its workdir.
    again = ft_experiment.Experiment(
        workdir, dry_run=True,
        settings=settings(stages=("teacher", "paraphraser", "student")))
    assert again.workdir.done("student", "model.keras")
    again.close()


def test_a_read_only_command_on_another_config_names_the_saved_one(
        finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    other = settings(stages=("evaluate",), representative_batches=3)
    with pytest.raises(ft_experiment.ConfigurationError) as error:
        ft_experiment.Experiment(workdir, settings=other, dry_run=True)
    message = str(error.value)
    assert message.endswith(
        f"Give the config it was trained with, saved in the workdir: "
        f"--gin_file={workdir}/config.gin")
    assert "overwrite" not in message and "delete" not in message
    # A training command on it may start over.
    with pytest.raises(ft_experiment.ConfigurationError, match="--overwrite"):
        ft_experiment.Experiment(
            workdir, settings=settings(stages=("teacher",), representative_batches=3),
            dry_run=True)
