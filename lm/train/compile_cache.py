"""JAX's persistent compilation cache: the one configuration every scalelab program uses.

A compiled program (a train, vmapped-train or eval step, a fit's solver) is written to a
folder on disk, keyed by JAX on its HLO, compile options, devices and JAX/XLA versions, so a
later process that builds the same program loads it instead of compiling: a rerun of a
study, a resumed sweep, the second process of a killed-and-resumed run, ``scaling.fit``
on a table of the same size, and the test suite's workers and subprocesses.

The folder (:func:`cache_dir`): ``$SCALELAB_JAX_CACHE``, else
``$XDG_CACHE_HOME/scalelab/jax`` (default ``~/.cache/scalelab/jax``); ``SCALELAB_JAX_CACHE=off``
(or empty) turns the cache off (``SCALELAB_XLA_CACHE``, the older name, is read too). A folder already given to JAX (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config``) is kept as it is.

Safe with several processes: a finite ``jax_compilation_cache_max_size`` makes JAX take a
file lock (``filelock``) around every read and write of the folder, so one process never
reads an entry another is half-way through writing (without it JAX writes entries in
place, unlocked). A loaded program is the same executable the compile produced, so results
do not depend on the cache (tests/lm/test_compile_cache.py: same losses cold and warm).

A folder shared with a process that wrote it unlocked (``jax_compilation_cache_max_size`` left
at -1: an older scalelab, a user's own script) holds entries without the ``<key>-atime`` file
JAX's locked cache keeps beside each ``<key>-cache``; JAX then fails every later write there
("Error writing persistent compilation cache entry ... -atime"), so nothing is cached again,
with only a warning. :func:`enable` gives such entries their access time (:func:`repair`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

ENV = "SCALELAB_JAX_CACHE"
LEGACY_ENV = "SCALELAB_XLA_CACHE"  # the older name (scaling.fit's own cache), still read
OFF = ("", "off", "0", "false", "no")
# Compiles shorter than this are not written: a step takes seconds, while the many
# sub-second programs (eager ops, small helpers) would cost more disk reads than compiles.
MIN_COMPILE_SECS = 0.2
# Least recently used entries beyond this are evicted; any finite size also turns on the
# file lock that makes the folder safe to share between processes (module docstring).
MAX_BYTES = 4 << 30


def cache_dir(env: Mapping[str, str] | None = None) -> str | None:
    """The cache folder from the environment (module docstring), or None when it is off."""
    env = os.environ if env is None else env
    name = next((n for n in (ENV, LEGACY_ENV) if n in env), None)
    if name is not None:
        folder = env[name].strip()
        return None if folder.lower() in OFF else os.path.expanduser(folder)
    return os.path.join(scalelab_cache_root(env), "jax")


def scalelab_cache_root(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_CACHE_HOME/scalelab`` (default ``~/.cache/scalelab``): the folder of scalelab's caches."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scalelab")


def enable(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`cache_dir`).

    Returns the folder in use, or None when the cache is off. A folder JAX already has is
    kept (only its file lock is made sure of, and its entries mended: :func:`repair`), so calling this twice, or after
    ``JAX_COMPILATION_CACHE_DIR`` was set, changes nothing.
    """
    import jax  # here: :func:`settings` must be usable before JAX reads its variables on import

    folder = jax.config.jax_compilation_cache_dir
    if not folder:
        folder = str(path) if path is not None else cache_dir()
        if folder is None:
            return None
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    if jax.config.jax_compilation_cache_max_size == -1:  # unlimited: JAX would not lock
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    repair(folder)
    return folder


def repair(folder: str | os.PathLike) -> int:
    """Give every entry of the cache ``folder`` that lacks one its ``-atime`` file (module docstring).

    The access time written is the entry's modification time, so JAX's least-recently-used
    eviction sees it as old as it is. Holds JAX's own lock on the folder (``.lockfile``) while
    writing, so no JAX process reads a half-written file. Returns the number of entries mended
    (0 for a folder that does not exist yet); a folder it cannot write (read-only, or its lock held
    for a minute) is left as it is, with a warning, since JAX still reads from it.
    """
    import filelock  # JAX's own dependency for a locked cache

    path = Path(folder)
    if not path.is_dir():
        return 0
    atime = lambda entry: entry.with_name(entry.name.removesuffix("-cache") + "-atime")  # noqa: E731  JAX's names
    missing = lambda: [p for p in path.glob("*-cache") if not atime(p).exists()]  # noqa: E731
    if not missing():  # the usual case: no lock taken
        return 0
    mended = 0
    try:
        with filelock.FileLock(path / ".lockfile", timeout=60):
            for entry in missing():
                try:
                    stamp = entry.stat().st_mtime_ns
                except FileNotFoundError:  # evicted meanwhile by a process that does not lock
                    continue
                atime(entry).write_bytes(int(stamp or time.time_ns()).to_bytes(8, "little"))
                mended += 1
    except (OSError, filelock.Timeout) as e:  # a read-only or busy folder: JAX reads it all the same
        warnings.warn(f"compilation cache {path}: {mended} entries mended, then {type(e).__name__}: {e}", stacklevel=2)
    return mended


def settings(folder: str) -> dict[str, str]:
    """Environment variables giving a child process the cache in ``folder`` (JAX reads them on
    import, so even a process that never calls :func:`enable` uses it)."""
    return {
        ENV: folder,
        "JAX_COMPILATION_CACHE_DIR": folder,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECS),
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES),
    }
