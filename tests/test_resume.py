"""Exact, crash-safe resumption: `ft_keras.checkpoint`, `ft_keras.preemption`
and the runner's resume (`Experiment._resume_fit`).

The end-to-end test kills a small seeded run (SIGKILL twice, SIGTERM once)
at points it does not choose exactly, reruns it each time, and checks that
the weights and log.csv rows end bit-identical to an uninterrupted run's on
the same machine."""

import hashlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from ft_keras import _keras_resume
from ft_keras import checkpoint as ft_checkpoint
from ft_keras import distribute
from ft_keras import preemption

from _interrupt import Killed
from _interrupt import StopAt

REPO = pathlib.Path(__file__).resolve().parent.parent
STAGES = ("teacher", "paraphraser", "student", "baseline")
# The quickstart, short: WRN-10-1 both, 5 steps an epoch, a checkpoint
# every 2 steps (mid-epoch ones too); epochs 1, 1, 2 and 2 (the student
# trained alone, whose initial weights are drawn after the other stages');
# MixUp on top of the digits' crop (RandAugment's resumption: test_data.py).
BINDINGS = [
    "teacher/network.name = 'wrn10_1'",
    "training.epochs = 2",
    "teacher/training.epochs = 1",
    "paraphraser/training.epochs = 1",
    "dataset.batch_size = 256",
    "dataset.options = {'augment': ['mixup']}",
    "experiment.checkpoint_every = 2",
    f"experiment.stages = {list(STAGES)}",
]
ARTIFACTS = {"teacher": "model.keras", "paraphraser": "paraphraser.keras",
             "student": "model.keras", "baseline": "model.keras"}


def _command(workdir):
    return [sys.executable, "-m", "ft_keras.train", "--gin_file=gin/quickstart.gin",
            f"--workdir={workdir}", *(f"--gin_bindings={b}" for b in BINDINGS)]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _run(workdir):
    result = subprocess.run(_command(workdir), cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _manifest(workdir, stage):
    path = workdir / stage / "backup" / ft_checkpoint.MANIFEST
    try:
        return json.loads(path.read_text())["checkpoints"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _interrupt(workdir, stage, signum, after=None):
    """Runs the command and sends `signum` once `stage` has a checkpoint
    (other than `after`); returns the finished process's stdout."""
    process = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            entry = _manifest(workdir, stage)
            if entry is not None and entry != after:
                break
            assert process.poll() is None, "finished before it could be stopped"
            time.sleep(0.01)
        else:
            pytest.fail(f"no checkpoint of stage {stage} in time")
        process.send_signal(signum)
        # A preemption signal is answered after one step and one save: well
        # within the 30 s a scheduler's grace period gives (else this
        # raises `TimeoutExpired`).
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout


def _weights_digest(path):
    """SHA-256 of every weight array in a `.keras` file, in file order."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        data = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(data, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                digest.update(name.encode())
                digest.update(np.asarray(item).tobytes())
        f.visititems(visit)
    return digest.hexdigest()


def _outcome(workdir):
    return {stage: (_weights_digest(workdir / stage / ARTIFACTS[stage]),
                    (workdir / stage / "log.csv").read_text())
            for stage in STAGES}


def test_killed_and_preempted_run_resumes_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    _run(reference)
    workdir = tmp_path / "killed"
    code, _ = _interrupt(workdir, "teacher", signal.SIGKILL)
    assert code == -signal.SIGKILL
    code, _ = _interrupt(workdir, "student", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (workdir / "student" / "model.keras").exists()
    code, stdout = _interrupt(workdir, "student", signal.SIGTERM,
                              after=_manifest(workdir, "student"))
    assert code == preemption.EXIT_CODE, stdout[-2000:]
    lines = [l for l in stdout.splitlines() if "preempted" in l]
    assert len(lines) == 1 and lines[0].startswith(
        "[ft_keras] preempted at stage student, epoch "), lines
    assert lines[0].endswith(
        "checkpoint saved; rerun the same command to continue")
    result = _run(workdir)
    assert "stage student: 2 epochs, resumed at epoch" in result.stdout
    assert _outcome(workdir) == _outcome(reference)
    assert not any((workdir / s / "backup").exists() for s in STAGES)


# ----------------------------------------------------------------------
# The checkpoint callback on a plain `fit`.


def _dropout_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    return model


def _data():
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8)


def _checkpoint(directory, **kwargs):
    return ft_checkpoint.ResumableCheckpoint(
        directory, save_freq=1, delete_on_end=False, **kwargs)


def test_mid_epoch_resume_restores_dropout_state_metrics_and_log(tmp_path):
    straight = _dropout_model()
    log = tmp_path / "straight.csv"
    straight.fit(_data(), epochs=2, verbose=0,
                 callbacks=[keras.callbacks.CSVLogger(str(log), append=True)])
    killed_log = tmp_path / "killed.csv"

    def callbacks(model_dir, *extra):
        return [_checkpoint(model_dir, csv_log=str(killed_log)),
                keras.callbacks.CSVLogger(str(killed_log), append=True), *extra]

    first = _dropout_model()
    with pytest.raises(Killed):
        first.fit(_data(), epochs=2, verbose=0,
                  callbacks=callbacks(tmp_path / "ckpt", StopAt(1, 2)))
    second = _dropout_model()
    resumed = callbacks(tmp_path / "ckpt")
    assert resumed[0].position == ft_checkpoint.Position(1, 2)
    # The rest of epoch 1: its last two batches.
    second.fit(_data().skip(2), initial_epoch=1, epochs=2, verbose=0,
               callbacks=resumed)
    for a, b in zip(straight.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert killed_log.read_text() == log.read_text()


def test_two_replicas_resume_mid_epoch_exactly(tmp_path):
    """Two replicas keep their own BatchNormalization statistics; the
    weights file holds their mean, the checkpoint also each replica's copy,
    so a run resumed at any step goes on as the uninterrupted one (which
    never saved: saving changes nothing). In a process of its own: a second
    MirroredStrategy later in the same process would reuse the collective
    keys of this one's train steps (TensorFlow aborts on the shape clash)."""
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(\n"
        "    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        f"sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
        "import test_resume\n"
        f"test_resume.two_replicas_resume_mid_epoch_exactly({str(tmp_path)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]


def two_replicas_resume_mid_epoch_exactly(tmp_path):
    """The body of the test above, in its subprocess."""
    tmp_path = pathlib.Path(tmp_path)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def model():
        keras.utils.set_random_seed(1)
        with distribute.scope(strategy):
            net = keras.Sequential([
                keras.Input((4,)), keras.layers.Dense(8),
                keras.layers.BatchNormalization(momentum=0.5),
                keras.layers.Dense(1)])
            net.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
        return net

    def data():  # each global batch: two halves of different scales
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)).astype(np.float32)
        x *= np.tile(np.repeat([1.0, 5.0], 4), 8)[:, None].astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8)

    def replica_copies(net):
        state = net.layers[1].moving_mean.value
        return [c.numpy() for c in strategy.experimental_local_results(state)]

    straight = model()
    straight.fit(data(), epochs=2, verbose=0)
    first = model()
    with pytest.raises(Killed):
        first.fit(data(), epochs=2, verbose=0,
                  callbacks=[_checkpoint(tmp_path / "ckpt"), StopAt(0, 3)])
    # Saved after step 3, each replica still has its own statistics.
    a, b = replica_copies(first)
    assert not np.allclose(a, b)
    second = model()
    resumed = _checkpoint(tmp_path / "ckpt")
    assert resumed.position == ft_checkpoint.Position(0, 3)
    second.fit(data().skip(3), epochs=1, verbose=0, callbacks=[resumed])
    second.fit(data(), initial_epoch=1, epochs=2, verbose=0, callbacks=[resumed])
    for x, y in zip(straight.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(replica_copies(straight), replica_copies(second)):
        np.testing.assert_array_equal(x, y)


class _KillAtEpochEdge(keras.callbacks.Callback):
    """Raises at the end of epoch 1 (placed before the CSVLogger: its row
    is not written) or at the start of epoch 2 (the row is written, not yet
    recorded as written)."""

    def __init__(self, where):
        super().__init__()
        self.where = where

    def on_epoch_end(self, epoch, logs=None):
        if self.where == "before_row" and epoch == 1:
            raise Killed

    def on_epoch_begin(self, epoch, logs=None):
        if self.where == "after_row" and epoch == 2:
            raise Killed


@pytest.mark.parametrize("where, position", [
    ("before_row", (1, 3)),  # the epoch is redone from its last checkpoint
    ("after_row", (2, 0)),   # the row is kept, the next epoch starts
])
def test_kill_between_epoch_checkpoint_and_its_log_row(tmp_path, where, position):
    straight = _dropout_model()
    log = tmp_path / "straight.csv"
    straight.fit(_data(), epochs=3, verbose=0,
                 callbacks=[keras.callbacks.CSVLogger(str(log), append=True)])
    killed_log = tmp_path / "killed.csv"

    def callbacks(before=(), between=()):
        checkpoint = _checkpoint(tmp_path / "ckpt", csv_log=str(killed_log))
        return [*before, checkpoint, *between,
                keras.callbacks.CSVLogger(str(killed_log), append=True)]

    kill = [_KillAtEpochEdge(where)]
    with pytest.raises(Killed):
        _dropout_model().fit(_data(), epochs=3, verbose=0, callbacks=(
            callbacks(before=kill) if where == "after_row"
            else callbacks(between=kill)))
    resumed = callbacks()
    epoch, step = resumed[0].position
    assert (epoch, step) == position
    second = _dropout_model()
    if step:
        second.fit(_data().skip(step), initial_epoch=epoch, epochs=epoch + 1,
                   verbose=0, callbacks=resumed)
        epoch += 1
    second.fit(_data(), initial_epoch=epoch, epochs=3, verbose=0,
               callbacks=resumed)
    for a, b in zip(straight.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert killed_log.read_text() == log.read_text()


def test_corrupt_newest_checkpoint_falls_back_to_previous_with_one_warning(
        tmp_path, capsys):
    model = _dropout_model()
    directory = tmp_path / "ckpt"
    with pytest.raises(Killed):
        model.fit(_data(), epochs=2, verbose=0,
                  callbacks=[_checkpoint(directory), StopAt(1, 1)])
    latest = directory / ft_checkpoint.LATEST
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    capsys.readouterr()
    resumed = _checkpoint(directory)
    assert resumed.position == ft_checkpoint.Position(1, 0)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"[ft_keras] warning: training: the newest checkpoint in {directory} "
        "(epoch 2, step 1) is truncated or corrupt; resuming from the previous "
        "one (epoch 2, step 0)."]
    # It loads, and the next checkpoint keeps the good one as the previous.
    again = _dropout_model()
    again.fit(_data().skip(0), initial_epoch=1, epochs=2, verbose=0,
              callbacks=[resumed])
    entries = json.loads((directory / ft_checkpoint.MANIFEST).read_text())
    assert [(e["epoch"], e["step"]) for e in entries["checkpoints"]] == [
        (2, 0), (1, 3)]


def test_unfinished_write_leaves_the_last_checkpoint_in_use(tmp_path):
    model = _dropout_model()
    directory = tmp_path / "ckpt"
    checkpoint = _checkpoint(directory)
    with pytest.raises(Killed):
        model.fit(_data(), epochs=2, verbose=0,
                  callbacks=[checkpoint, StopAt(0, 3)])
    # A write killed half-way: a partial temporary file, nothing recorded.
    (directory / "tmp.weights.h5").write_bytes(b"\x89HDF\r\n")
    assert _checkpoint(directory).position == ft_checkpoint.Position(0, 3)


@pytest.mark.parametrize("batch, step, position", [
    (1, 2, (0, 2)),  # mid-epoch: saved after the step
    (3, 4, (1, 0)),  # the epoch's last step: saved at the epoch's end
])
def test_preemption_request_saves_and_raises_with_exit_code(
        tmp_path, batch, step, position):
    model = _dropout_model()

    class _Signal(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            if b == batch:
                os.kill(os.getpid(), signal.SIGUSR1)

    directory = tmp_path / "ckpt"
    with preemption.handle_signals(), pytest.raises(preemption.Preempted) as e:
        with preemption.deferred():
            model.fit(_data(), epochs=2, verbose=0, callbacks=[
                _Signal(), ft_checkpoint.ResumableCheckpoint(directory)])
    assert e.value.code == preemption.EXIT_CODE
    assert e.value.line("teacher") == (
        f"[ft_keras] preempted at stage teacher, epoch 1, step {step}: "
        "checkpoint saved; rerun the same command to continue")
    assert ft_checkpoint.ResumableCheckpoint(directory).position == position
    # Outside `handle_signals` the handlers and the request are gone.
    assert preemption.requested() is None
    assert signal.getsignal(signal.SIGUSR1) is not preemption._handler


def test_preemption_outside_training_raises_at_once():
    with preemption.handle_signals(), pytest.raises(preemption.Preempted) as e:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert e.value.line("export") == (
        "[ft_keras] preempted (SIGTERM) at stage export: rerun the same "
        "command to continue")


def test_a_finished_fit_deletes_its_checkpoints_and_the_next_starts_afresh(
        tmp_path):
    model = _dropout_model()
    checkpoint = ft_checkpoint.ResumableCheckpoint(tmp_path / "ckpt")
    model.fit(_data(), epochs=2, verbose=0, callbacks=[checkpoint])
    assert not (tmp_path / "ckpt").exists()
    history = model.fit(_data(), epochs=2, verbose=0, callbacks=[checkpoint])
    assert history.epoch == [0, 1]


def test_backup_of_older_runs_without_manifest_is_named_and_replaced(
        tmp_path, capsys):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / ft_checkpoint.LATEST).write_bytes(b"weights of BackupAndRestore")
    checkpoint = _checkpoint(directory)
    assert checkpoint.position == (0, 0)
    assert "without a checkpoint.json" in capsys.readouterr().out
    _dropout_model().fit(_data(), epochs=1, verbose=0, callbacks=[checkpoint])
    assert _checkpoint(directory).position == (1, 0)


def test_save_freq_is_validated():
    with pytest.raises(ValueError, match="Received: save_freq=0"):
        ft_checkpoint.ResumableCheckpoint("/tmp/x", save_freq=0)


def test_private_keras_accessors_on_real_objects():
    model = _dropout_model()
    states = _keras_resume.seed_generator_states(model)
    assert states == [model.layers[1].seed_generator.state]
    _keras_resume.set_initial_epoch(model, 3)
    assert model._initial_epoch == 3
    assert _keras_resume.fit_peeks(model) == 0
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        mirrored = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    assert _keras_resume.fit_peeks(mirrored) == 1


# ----------------------------------------------------------------------
# launch/slurm_train.sh as a batch job: SIGUSR1 passed on, then requeue.

FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
trap 'echo "task got USR1" >> "$FAKE_LOG"; exit 75' USR1
for i in $(seq "$FAKE_STEPS"); do sleep 0.05; done
exit "$FAKE_STATUS"
"""


@pytest.mark.parametrize("signalled", [True, False])
def test_slurm_batch_job_passes_usr1_on_and_requeues(tmp_path, signalled):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\necho "scontrol $*" >> "$FAKE_LOG"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_LOG=str(log), FAKE_STATUS="3", FT_KERAS_BATCH="1",
               FAKE_STEPS="400" if signalled else "1",
               SLURM_JOB_ID="42", GPUS_PER_NODE="0")
    script = subprocess.Popen(
        ["bash", "launch/slurm_train.sh", "p", "job", "gin/quickstart.gin",
         str(tmp_path / "run")], cwd=REPO, env=env)
    if signalled:
        deadline = time.time() + 10
        while not log.exists() and time.time() < deadline:
            time.sleep(0.05)
        script.send_signal(signal.SIGUSR1)
    status = script.wait(timeout=30)
    lines = log.read_text().splitlines()
    if signalled:
        assert status == 0
        assert lines[1:] == ["task got USR1", "scontrol requeue 42"]
    else:
        assert status == 3 and len(lines) == 1  # srun's status; no requeue


def test_fit_creates_the_iterators_that_resumption_counts():
    """Epoch k of a `fit` reads iterator `fit_peeks + ITERATORS_PER_EPOCH * k`
    of its dataset: what `Experiment._resume_fit` skips to."""
    def dataset():
        values = tf.data.Dataset.random(seed=3, rerandomize_each_iteration=True)
        return values.take(8).map(
            lambda v: (tf.cast(v % 1000, tf.float32)[None], tf.zeros([1]))
        ).batch(4)

    seen = []

    class Keep(keras.layers.Layer):
        def call(self, x):
            if not isinstance(x, keras.KerasTensor):
                seen.append(np.asarray(x))
            return x

    model = keras.Sequential([keras.Input((1,)), Keep(), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)
    model.fit(dataset(), epochs=3, verbose=0)
    fresh = dataset()
    iterators = [iter(fresh) for _ in range(3 * _keras_resume.ITERATORS_PER_EPOCH)]
    for epoch in range(3):
        index = (_keras_resume.fit_peeks(model)
                 + _keras_resume.ITERATORS_PER_EPOCH * epoch)
        first_batch = next(iterators[index])[0].numpy()
        np.testing.assert_array_equal(seen[2 * epoch], first_batch)
