"""Writing a workdir safely: the lock, whole files, artifact fingerprints.

A workdir is written by one run at a time, and its artifacts prove they are
whole:

- `WorkdirLock`: an exclusive `flock` on `<workdir>/.lock`, which holds the
  host and pid of the run. The kernel drops the lock when that process ends,
  however it ends (SIGKILL, a crash, a power loss: the file stays, the lock
  does not), so a lock never outlives its run.
- `save_model`, `write_json`, `write_text`, `replace_durably`: written to
  a temporary file, flushed to disk (`fsync`), then renamed over the
  target, so a file is either the old one or the whole new one
  (`ft_keras.checkpoint` writes its checkpoints so too).
- `record_artifacts`, `check_artifact`: each stage records the size and
  SHA-256 of its artifacts in its `stage.json` when it finishes; a later
  run checks them before it uses one, and a missing, truncated or changed
  artifact stops it with a `WorkdirError` naming the file and how to redo
  its stage.

Example:

```python
import tempfile
workdir = tempfile.mkdtemp()
with WorkdirLock(workdir):
    write_json(f"{workdir}/results.json", {"top1": 0.9})
```
"""

import csv
import datetime
import fcntl
import hashlib
import json
import os
import socket

from ft_keras._validation import ConfigurationError

LOCK_FILE = ".lock"
STAGE_FILE = "stage.json"
# Locks this process holds, by real path: a second `Experiment` on the
# same workdir in one process takes the lock over instead of refusing.
_HELD = {}


class WorkdirError(ConfigurationError):
    """The workdir is in use, or holds an artifact that is not whole."""


class WorkdirLock:
    """An exclusive lock on a workdir, released when the run ends.

    Args:
        workdir: The directory (created if needed).

    Raises:
        WorkdirError: From `acquire`, when another process holds the lock;
            the message names the workdir and that process (host, pid and
            start time).
    """

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd = None

    def acquire(self):
        os.makedirs(self.workdir, exist_ok=True)
        key = os.path.realpath(self.path)
        previous = _HELD.pop(key, None)
        if previous is not None:
            previous.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 1024).decode(errors="replace").strip()
            os.close(fd)
            raise WorkdirError(
                f"The workdir {self.workdir} is in use by another run "
                f"({holder or 'unknown process'}): wait for it to finish or "
                "stop it, or give another --workdir."
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"host {socket.gethostname()}, pid {os.getpid()}, started "
            f"{started}\n".encode(),
        )
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = self
        return self

    def release(self):
        """Releases the lock (the file stays: the next run overwrites it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if _HELD is not None and _HELD.get(os.path.realpath(self.path)) is self:
            del _HELD[os.path.realpath(self.path)]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self):
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit, os may be gone
            pass


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp, path):
    """Flushes `tmp` to disk and renames it to `path`, durably."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_file(os.path.dirname(os.path.abspath(path)))


def save_model(model, path):
    """`model.save(path)` (a `.keras` file), whole or not at all."""
    tmp = f"{path[: -len('.keras')]}.tmp.keras"
    model.save(tmp)
    replace_durably(tmp, path)


def write_json(path, value):
    """Writes `value` as JSON to `path`, whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    replace_durably(tmp, path)


def write_text(path, text):
    """Writes the string `text` to `path`, whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    replace_durably(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def last_logged(path, key):
    """The last epoch's `key` in a stage's `log.csv` (`CSVLogger`), as a
    float; None if the file or the column is missing or empty."""
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(key)]
    return float(rows[-1][key]) if rows else None


def fingerprint(path):
    """`{"bytes": size, "sha256": hex digest}` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def record_artifacts(stage_dir, names, extra=None):
    """Adds the fingerprints of `names` (files in `stage_dir`) to
    `stage_dir/stage.json`, creating it if needed, with the entries of the
    dict `extra` (written in the same atomic write)."""
    path = os.path.join(stage_dir, STAGE_FILE)
    stage = read_json(path) if os.path.exists(path) else {}
    stage.update(extra or {})
    artifacts = stage.setdefault("artifacts", {})
    for name in names:
        artifacts[name] = fingerprint(os.path.join(stage_dir, name))
    write_json(path, stage)


def _redo_hint(stage_dir):
    return (
        f"delete {stage_dir} and rerun the same command to redo the "
        f"{os.path.basename(stage_dir)} stage (and later stages that used it)"
    )


def check_artifact(path):
    """Returns whether the artifact `path` exists, after checking it.

    Returns False when neither it nor a record of it exists (its stage has
    not finished). Raises a `WorkdirError` naming the file when its stage
    recorded it (`record_artifacts`) and it is missing, or its size or
    SHA-256 differ. An artifact of a stage that recorded nothing (a workdir
    written before fingerprints) is taken as it is.
    """
    stage_dir, name = os.path.split(os.path.abspath(path))
    stage_json = os.path.join(stage_dir, STAGE_FILE)
    recorded = None
    if os.path.exists(stage_json):
        recorded = read_json(stage_json).get("artifacts", {}).get(name)
    if recorded is None:
        return os.path.exists(path)
    if not os.path.exists(path):
        raise WorkdirError(
            f"The artifact {path} is missing, though its stage finished "
            f"and recorded it: {_redo_hint(stage_dir)}."
        )
    size = os.path.getsize(path)
    if size != recorded["bytes"]:
        raise WorkdirError(
            f"The artifact {path} is truncated or changed: {size:,} bytes, "
            f"its stage wrote {recorded['bytes']:,}. {_redo_hint(stage_dir)}."
        )
    if fingerprint(path)["sha256"] != recorded["sha256"]:
        raise WorkdirError(
            f"The artifact {path} has changed since its stage wrote it "
            f"(SHA-256 differs): {_redo_hint(stage_dir)}."
        )
    return True


def unreadable(path, error):
    """The `WorkdirError` for an artifact that exists but cannot be loaded."""
    return WorkdirError(
        f"The artifact {path} cannot be read ({str(error).splitlines()[0]}); "
        f"it may be truncated or corrupt: {_redo_hint(os.path.dirname(path))}."
    )
