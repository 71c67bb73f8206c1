"""Run records: the one writer and reader of a run directory's config.json, metrics.jsonl, result.json.

Used by every trainer (``lm.train.train``, ``lm.vmap_sweep.train_vmapped``) and every
reader (the study runner, notebooks), so a record means the same thing whoever wrote it.

  config.json     the RunConfig (``RunConfig.to_json``)
  metrics.jsonl   one JSON object per line: every ``log_every`` steps and at every
                  evaluation; keys of :func:`metric_record` (+ ``val_loss``, ``val_bpb``,
                  ``moe`` when present)
  result.json     the summary of a finished run (:func:`result_record`), written
                  atomically; NaN is stored as null (strict JSON)
  corpus.json     the fingerprint of the data the run trains on (:mod:`lm.data_check`),
                  written atomically; run directories written before it have none

A run killed while appending may leave a partial last line in metrics.jsonl; readers
ignore it and a resumed run drops it (:func:`prepare_metrics`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Self

from lm.config import RunConfig
from lm.flops import param_count, train_flops_per_token

CONFIG, METRICS, RESULT = "config.json", "metrics.jsonl", "result.json"
CORPUS = "corpus.json"


def write_config(run_dir: str | Path, run: RunConfig) -> None:
    Path(run_dir, CONFIG).write_text(run.to_json())


def read_config(run_dir: str | Path) -> RunConfig:
    return RunConfig.from_dict(json.loads(Path(run_dir, CONFIG).read_text()))


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
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return path


class MetricsLog:
    """Appends records to a run's metrics.jsonl, one flushed line each (a context manager).

    ``enabled=False`` (a non-primary host of a multi-host job) writes nothing.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self._file = open(path if enabled else os.devnull, "a")  # noqa: SIM115  (closed by close / __exit__)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def write_result(run_dir: str | Path, result: dict) -> None:
    """Write result.json atomically (a run killed mid-write never leaves a truncated one); NaN -> null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    tmp = Path(run_dir) / (RESULT + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2))
    os.replace(tmp, Path(run_dir) / RESULT)


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json, or None if it has not finished."""
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def write_corpus(run_dir: str | Path, record: dict) -> None:
    """Write corpus.json (:func:`lm.data_check.corpus_record`) atomically."""
    tmp = Path(run_dir) / (CORPUS + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, Path(run_dir) / CORPUS)


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
