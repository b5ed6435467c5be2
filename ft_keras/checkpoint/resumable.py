"""Checkpoints that survive a kill at any moment and resume a `fit` exactly.

`ResumableCheckpoint` is the runner's replacement for
`keras.callbacks.BackupAndRestore`. What Keras's callback does not do, and
this one does:

- **Whole or not at all.** The weights go to a temporary file, flushed to
  disk, then renamed; the previous checkpoint is kept until the new one is
  complete and recorded. A kill during a write (keras-team/keras#20463
  left an unreadable `latest.weights.h5` behind) costs at most the
  checkpoint being written.
- **Checked on load.** `checkpoint.json` records the size and SHA-256 of
  each weights file; a newest checkpoint that does not match (truncated,
  corrupt) is skipped with one warning line for the previous one.
- **The whole training state.** With the weights and optimizer (what
  `model.save_weights` writes): the state of every layer's
  `keras.random.SeedGenerator` (dropout masks; keras-team/keras#19796),
  the position (epoch and step within it) and, mid-epoch, the running
  metric totals, so the epoch's row in the CSV log is the uninterrupted
  run's. The CSV log itself is cut back to its size at the checkpoint, so
  a rerun writes each epoch's row once, and never misses one.
- **Each replica's own statistics.** With several replicas, each keeps
  its own BatchNormalization moving statistics and the weights file holds
  their mean (`ft_keras.distribute.scope`); the checkpoint also keeps every
  replica's copy (`replica_copies`, gathered over the workers)
  and gives each its own back, so a run resumed at any step, on the same
  number of replicas, goes on as the uninterrupted one.
- **Mid-epoch resumption at the next batch.** A checkpoint taken after
  step `s` of epoch `e` restores `e` as the first epoch and counts its
  steps from `s`: the caller fits on the data of epoch `e` without its
  first `s` batches (`dataset.skip(s)`, one epoch), then on the rest, as
  `ft_keras.experiment` does. A plain `fit` on the whole dataset replays
  the epoch from its first batch, as `BackupAndRestore` does.
- **Preemption.** After each step it answers a preemption request
  (`ft_keras.preemption`): it saves and raises `Preempted`.

Directory layout: `checkpoint.json`, `latest.weights.h5`,
`previous.weights.h5` (and `tmp.weights.h5` while one is written).
"""

import collections
import os
import shutil

import keras
import numpy as np

from ft_keras import _keras_resume
from ft_keras import distribute
from ft_keras import preemption
from ft_keras import workdir as ft_workdir
from ft_keras.checkpoint import replicas

MANIFEST = "checkpoint.json"
LATEST = "latest.weights.h5"
PREVIOUS = "previous.weights.h5"
_TMP = "tmp.weights.h5"

Position = collections.namedtuple("Position", ["epoch", "step"])
Position.__doc__ = """Where a checkpoint resumes: `step` batches of the
0-based `epoch` are done (0: the epoch starts)."""


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves and restores a `fit`'s whole state, exactly; see the module
    docstring for what it adds to `keras.callbacks.BackupAndRestore`.

    Args:
        directory: Where the checkpoints are kept (created when needed).
        save_freq: `"epoch"` (at the end of each epoch), or a positive int:
            also every `save_freq` steps (counted across epochs).
        name: What to call the training in messages (e.g. the stage).
        csv_log: The `keras.callbacks.CSVLogger` file of this `fit`, cut
            back on restore to its size at the checkpoint. Put the
            `CSVLogger` after this callback: an epoch's checkpoint is
            saved, then its row written, then recorded as written; a
            checkpoint whose row never came is passed over for the
            previous one, which redoes the epoch.
        metadata: A JSON-serialisable dict saved with every checkpoint and
            returned by `restored_metadata` (the runner keeps its data
            stream position there).
        delete_on_end: Delete the checkpoints when `fit` ends normally, as
            `BackupAndRestore` does. The runner passes False and deletes
            them once the stage's artifacts are saved.

    Example:

    ```python
    checkpoint = ResumableCheckpoint("/tmp/run/backup", save_freq=100)
    model.fit(dataset, epochs=10, callbacks=[checkpoint])  # killed? rerun.
    ```
    """

    def __init__(self, directory, save_freq="epoch", name="training",
                 csv_log=None, metadata=None, delete_on_end=True):
        super().__init__()
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive number of steps. "
                f"Received: save_freq={save_freq!r}"
            )
        self.directory = os.path.abspath(directory)
        self.save_freq = save_freq
        self.name = name
        self.csv_log = csv_log
        self.metadata = dict(metadata or {})
        self.delete_on_end = delete_on_end
        self._found = None  # (entry, path, CSV bytes) of the one to use
        self._row_pending = False  # the last save awaits its epoch's row
        self._preempted_at = None  # (signal, epoch, step) to report after the row
        self._searched = False
        self._restored = False
        self._position = Position(0, 0)
        self._first_epoch_offset = 0
        self._pending_metrics = None
        self._since_save = 0
        self._good = None  # (manifest entry, file name) of the newest whole one

    # ------------------------------------------------------------------
    # Finding the checkpoint to resume from.

    def _manifest(self):
        path = os.path.join(self.directory, MANIFEST)
        if not os.path.exists(path):
            return {"checkpoints": []}
        try:
            manifest = ft_workdir.read_json(path)
            entries = manifest["checkpoints"]
        except (ValueError, KeyError, TypeError) as e:
            print(
                f"[ft_keras] warning: {self.name}: {path} cannot be read "
                f"({e}); training starts over.",
                flush=True,
            )
            return {"checkpoints": []}
        return {"checkpoints": entries}

    def _match(self, entry):
        """The weights file that holds `entry` (size and SHA-256), or None."""
        for name in (LATEST, PREVIOUS):
            path = os.path.join(self.directory, name)
            if (
                os.path.exists(path)
                and os.path.getsize(path) == entry["bytes"]
                and ft_workdir.fingerprint(path)["sha256"] == entry["sha256"]
            ):
                return path
        return None

    def _find(self):
        """The newest checkpoint whose weights file is whole, warning once
        when a newer one is not; None when there is none."""
        if self._searched:
            return self._found
        self._searched = True
        entries = self._manifest()["checkpoints"]
        newest_whole = True
        for i, entry in enumerate(entries):
            path = self._match(entry)
            if path is None:
                newest_whole = newest_whole and i > 0
                continue
            csv_bytes = self._logged_bytes(entry)
            if csv_bytes is None:
                # Killed after this epoch-end checkpoint but before the
                # epoch's CSV row: the previous one redoes the epoch.
                continue
            if not newest_whole:
                newest = entries[0]
                print(
                    f"[ft_keras] warning: {self.name}: the newest checkpoint "
                    f"in {self.directory} (epoch {newest['epoch'] + 1}, step "
                    f"{newest['step']}) is truncated or corrupt; resuming "
                    f"from the previous one (epoch {entry['epoch'] + 1}, "
                    f"step {entry['step']}).",
                    flush=True,
                )
            self._found = (entry, path, csv_bytes)
            self._good = (entry, os.path.basename(path))
            return self._found
        if entries:
            print(
                f"[ft_keras] warning: {self.name}: no checkpoint in "
                f"{self.directory} is whole; training starts over.",
                flush=True,
            )
        elif os.path.exists(os.path.join(self.directory, LATEST)):
            print(
                f"[ft_keras] warning: {self.name}: {self.directory} holds "
                f"weights without a {MANIFEST} (keras.callbacks."
                "BackupAndRestore's, from an older ft_keras); training starts "
                "over.",
                flush=True,
            )
        return None

    @property
    def position(self):
        """The `Position` the next `fit` resumes at (`Position(0, 0)`
        without a checkpoint), read without loading any weights."""
        if self._restored:
            return self._position
        found = self._find()
        if found is None:
            return Position(0, 0)
        return Position(found[0]["epoch"], found[0]["step"])

    @property
    def restored_metadata(self):
        """The `metadata` saved with the checkpoint resumed from, or None."""
        found = self._find()
        return dict(found[0].get("metadata", {})) if found else None

    # ------------------------------------------------------------------
    # Restoring.

    def on_train_begin(self, logs=None):
        if not self._restored:
            self._restored = True
            self._restore()
        _keras_resume.set_initial_epoch(self.model, self._position.epoch)

    def _restore(self):
        found = self._find()
        self._cut_csv_log(found[2] if found else 0)
        if found is None:
            return
        entry, path, _ = found
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        states = _keras_resume.seed_generator_states(model)
        saved = entry.get("seed_states", [])
        if len(saved) != len(states):
            raise ValueError(
                f"The checkpoint in {self.directory} holds {len(saved)} "
                f"random-layer states; the model has {len(states)}: it was "
                f"written by another model. Delete {self.directory} to start "
                f"{self.name} over."
            )
        for variable, value in zip(states, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        copies = entry.get("replica_copies", [])
        if copies and len(copies[0]) == self._replicas():
            replicas.restore_replica_copies(self.model, copies)
        self._position = Position(entry["epoch"], entry["step"])
        self._first_epoch_offset = entry["step"]
        self._pending_metrics = entry.get("metrics") if entry["step"] else None

    def _cut_csv_log(self, size):
        """Cuts the CSV log back to `size` bytes, its header line at least
        (the `CSVLogger` after this callback appends below it)."""
        if not self.csv_log or not os.path.exists(self.csv_log):
            return
        with open(self.csv_log, "rb") as f:
            header = len(f.readline())
        target = max(size, header)
        if os.path.getsize(self.csv_log) > target:
            os.truncate(self.csv_log, target)

    def _add_saved_metrics(self):
        """Mid-epoch resumption: after the first step, adds the running
        metric totals saved at the checkpoint. Keras metrics accumulate by
        addition from zero (`total += x`, `count += n`), so `saved + x` is
        exactly the uninterrupted run's value."""
        saved, self._pending_metrics = self._pending_metrics, None
        variables = _metric_variables(self.model)
        if len(saved) != len(variables):
            raise ValueError(
                f"The checkpoint in {self.directory} holds {len(saved)} "
                f"metric values; the model has {len(variables)}: it was "
                f"compiled with other metrics. Delete {self.directory} to "
                f"start {self.name} over."
            )
        for variable, value in zip(variables, saved):
            variable.assign(
                np.asarray(value, dtype=variable.dtype) + variable.numpy()
            )

    # ------------------------------------------------------------------
    # Saving.

    def on_epoch_begin(self, epoch, logs=None):
        self._record_row()
        self._position = Position(epoch, self._first_epoch_offset)
        self._first_epoch_offset = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._pending_metrics is not None:
            self._add_saved_metrics()
        self._position = Position(self._position.epoch, self._position.step + 1)
        self._since_save += 1
        if batch + 1 == self.params.get("steps"):
            # The epoch's last batch: its end (after validation) saves and
            # answers a preemption; a checkpoint here would resume into an
            # empty rest of the epoch.
            return
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self.save()
        signal_name = self._preemption()
        if signal_name:
            if self._since_save:
                self.save()
            raise preemption.Preempted(
                signal_name, self._position.epoch + 1, self._position.step,
            )

    def _replicas(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        return 1 if strategy is None else strategy.num_replicas_in_sync

    def _preemption(self):
        """The preemption signal to answer now, or None: this process's,
        and with several workers any worker's, so that all stop at the
        same step (one collective per step, `distribute.any_worker`)."""
        local = preemption.requested()
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is None or not distribute.any_worker(strategy, local is not None):
            return local
        return local or "a signal to another worker"

    def on_epoch_end(self, epoch, logs=None):
        """Saves before the `CSVLogger` after this callback writes the
        epoch's row (a kill while a save waits for other workers leaves the
        log at the last checkpoint); the next event records the row."""
        steps = self._position.step
        self._position = Position(epoch + 1, 0)
        self.save(row_pending=True)
        signal_name = self._preemption()
        if signal_name:
            self._preempted_at = (signal_name, epoch + 1, steps)

    def _record_row(self):
        """Records in checkpoint.json that the last epoch's CSV row is
        written, then answers a preemption request of that epoch's end."""
        if self._row_pending:
            self._row_pending = False
            path = os.path.join(self.directory, MANIFEST)
            manifest = self._manifest()
            newest = manifest["checkpoints"][0]
            newest["row_pending"] = False
            newest["csv_bytes"] = self._csv_size()
            ft_workdir.write_json(path, manifest)
            self._good = (newest, LATEST)
        if self._preempted_at is not None:
            signal_name, epoch, step = self._preempted_at
            self._preempted_at = None
            raise preemption.Preempted(signal_name, epoch, step)

    def on_train_end(self, logs=None):
        self._record_row()
        _keras_resume.set_initial_epoch(self.model, None)
        if self.delete_on_end:
            delete(self.directory)
            # A next `fit` with this callback starts afresh.
            self._searched = self._restored = False
            self._found = self._good = None
            self._position = Position(0, 0)

    def save(self, row_pending=False):
        """Writes a checkpoint at the current position, whole or not at
        all, keeping the previous one until it is recorded. `row_pending`:
        the epoch's CSV row is still to be written (`_record_row`)."""
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, _TMP)
        latest = os.path.join(self.directory, LATEST)
        self.model.save_weights(tmp, overwrite=True)
        copies = replicas.replica_copies(self.model)
        entry = {
            "epoch": self._position.epoch,
            "step": self._position.step,
            **ft_workdir.fingerprint(tmp),
            "seed_states": [
                np.asarray(v.numpy()).tolist()
                for v in _keras_resume.seed_generator_states(self.model)
            ],
            "metrics": [
                np.asarray(v.numpy()).tolist()
                for v in _metric_variables(self.model)
            ],
            # Each replica's own BN statistics (the weights file holds their
            # mean): restored, the replicas go on as if never stopped.
            "replica_copies": [c.tolist() for c in copies],
            "csv_bytes": self._csv_size(),
            "row_pending": row_pending and bool(self.csv_log),
            "metadata": self.metadata,
        }
        previous = []
        if self._good is not None:
            previous = [self._good[0]]
            if self._good[1] == LATEST:
                # The newest whole checkpoint becomes the previous one.
                os.replace(latest, os.path.join(self.directory, PREVIOUS))
        ft_workdir.replace_durably(tmp, latest)
        ft_workdir.write_json(
            os.path.join(self.directory, MANIFEST),
            {"checkpoints": [entry] + previous},
        )
        self._good = (entry, LATEST)
        self._row_pending = entry["row_pending"]
        self._since_save = 0

    def _csv_size(self):
        if self.csv_log and os.path.exists(self.csv_log):
            return os.path.getsize(self.csv_log)
        return 0

    def _logged_bytes(self, entry):
        """The size of the CSV log that goes with `entry`: its recorded
        size, plus the epoch's row when the save preceded it and the row
        was written whole; None when that row was never written."""
        size = entry.get("csv_bytes", 0)
        if not entry.get("row_pending"):
            return size
        if not self.csv_log or not os.path.exists(self.csv_log):
            return None
        with open(self.csv_log, "rb") as f:
            f.seek(size)
            if size == 0:
                f.readline()  # CSVLogger writes the header with the first row
            row = f.readline()
            end = f.tell()
        return end if row.endswith(b"\n") else None


def _metric_variables(model):
    return [v for metric in model.metrics for v in metric.variables]


def delete(directory):
    """Removes a checkpoint directory (its stage is finished)."""
    shutil.rmtree(directory, ignore_errors=True)
