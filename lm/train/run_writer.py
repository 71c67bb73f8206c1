"""The one writer of a run directory's records while the run trains: metrics.jsonl lines and result.json.

:class:`RunWriter` (one per run of the one loop, ``lm.train.loop``) writes config.json and corpus.json when
the run begins, appends each record to metrics.jsonl through :class:`MetricsLog` (which writes the
same record to the run's TensorBoard events, :mod:`lm.train.tensorboard`), writes result.json at the end,
and tells its listeners of each record once it is written. The file formats are
:mod:`lm.train.records`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from lm.train import tensorboard
from lm.model.config import RunConfig
from lm.train.records import (CONFIG, METRICS, _parse_lines, disk_full_guard, flatten, prepare_metrics, read_metrics,
                        write_config, write_corpus, write_result)


class MetricsLog:
    """Appends records to a run's metrics.jsonl, one flushed line each (a context manager).

    ``enabled=False`` (a non-primary host of a multi-host job) writes nothing. A full disk
    raises :class:`DiskFullError` (a partial last line may stay: readers skip it). Every record
    goes to the run's TensorBoard events too (:class:`lm.train.tensorboard.RunEvents`, opened with
    the records already in the file and the config's fields as HParams).
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self._dir = Path(path).parent if enabled else Path(os.devnull)
        self._file = open(path if enabled else os.devnull, "a")  # noqa: SIM115  (closed by close / __exit__)
        self._events = None
        if enabled:
            config = self._dir / CONFIG
            hparams = flatten(json.loads(config.read_text())) if config.exists() else None
            with disk_full_guard(self._dir, "writing TensorBoard events"):
                self._events = tensorboard.RunEvents(self._dir, hparams, _parse_lines(Path(path)))

    def write(self, record: dict) -> None:
        with disk_full_guard(self._dir, f"appending to {METRICS}"):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._events is not None:
                self._events.write(record)

    def close(self) -> None:
        for handle in (self._file, self._events):
            with contextlib.suppress(OSError):  # the flush of a full disk's buffer, already reported by write
                if handle is not None:
                    handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


RecordListener = Callable[["RunWriter", str, dict], None]
"""``listener(writer, kind, record)``: called by a :class:`RunWriter` after it wrote a record,
``kind`` "metrics" (a metrics.jsonl line) or "result" (result.json); e.g. a live TensorBoard writer."""


class RunWriter:
    """The one writer of a run directory's records while the run trains (one per run of ``lm.train.loop``).

    ``enabled=False`` (a non-primary host of a multi-host job, or a run without a directory)
    writes nothing and calls no listener. ``listeners`` (:data:`RecordListener`) see each
    record once it is written, exactly as the file holds it.
    """

    def __init__(self, run_dir: str | Path | None, run: RunConfig, *, enabled: bool = True,
                 listeners: Sequence[RecordListener] = ()):
        self.run_dir, self.run = (Path(run_dir) if run_dir is not None else None), run
        self.enabled = enabled and run_dir is not None
        self.listeners = tuple(listeners)
        self._log: MetricsLog | None = None

    def begin(self, corpus: dict | None) -> None:
        """Create the directory and write config.json and (unless None) corpus.json."""
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, self.run)
            if corpus is not None:
                write_corpus(self.run_dir, corpus)

    def open_metrics(self, resume_step: int | None) -> None:
        """Ready metrics.jsonl for appending (:func:`prepare_metrics`: emptied, or cut back to ``resume_step``)."""
        path = prepare_metrics(self.run_dir, resume_step) if self.enabled else os.devnull
        self._log = MetricsLog(path, enabled=self.enabled)

    def logged(self, step: int) -> bool:
        """Whether metrics.jsonl holds the record of ``step``."""
        return self.enabled and any(r.get("step") == step for r in read_metrics(self.run_dir))

    def last_train_loss(self) -> float:
        """The newest training loss in metrics.jsonl (NaN if none)."""
        history = read_metrics(self.run_dir) if self.enabled else []
        return next((r["train_loss"] for r in reversed(history) if "train_loss" in r), float("nan"))

    def metrics(self, record: dict) -> None:
        """Append one record to metrics.jsonl (:func:`open_metrics` first)."""
        if self.enabled:
            self._log.write(record)
            self._notify("metrics", record)

    def result(self, result: dict) -> None:
        """Write result.json (:func:`write_result`)."""
        if self.enabled:
            write_result(self.run_dir, result)
            self._notify("result", result)

    def _notify(self, kind: str, record: dict) -> None:
        for listener in self.listeners:
            listener(self, kind, record)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
