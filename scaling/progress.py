"""A progress line on stderr for fits that take more than a few seconds.

Short fits (tests, small tables) print nothing: by default only work of at least
:data:`MIN_WORK` start-rows is watched (compiling a small fit under load can take seconds and
is no reason for a line). A fit of a 10^5-row table or a large bootstrap says what it is doing
once it has run :data:`AFTER_S` seconds, and how long it took.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

AFTER_S = 3.0  # a step running longer than this gets a line
MIN_WORK = 2_000_000  # starts x rows below which ``progress=None`` prints nothing


def wanted(progress: bool | None, work: float) -> bool:
    """``progress`` if given, else whether ``work`` (starts x rows) is worth watching."""
    return bool(progress) if progress is not None else work >= MIN_WORK


@contextlib.contextmanager
def slow_notice(what: str, enabled: bool = True, after_s: float | None = None):
    """Print ``[fit] what ...`` to stderr if the block is still running after ``after_s``
    seconds (default :data:`AFTER_S`), then ``[fit] what: done in X s`` when it ends."""
    if not enabled:
        yield
        return
    t0 = time.perf_counter()
    fired = threading.Event()

    def notice():
        fired.set()
        print(f"[fit] {what} ...", file=sys.stderr, flush=True)

    timer = threading.Timer(AFTER_S if after_s is None else after_s, notice)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if fired.is_set():
            print(f"[fit] {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                  flush=True)
