"""Graceful preemption: SIGTERM or SIGUSR1 stops a run at a safe point.

Cloud spot VMs and Kubernetes send SIGTERM before they kill a process;
SLURM sends the signal `#SBATCH --signal` asks for. `handle_signals()`
turns either into a request that training answers at its next safe point:

- inside `deferred()` (the runner wraps each `fit` in it), the current
  step finishes, `ft_keras.checkpoint.ResumableCheckpoint` writes its
  checkpoint and raises `Preempted`;
- elsewhere (loading, evaluation, export), `Preempted` is raised at once:
  those write their files whole or not at all, and a rerun redoes them.

`Preempted` is a `SystemExit` with status `EXIT_CODE` (75, `EX_TEMPFAIL`
of sysexits.h: a temporary failure, to be retried), so the process exits
with it unless something catches it; a scheduler requeues on that status
(launch/slurm_train.sh, launch/kubernetes.yaml).

Example:

```python
with handle_signals():
    with deferred():
        model.fit(ds, callbacks=[ResumableCheckpoint("backup")])
```
"""

import contextlib
import signal
import threading

# sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry".
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_state = {"requested": None, "deferred": 0}


class Preempted(SystemExit):
    """The run stopped on a preemption signal; its state is saved.

    A `SystemExit` with code `EXIT_CODE`: uncaught, the process exits with
    that status.

    Args:
        signal_name: The signal received (`"SIGTERM"`, `"SIGUSR1"`).
        epoch: The epoch (1-based) training stopped in, or None when no
            training was running.
        step: The steps of that epoch that were done and saved.
    """

    def __init__(self, signal_name, epoch=None, step=None):
        super().__init__(EXIT_CODE)
        self.signal_name = signal_name
        self.epoch = epoch
        self.step = step

    def line(self, stage):
        """The one line the runner prints, naming `stage`."""
        if self.epoch is None:
            return (
                f"[ft_keras] preempted ({self.signal_name}) at stage {stage}: "
                "rerun the same command to continue"
            )
        return (
            f"[ft_keras] preempted at stage {stage}, epoch {self.epoch}, "
            f"step {self.step}: checkpoint saved; rerun the same command to "
            "continue"
        )


def requested():
    """The name of the preemption signal received, or None."""
    return _state["requested"]


def _handler(signum, frame):
    del frame
    _state["requested"] = signal.Signals(signum).name
    if not _state["deferred"]:
        raise Preempted(_state["requested"])


@contextlib.contextmanager
def handle_signals():
    """Inside, SIGTERM and SIGUSR1 request a preemption (see the module
    docstring); the previous handlers are back on exit. Outside the main
    thread, where Python cannot install handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["requested"] = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state["requested"] = None


@contextlib.contextmanager
def deferred():
    """Inside, a preemption signal only sets `requested()`: the code that
    runs here (a `fit` with a `ResumableCheckpoint`) stops at its next safe
    point. A request that arrived before is answered on entry, one that
    the code inside did not answer on exit."""
    if _state["requested"]:
        raise Preempted(_state["requested"])
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
    if _state["requested"]:
        raise Preempted(_state["requested"])
