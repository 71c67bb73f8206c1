"""Preemption: SIGTERM or Ctrl-C stops training at the next step boundary, with a checkpoint saved.

A scheduler preempts a job with SIGTERM (then SIGKILL after a grace period); a person
stops one with Ctrl-C (SIGINT). Either way the steps since the last checkpoint should not
be lost, and the job should end with one line rather than a traceback.

Design:

- Single process: :func:`handle_signals` (entered by the commands that train:
  ``experiments.train`` and the study runner ``experiments.lib.sweep.run_study``) installs
  handlers for SIGTERM and SIGINT that only record the signal. Python runs them between
  bytecodes on the main thread, so a signal never interrupts a checkpoint save or a
  record write half-way.
- The one training loop (``lm.train.loop``) asks :func:`should_stop` at every step boundary.
  A solo run (``lm.train.solo.train``) then saves a checkpoint of that step and raises
  :class:`Preempted` (its message is the one line: "preempted at step N ..., checkpoint
  saved in ..."); ``lm.train.sweep`` groups keep no checkpoints and stop likewise (their
  runs restart on rerun); the runner stops between runs. The command prints the line and exits with ``experiments.lib.cli.PREEMPTED``
  (75, EX_TEMPFAIL: "try again") after SIGTERM; after Ctrl-C it ends the way Ctrl-C ends
  any Python program, by SIGINT (130 in a shell, so shell loops stop too), without the
  traceback. Rerunning the same command resumes from the checkpoint, bitwise.
- A second signal while stopping is recorded and otherwise ignored: the save in progress
  finishes (checkpoints are written to a temporary directory and renamed, records through
  ``lm.train.records.atomic_write``, so even a SIGKILL then loses only the unfinished save).
- Multi-host jobs (``jax.distributed`` initialised): a host that alone stopped would leave
  the others waiting in a collective, so every host must stop at the same step. There the
  handlers are not installed: JAX's preemption service owns SIGTERM and propagates the
  notice to every host, and :func:`should_stop` asks orbax's ``reached_preemption(step)``
  (what ``CheckpointManager.reached_preemption`` calls: JAX's
  ``multihost_utils.reached_preemption_sync_point``), which is true on every host at the
  same step. On one process that call is false (no distributed client), so it costs nothing.
- Outside :func:`handle_signals` (a notebook calling ``lm.train.solo.train``) nothing is
  installed: Ctrl-C raises ``KeyboardInterrupt`` as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
from orbax.checkpoint import multihost as ocp_multihost

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []  # signals received while handle_signals is active, in order
_active = False


class Preempted(Exception):  # noqa: N818  (a stop, not an error)
    """Training stopped early at a step boundary on a signal; rerunning the same command resumes.

    ``signum``: the signal (None for a multi-host preemption notice); ``step``: the step it
    stopped after (None between runs); ``saved``: whether a checkpoint of that step exists.
    """

    def __init__(self, message: str, signum: int | None, step: int | None = None, saved: bool = False):
        super().__init__(message)
        self.signum, self.step, self.saved = signum, step, saved


def signal_name(signum: int | None) -> str:
    return "preemption notice" if signum is None else signal.Signals(signum).name


def _record(signum, frame) -> None:
    _received.append(signum)  # a second signal while stopping changes nothing: the save finishes


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT ask training to stop at the next step boundary.

    Nested use is the outer block's. Off the main thread, or in a multi-host job, nothing is
    installed (module docstring). A signal that no training loop acted on (it came after the
    last step) raises :class:`Preempted` when the block ends; the previous handlers are back
    either way.
    """
    global _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {} if jax.distributed.is_initialized() else {s: signal.signal(s, _record) for s in SIGNALS}
    _received.clear()
    _active = True
    try:
        yield
        if _received:
            raise Preempted(f"{signal_name(_received[0])} received after training finished: every run is saved "
                            "and nothing was lost", _received[0])
    finally:
        for s, previous in installed.items():
            signal.signal(s, previous)
        _received.clear()
        _active = False


def preempted(message: str, step: int | None = None, saved: bool = False) -> Preempted:
    """The :class:`Preempted` for the signal received (its name replaces ``{signal}`` in ``message``).

    The signal counts as acted on: the end of :func:`handle_signals` does not raise it again.
    """
    signum = requested()
    _received.clear()
    return Preempted(message.replace("{signal}", signal_name(signum)), signum, step, saved)


def requested() -> int | None:
    """The first signal received inside :func:`handle_signals`, or None."""
    return _received[0] if _received else None


def should_stop(step: int) -> bool:
    """Whether training should stop after ``step``: a signal was received, or (multi-host) every
    host has reached the preemption sync point at ``step``. Call it at every step, on every host."""
    return bool(_received) or ocp_multihost.reached_preemption(step)
