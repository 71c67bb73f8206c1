"""One process at a time per run directory: an exclusive ``flock`` on ``<run_dir>/.lock``.

Two trainers writing one run directory would interleave their metric lines and race on
its checkpoints, so every trainer (``lm.train.solo.train``, ``lm.train.sweep.train_vmapped``, the
study runner per run, ``experiments.train``) holds :func:`hold` on each run directory it
writes. The lock is ``fcntl.flock`` on a lock file that holds the holder's PID (for the
message only): the kernel releases it when the process exits however it ends, so a
``kill -9`` never leaves a stale lock, and the file itself stays (deleting lock files
races with processes that opened them). A second process gets :class:`RunDirLockedError`
naming the PID; it has written nothing. Sweeps lock per run, so disjoint shards of one
grid run side by side.

The lock is re-entrant within a process (the runner holds it around ``lm.train.solo.train``,
which takes it again). In a multi-host job only process 0, the one writer of the run
files, takes it. ``flock`` is honoured on local filesystems and NFSv4; on filesystems
that ignore it (some FUSE mounts) the lock is advisory only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lm.train.records import disk_full_guard

LOCK = ".lock"

# Run directories this process holds: resolved path -> the lock file's descriptor.
_held: dict[Path, int] = {}


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory (``pid``: its PID, None if it has not written it yet)."""

    def __init__(self, run_dir: Path, pid: int | None):
        self.run_dir, self.pid = run_dir, pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"run directory {run_dir} is in use by {who} (lock {run_dir / LOCK}); wait for it to "
                         "finish or stop it, or choose another --out/--name")


def holder_pid(run_dir: str | Path) -> int | None:
    """The PID written in the run directory's lock file (None if none; it may have exited)."""
    try:
        return int(Path(run_dir, LOCK).read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the block; re-entrant.

    Raises:
      RunDirLockedError: another process holds it (nothing was written).
      DiskFullError: the directory or lock file cannot be written for lack of space.
    """
    key = Path(run_dir).absolute().resolve()
    if key in _held:  # held further out in this process: the outer block releases it
        yield
        return
    with disk_full_guard(key, "taking the run directory's lock"):
        key.mkdir(parents=True, exist_ok=True)
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLockedError(Path(run_dir), holder_pid(key)) from None
    try:
        with disk_full_guard(key, "taking the run directory's lock"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = fd
        yield
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale PID for the next reader
        os.close(fd)  # releases the lock
