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
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scalelab", "jax")


def enable(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`cache_dir`).

    Returns the folder in use, or None when the cache is off. A folder JAX already has is
    kept (only its file lock is made sure of), so calling this twice, or after
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
    return folder


def settings(folder: str) -> dict[str, str]:
    """Environment variables giving a child process the cache in ``folder`` (JAX reads them on
    import, so even a process that never calls :func:`enable` uses it)."""
    return {
        ENV: folder,
        "JAX_COMPILATION_CACHE_DIR": folder,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECS),
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES),
    }
