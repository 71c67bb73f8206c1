"""Checkpoints of a run with orbax: parameters, optimiser state, data-iterator state, config, step.

One orbax ``CheckpointManager`` per run directory (``<run_dir>/checkpoints/<step>/``) with
three items: "state" (params + optimiser state + step, a pytree), "data" (the grain
iterator state, JSON) and "meta" (run config and step, JSON). Saves are synchronous so
that a process killed right after ``save`` returns leaves a complete checkpoint; orbax
writes to a temporary directory and renames it, so an interrupted save never looks like
a finished one.

Errors never delete anything: a missing, partial or corrupted checkpoint raises
:class:`CheckpointError` naming the directory and what is wrong. Resuming (``restore(None,
...)``) falls back to the newest intact checkpoint: each unreadable newer one is reported
with a :class:`CheckpointFallbackWarning` and, when the directory is writable, moved aside
to ``checkpoints/unreadable-<step>`` (kept for inspection, out of orbax's way, so the
step can be saved again); only when no checkpoint can be read does it raise.

A save into a full disk raises ``lm.train.records.DiskFullError`` (one line: the directory and
its free space) instead of orbax's RESOURCE_EXHAUSTED errors: the hundreds of lines that
orbax's writer threads log and tensorstore's late writes print about it are dropped, the
unfinished step's temporary directory is removed (it is never a checkpoint) and every
earlier checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lm.train.records import DiskFullError, disk_full_error, free_bytes

ITEMS = ("state", "data", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or unreadable (``step``: which one, if known)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint could not be read; an older intact one was restored instead."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).absolute() / "checkpoints"


class Checkpointer:
    """Save and restore the training state of one run.

    Args:
      run_dir: the run directory; checkpoints go under ``run_dir/checkpoints``.
      max_to_keep: retain this many most recent checkpoints (None = all).
      read_only: open an existing directory without the right to create, save or delete.
    """

    def __init__(self, run_dir: str | Path, max_to_keep: int | None = 2, read_only: bool = False):
        self.directory = checkpoint_dir(run_dir)
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, ascending."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Write a checkpoint of ``state`` (pytree), ``data_state`` and ``meta`` (JSON) at ``step``.

        Raises:
          lm.train.records.DiskFullError: no space left; the earlier checkpoints are intact.
        """
        try:
            with _quiet_full_disk():
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state),
                        data=ocp.args.JsonSave(_jsonable(data_state)),
                        meta=ocp.args.JsonSave(_jsonable(meta)),
                    ),
                    force=True,
                )
                self.manager.wait_until_finished()
        except Exception as err:
            if disk_full_error(err, self.directory) is None:
                raise
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)  # the unfinished save, never a checkpoint
            raise DiskFullError(self.directory, free_bytes(self.directory),
                                f"saving the checkpoint of step {step}") from err

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restore (state, data_state, meta) at ``step``; None = the newest checkpoint that reads.

        Args:
          step: the step to restore (an unreadable one raises), or None to resume: newest
            first, an unreadable checkpoint is reported (:class:`CheckpointFallbackWarning`),
            set aside (module docstring) and the next older one tried.
          abstract_state: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings
            to restore onto another mesh) giving the structure of "state".

        Raises:
          CheckpointError: no finished checkpoint, or none (or not ``step``) can be read.
        """
        available = self.steps()
        if step is not None:
            if step not in available:
                raise CheckpointError(
                    f"no finished checkpoint for step {step} in {self.directory}; found steps {available}")
            return self._restore_step(step, abstract_state)
        if not available:
            raise CheckpointError(f"no finished checkpoint in {self.directory}")
        errors = []
        for candidate in reversed(available):
            try:
                restored = self._restore_step(candidate, abstract_state)
            except CheckpointError as err:
                errors.append(err)
                continue
            if errors:
                warnings.warn(CheckpointFallbackWarning(
                    f"resuming from step {candidate}, the newest intact checkpoint in {self.directory}: "
                    + "; ".join(str(e) for e in errors)), stacklevel=2)
                self._set_aside([e.step for e in errors])
            return restored
        raise CheckpointError(f"none of the checkpoints in {self.directory} (steps {available}) can be read: "
                              + "; ".join(str(e) for e in errors))

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        step_dir = self.directory / str(step)
        missing = [item for item in ITEMS if not (step_dir / item).is_dir()]
        if missing:
            raise CheckpointError(f"checkpoint {step_dir} is partial: items {missing} are missing (nothing was deleted)",
                                  step=step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint {step_dir} could not be read ({type(err).__name__}: {_first_line(err)}); "
                "it may be corrupted. Nothing was deleted.", step=step,
            ) from err
        return restored["state"], restored["data"], restored["meta"]

    def _set_aside(self, steps: list[int]) -> None:
        """Move unreadable step directories to ``unreadable-<step>`` (writable managers only)."""
        if self.read_only:
            return
        for step in steps:
            src, dst = self.directory / str(step), self.directory / f"unreadable-{step}"
            if src.is_dir() and not dst.exists():
                os.replace(src, dst)
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


class _FullDiskFilter(logging.Filter):
    """Drops log records about a full disk (orbax logs one traceback per writer thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return disk_full_error(exc, ".") is None and disk_full_error(Exception(record.getMessage()), ".") is None


_FILTER = _FullDiskFilter()


def _closed_loop(unraisable) -> bool:
    """tensorstore's writes that finish after orbax closed its event loop (the save failed) report
    "Event loop is closed" through ``sys.unraisablehook``, one traceback per write."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


@contextlib.contextmanager
def _quiet_full_disk() -> Iterator[None]:
    """Hold back what orbax, asyncio and tensorstore print during a save, and drop it if the save
    fails for lack of space (the caller reports that in one line); else let it through.

    After a full disk the filters stay, for the echoes of writes still finishing.
    """
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for logger in loggers:
        logger.addFilter(_FILTER)
    previous, held = sys.unraisablehook, []
    sys.unraisablehook = held.append
    full = False
    try:
        yield
    except Exception as err:
        full = disk_full_error(err, ".") is not None
        raise
    finally:
        if full:
            sys.unraisablehook = lambda u: None if _closed_loop(u) else previous(u)
        else:
            sys.unraisablehook = previous
            for logger in loggers:
                logger.removeFilter(_FILTER)
            for unraisable in held:
                previous(unraisable)


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so that bytes and tuples are stored losslessly."""
    return json.loads(json.dumps(obj, default=_encode))


def _encode(obj):
    if isinstance(obj, bytes):
        return {"__bytes__": obj.decode("latin-1")}
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON item")


def decode_bytes(obj: Any) -> Any:
    """Inverse of the bytes encoding used for JSON items."""
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return obj["__bytes__"].encode("latin-1")
        return {k: decode_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_bytes(v) for v in obj]
    return obj


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, cut to ``limit`` characters (tensorstore's run long)."""
    text = (str(err).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
