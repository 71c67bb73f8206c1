"""Run records: the one writer and reader of the files of a run directory.

Used by every trainer (the one loop, ``lm.train.loop``, through a :class:`lm.train.run_writer.RunWriter` per run)
and every reader (the study runner, the command line, notebooks), so a record means the
same thing whoever wrote it.

  config.json     the RunConfig (``RunConfig.to_json``)
  metrics.jsonl   one JSON object per line: every ``log_every`` steps and at every
                  evaluation; keys of :func:`metric_record` (+ ``val_loss``, ``val_bpb``,
                  ``moe`` when present)
  result.json     the summary of a finished run (:func:`result_record`), ``status``
                  "complete" or "diverged" (with ``diverged_at``, the step whose loss or
                  gradient was non-finite); NaN is stored as null (strict JSON)
  corpus.json     the fingerprint of the data the run trains on (:mod:`lm.data.check`);
                  run directories written before it have none
  events.out.tfevents.*.scalelab
                  TensorBoard's copy of the records and the result, written with them
                  (:mod:`lm.train.tensorboard`)
  failure.json    the study runner's record of a run that could not go on (``"failed"``:
                  unreadable checkpoints; retried). Run directories written before
                  divergence moved into result.json hold ``{"status": "diverged"}`` here
                  instead of a result: :func:`read_result` reads them as diverged results.
  runner.json     the study runner's wall time of the run (and its group)

Every record file except the append-only metrics.jsonl is written whole or not at all
(:func:`atomic_write`: a temporary file, fsync, rename), here and by the study runner, so a
kill or a full disk never leaves a partial or empty one. A run killed while appending may
leave a partial last line in metrics.jsonl; readers ignore it and a resumed run drops it
(:func:`prepare_metrics`).

A full disk (ENOSPC, EDQUOT) while writing any run file or checkpoint is raised as
:class:`DiskFullError`, whose message is one line naming the directory and its free space
(:func:`disk_full_error` recognises orbax's and tensorstore's wrapped forms too).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lm.train import tensorboard
from lm.model.config import RunConfig
from lm.model.counting import param_count, train_flops_per_token

CONFIG, METRICS, RESULT = "config.json", "metrics.jsonl", "result.json"
CORPUS, FAILURE, RUNNER = "corpus.json", "failure.json", "runner.json"
RUN_FILES = (CONFIG, CORPUS, METRICS, RESULT, FAILURE, RUNNER)  # every record a run directory may hold


class DiskFullError(OSError):
    """No space (or quota) left on the device of ``directory``; ``free_bytes`` there when raised."""

    def __init__(self, directory: str | Path, free_bytes: int | None, doing: str = ""):
        self.directory, self.free_bytes = Path(directory), free_bytes
        free = "free space unknown" if free_bytes is None else f"{free_bytes / 2**20:.1f} MB free"
        super().__init__(errno.ENOSPC, f"{self.directory}: no space left on device ({free})"
                         + (f" while {doing}" if doing else ""))

    def __str__(self) -> str:
        return self.strerror


# How a full disk reads once orbax/tensorstore have wrapped the OSError (e.g. "RESOURCE_EXHAUSTED:
# ... No space left on device [os_error_code='28']"); RESOURCE_EXHAUSTED alone is also device OOM.
_FULL_DISK_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='(28|122)'")


def disk_full_error(err: BaseException, directory: str | Path, doing: str = "") -> DiskFullError | None:
    """A :class:`DiskFullError` for ``directory`` if ``err`` (or an error it chains) is a full disk, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err
        if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or _FULL_DISK_TEXT.search(str(err)):
            return DiskFullError(directory, free_bytes(directory), doing)
        err = err.__cause__ or err.__context__
    return None


def free_bytes(directory: str | Path) -> int | None:
    """Bytes free for this user on the filesystem of ``directory`` (its nearest existing parent)."""
    path = Path(directory).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def disk_full_guard(directory: str | Path, doing: str = "") -> Iterator[None]:
    """Re-raise a full-disk error inside the block as :class:`DiskFullError` naming ``directory``."""
    try:
        yield
    except OSError as err:
        full = disk_full_error(err, directory, doing)
        if full is None or full is err:
            raise
        raise full from err


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, fsync, rename.

    A kill or a full disk leaves the previous file (or none), never a partial or empty one; the
    temporary file is removed when the write fails.

    Raises:
      DiskFullError: no space left on the device.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with disk_full_guard(path.parent, f"writing {path.name}"):
        try:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_config(run_dir: str | Path, run: RunConfig) -> None:
    """Write the run's config.json (atomically)."""
    atomic_write(Path(run_dir, CONFIG), run.to_json())


def read_config(run_dir: str | Path) -> RunConfig:
    """The run's config.json as a RunConfig, any earlier schema migrated (``lm.model.config_schema``).

    Raises:
      ValueError: one line naming the file: not JSON, a schema newer than this scalelab's, or
        a field that does not validate. (A missing file is the OSError.)
    """
    path = Path(run_dir, CONFIG)
    text = path.read_text()
    try:
        return RunConfig.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: {err}") from err


def flatten(record: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested record (``RunConfig.to_dict()``, a config.json) as {dotted path: leaf}, e.g. "model.d_model"."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _parse_lines(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a partial (unparseable) last line is left out.

    Raises:
      ValueError: a line other than the last is not JSON (the file is corrupted, not truncated).
    """
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break  # a run killed mid-write
            raise ValueError(f"{path}: line {i + 1} of {len(lines)} is not JSON ({err}); the file is corrupted") from err
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metric records of a run, in order ([] if it has none yet)."""
    path = Path(run_dir) / METRICS
    return _parse_lines(path) if path.exists() else []


def prepare_metrics(run_dir: str | Path, resume_step: int | None) -> Path:
    """Ready metrics.jsonl for appending and return its path.

    ``resume_step`` None: a fresh run, the file is emptied. Otherwise the run resumes from
    the checkpoint of that step: records written after it (a killed run logs past its last
    checkpoint) and a partial last line are dropped.
    """
    path = Path(run_dir) / METRICS
    keep = [] if resume_step is None or not path.exists() else [
        r for r in _parse_lines(path) if r.get("step", 0) <= resume_step
    ]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
    return path


def metric_record(run: RunConfig, done: int, lr: float, train_loss: float, grad_norm: float,
                  tokens_per_s: float | None) -> dict:
    """The record after ``done`` steps: step, tokens and cumulative training FLOPs, lr, losses.

    ``train_loss`` is the mean training loss since the previous record.
    """
    tokens = done * run.data.seq_len * run.data.batch_size
    return {
        "step": done,
        "tokens": tokens,
        "flops": tokens * train_flops_per_token(run.model, run.data.seq_len),
        "lr": lr,
        "train_loss": train_loss,
        "grad_norm": grad_norm,
        "tokens_per_s": tokens_per_s,
    }


def result_record(run: RunConfig, *, status: str, final_train_loss: float, final_val_loss: float,
                  final_val_bpb: float, compile_s: float, train_s: float, resumed_from: int | None,
                  **extra) -> dict:
    """The summary of a finished run (result.json's keys; ``extra`` appended)."""
    steps = run.train.steps
    tokens = steps * run.data.seq_len * run.data.batch_size
    flops_per_token = train_flops_per_token(run.model, run.data.seq_len)
    counts = param_count(run.model)
    return {
        "name": run.name,
        "status": status,
        "steps": steps,
        "tokens": tokens,
        "flops": tokens * flops_per_token,
        "flops_per_token": flops_per_token,
        "params_total": counts["total"],
        "params_non_embedding": counts["non_embedding"],
        "final_train_loss": final_train_loss,
        "final_val_loss": final_val_loss,
        "final_val_bpb": final_val_bpb,
        "compile_s": compile_s,
        "train_s": train_s,
        "resumed_from": resumed_from,
        **extra,
    }


def write_record(run_dir: str | Path, name: str, record: dict) -> None:
    """Write the JSON record ``name`` (result.json, failure.json, ...) atomically; NaN -> null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    atomic_write(Path(run_dir) / name, json.dumps(clean, indent=2))


def read_record(run_dir: str | Path, name: str) -> dict | None:
    """The JSON object in the record ``name``; None if it is missing, cut short (a kill while
    writing, before records were written atomically) or holds something else than an object."""
    try:
        value = json.loads(Path(run_dir, name).read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def write_result(run_dir: str | Path, result: dict) -> None:
    """Write result.json atomically (a run killed mid-write never leaves a truncated one; NaN -> null),
    then its TensorBoard events (:func:`lm.train.tensorboard.write_result`)."""
    write_record(run_dir, RESULT, result)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    with disk_full_guard(run_dir, "writing TensorBoard events"):
        tensorboard.write_result(run_dir, clean)


def read_result(run_dir: str | Path) -> dict | None:
    """The result of a finished run ("complete" or "diverged"), or None if it has not finished.

    ``{}``, ``[]``, a cut-short file or a record without the final losses is not a finished
    run. The former record of a diverged solo run (failure.json ``{"status": "diverged"}``,
    no result.json) reads as a diverged result with null losses.
    """
    result = read_record(run_dir, RESULT)
    if result is not None and result.get("status", "complete") in ("complete", "diverged") \
            and "final_val_loss" in result:
        return result
    failure = read_record(run_dir, FAILURE)
    if result is None and failure is not None and failure.get("status") == "diverged":
        return {"status": "diverged", "final_train_loss": None, "final_val_loss": None, "final_val_bpb": None,
                "error": failure.get("error")}
    return None


def write_failure(run_dir: str | Path, status: str, error: str) -> None:
    """Write failure.json ``{"status": status, "error": error}`` (the runner's record of a run that failed)."""
    write_record(run_dir, FAILURE, {"status": status, "error": error})


def write_corpus(run_dir: str | Path, record: dict) -> None:
    """Write corpus.json (:func:`lm.data.check.corpus_record`) atomically."""
    atomic_write(Path(run_dir) / CORPUS, json.dumps(record, indent=2))


def read_corpus(run_dir: str | Path) -> dict | None:
    """The run's corpus.json, or None if it has none (a new run, or one written before it existed).

    Raises:
      ValueError: the file is not a JSON object with a "fingerprint" (one line naming it).
    """
    path = Path(run_dir) / CORPUS
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the corpus record {path} cannot be read ({err}): it is damaged; "
                         "restore or remove it") from err
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise ValueError(f"the corpus record {path} is not a JSON object with a fingerprint: it is damaged; "
                         "restore or remove it")
    return record
