"""The run's record in its workdir: its config, artifacts and results.

`RunWorkdir` holds the workdir of one run: its lock, the config check, each
stage's artifacts (done, required, saved) and `results.json`.

It is what the runner's stages read from and write to; it is a path too
(`os.fspath(workdir)`, `str(workdir)`). The file formats, the lock and the
fingerprints are `ft_keras.workdir`'s.

A refused run leaves the workdir as it was: `open` locks it and checks that
it holds this config, writing nothing; `commit` (after every other check
passed) deletes an `--overwrite`n run and writes the config files;
`abandon` releases it and removes a workdir this run created.

Example:

```python
workdir = RunWorkdir("runs/quickstart", strategy)
workdir.open(config_text, overwrite=False, read_only=False)
workdir.commit(config_text, operative_config_text, overwrite=False)
if not workdir.done("teacher", "model.keras"):
    ...  # train the teacher, then workdir.save("teacher", {"model.keras": m})
```
"""

import difflib
import os
import re
import shutil

from ft_keras import checkpoint as ft_checkpoint
from ft_keras import distribute
from ft_keras import preemption
from ft_keras import stages
from ft_keras import workdir as ft_workdir

WorkdirError = ft_workdir.WorkdirError


# Bindings that may change between runs of the same experiment: the stages
# (e.g. to export later), where it runs (one process, a cluster) and how
# the exported files are made and measured.
RUNTIME_BINDINGS = (
    r"experiment\.stages|experiment\.strategy|cluster\.\w+|deployment\.\w+"
)


def comparable_config(config_str):
    """A config as compared with the one a workdir holds: its bindings
    without `RUNTIME_BINDINGS` and comments."""
    bindings = re.sub(
        rf"^(?:{RUNTIME_BINDINGS}) = .*?(?=^\S|\Z)",
        "",
        config_str,
        flags=re.M | re.S,
    )
    return "\n".join(
        line
        for line in bindings.splitlines()
        if line.strip() and not line.startswith("#")
    )


class RunWorkdir(os.PathLike):
    """The workdir of one run, on every worker of a cluster.

    Only the chief writes the workdir; another worker writes what it must
    into its own directory (`output`, `ft_keras.distribute.worker_dir`).

    Args:
        path: The workdir.
        strategy: The run's `tf.distribute` strategy.
    """

    def __init__(self, path, strategy):
        self.root = os.path.abspath(path)
        self.strategy = strategy
        self.is_chief = distribute.is_chief(strategy)
        # Where this process writes: the workdir, or a worker's temp dir.
        self.output_dir = distribute.worker_dir(self.root, strategy)
        self.lock = ft_workdir.WorkdirLock(self.root)
        self.created = not os.path.exists(self.root)
        self._fresh = False  # --overwrite: its artifacts are to be deleted
        self._whole = set()  # artifacts `done` has checked whole

    def __fspath__(self):
        return self.root

    def __str__(self):
        return self.root

    def path(self, *parts):
        """`<workdir>/<parts>`."""
        return os.path.join(self.root, *parts)

    def output(self, *parts):
        """Where this process writes `parts` (see `output_dir`)."""
        return os.path.join(self.output_dir, *parts)

    def open(self, requested_config, overwrite=False, read_only=False):
        """Locks the workdir and checks that it holds `requested_config`
        (unless `overwrite`); writes nothing else.

        Raises:
            WorkdirError: it is locked, or holds another config (the message
                says how to go on: `read_only` runs give its own config).
        """
        self._fresh = overwrite
        if not self.is_chief:
            distribute.remove_worker_dir(self.output_dir, self.root)
            os.makedirs(self.output_dir)
        else:
            # Before anything is read or deleted: a second run on a workdir
            # in use stops here, and --overwrite cannot delete a live run.
            self.lock.acquire()
        path = self.path("config.gin")
        if overwrite or not os.path.exists(path):
            return
        with open(path) as f:
            saved = f.read()
        if re.search(r"^distillation\.method = ", saved, flags=re.M):
            raise WorkdirError(
                f"The workdir {self.root} was written by an earlier ft_keras, "
                "whose `distillation.method` named the method; a method is "
                "now its list of terms (`distillation.terms`, "
                "gin/methods/*.gin), so this run cannot resume it: use "
                "another --workdir, or --overwrite to start over."
            )
        saved = comparable_config(saved)
        requested = comparable_config(requested_config)
        if saved == requested:
            return
        diff = [
            line
            for line in difflib.unified_diff(
                saved.splitlines(), requested.splitlines(), lineterm="", n=0
            )
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        ]
        if read_only:
            fix = (
                "Give the config it was trained with, saved in the workdir: "
                f"--gin_file={path}"
            )
        else:
            fix = "Use another --workdir, or --overwrite to delete it and start over."
        raise WorkdirError(
            f"The workdir {self.root} holds an experiment with a "
            f"different config, so it cannot be resumed. Differences "
            f"(- saved, + now): {'; '.join(diff[:6])}. {fix}"
        )

    def commit(self, requested_config, operative_config, overwrite=False):
        """After every check passed: `overwrite` deletes the old run, and
        the config files are written."""
        if overwrite and self.is_chief:
            for name in os.listdir(self.root):
                if name != ft_workdir.LOCK_FILE:
                    target = self.path(name)
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)
                    else:
                        os.remove(target)
        self._fresh = False
        self._whole.clear()
        if self.is_chief:
            ft_workdir.write_text(self.path("config.gin"), requested_config)
        with open(self.output("operative_config.gin"), "w") as f:
            f.write(operative_config)
        # Other workers read the workdir after the chief has cleared it.
        distribute.barrier(self.strategy)

    def abandon(self):
        """A refused start: releases the workdir, and removes it if this
        run created it (it holds only the lock file then)."""
        self.release()
        if self.is_chief and self.created and os.path.isdir(self.root):
            if set(os.listdir(self.root)) <= {ft_workdir.LOCK_FILE}:
                shutil.rmtree(self.root, ignore_errors=True)

    def acquire(self):
        """Locks the workdir again (a run after `release`), on the chief."""
        if self.is_chief and not self.lock.held:
            self.lock.acquire()

    def release(self):
        """Releases the lock; it also ends with the process."""
        self.lock.release()

    def done(self, stage, artifact):
        """Whether `stage` left `artifact`, checked against its recorded
        size and SHA-256 (a `WorkdirError` naming it if it differs). An
        artifact found whole is hashed once per run; one not there yet is
        looked for again, since a stage may write it."""
        path = self.path(stage, artifact)
        if self._fresh:  # --overwrite: the workdir's artifacts do not count
            return False
        if path in self._whole:
            return True
        if ft_workdir.check_artifact(path):
            self._whole.add(path)
            return True
        return False

    def require(self, stage, artifact):
        """The path of `stage`'s finished `artifact`.

        Raises:
            WorkdirError: the stage has not finished.
        """
        path = self.path(stage, artifact)
        if not self.done(stage, artifact):
            raise WorkdirError(
                f"The {stage} stage has not finished in {self.root} (no "
                f"{path}): enable it in `experiment.stages`."
            )
        return path

    def save(self, stage, artifacts, extra=None):
        """Saves `{file name: model}` into `stage`'s directory, each whole
        or not at all, and records their fingerprints in its stage.json:
        the stage is finished, and its checkpoints go. `extra`, a function
        called once the models are saved, returns more entries for the
        stage.json. A preemption signal waits until the record is written."""
        stage_dir = self.output(stage)
        os.makedirs(stage_dir, exist_ok=True)
        with preemption.deferred():
            for name, model in artifacts.items():
                # Later stages use on every replica what the file holds.
                distribute.sync_replica_means(model)
                ft_workdir.save_model(model, os.path.join(stage_dir, name))
            ft_workdir.record_artifacts(
                stage_dir, list(artifacts), extra=extra() if extra else None
            )
            ft_checkpoint.delete(os.path.join(stage_dir, "backup"))

    def results(self):
        """This process's `results.json` so far (`{}` before any)."""
        path = self.output("results.json")
        return ft_workdir.read_json(path) if os.path.exists(path) else {}

    def update_results(self, **entries):
        """Adds `entries` to results.json, with every training stage's
        stage.json and the workdir; returns the whole dict."""
        results = self.results()
        results.update(entries)
        finished = {}
        for stage in stages.TRAINING:
            stage_json = self.output(stage, ft_workdir.STAGE_FILE)
            if os.path.exists(stage_json):
                record = ft_workdir.read_json(stage_json)
                # Resumption state, not a result (`fit.align_python_random`).
                record.pop("python_random", None)
                finished[stage] = record
        results["stages"] = finished
        results["workdir"] = self.root
        ft_workdir.write_json(self.output("results.json"), results)
        return results
