"""TensorBoard event files of a run, written by its record writer (``lm.train.records``) with tensorboardX.

``tensorboard --logdir runs/`` (``pip install tensorboard`` to view) shows every run
directory as a run. Each holds, beside its metrics.jsonl:

  events.out.tfevents.<time>.<host>.<pid>.log.scalelab
      opened by ``lm.train.run_writer.MetricsLog``: the HParams session start (the run's config
      fields by dotted path), then one event per metrics.jsonl record (:data:`TAGS` against
      the step), written and flushed with the record's line, so TensorBoard sees a record
      as soon as metrics.jsonl does. A resumed run starts a new file with the records kept
      from before its checkpoint and removes the files this module wrote before.
  events.out.tfevents.<time>.<host>.<pid>.result.scalelab
      written with result.json (``lm.train.records.write_result``): :data:`FINAL_TAGS` (the final
      metrics, at the last step) and the HParams session end (its status). Its name sorts
      after the log's, the order TensorBoard reads a run's files in.

A study writes its HParams experiment once into ``out/runs`` (:func:`write_experiment`, from
``experiments.lib.sweep.run_study``): the config fields its runs vary and the final
metrics, the columns of TensorBoard's HParams tab, so a sweep is compared there. A run with
no study around it (``experiments.train``) has no experiment; TensorBoard then lists every
config field.

Writer: tensorboardX's ``EventsWriter`` (the synchronous writer under its ``FileWriter``):
``FileWriter.flush()`` does not wait for the queue its background thread drains, so an
event added just before could still be missing from the file; this one writes and flushes
in the caller. Run directories written before (by the former hand-encoded writer, synced
from metrics.jsonl) hold event files of the same format and suffix: TensorBoard still reads
them, and a resumed run replaces them as above.

Axis letters: none (scalars against the step).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.record_writer import masked_crc32c

EVENT_PREFIX = "events.out.tfevents."
SUFFIX = ".scalelab"  # marks the files this module writes (and may replace)
EXPERIMENT = f"{EVENT_PREFIX}0.study{SUFFIX}"  # a study's HParams experiment in its runs/ directory
# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_bpb": "val/bpb", "lr": "lr",
        "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s"}
# result.json key -> TensorBoard tag: the metrics of the HParams tab
FINAL_TAGS = {"final_train_loss": "final/train_loss", "final_val_loss": "final/val_loss",
              "final_val_bpb": "final/val_bpb"}
# result.json status -> HParams session status
STATUS = {"complete": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scalars_of(record: Mapping, tags: Mapping[str, str] = TAGS) -> dict[str, float]:
    """The TensorBoard scalars of one record (its finite numbers under ``tags``' keys)."""
    return {tag: float(record[key]) for key, tag in tags.items() if _number(record.get(key))}


def hparam_values(fields: Mapping[str, Any]) -> dict[str, bool | str | float]:
    """Flat config fields as HParams values: numbers, booleans and strings as they are, lists and
    tuples as JSON text; None (unset) left out."""
    out: dict[str, bool | str | float] = {}
    for key, value in fields.items():
        if isinstance(value, (list, tuple)):
            out[key] = json.dumps(value)
        elif isinstance(value, (bool, str, int, float)):
            out[key] = value
    return out


def _plugin_summary(tag: str, data: HParamsPluginData) -> Summary:
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                  content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def _writer(directory: Path, part: str) -> EventsWriter:
    return EventsWriter(str(directory / "events"), filename_suffix=f".{os.getpid()}.{part}{SUFFIX}")


def _write(writer: EventsWriter, step: int, summaries: Iterable[Summary]) -> None:
    for s in summaries:
        writer.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=s))


def _scalar_summary(scalars: Mapping[str, float]) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()])


class RunEvents:
    """The event file of a run directory, written with its metrics.jsonl records.

    Opening removes the files this module wrote there before, starts a new one with the
    HParams session start of ``hparams`` (flat config fields; none: no session) and the
    records of ``history`` (those metrics.jsonl keeps: a resumed run's were cut back to its
    checkpoint).
    """

    def __init__(self, run_dir: str | Path, hparams: Mapping[str, Any] | None = None,
                 history: Iterable[Mapping] = ()):
        self.run_dir = Path(run_dir)
        for old in self.run_dir.glob(f"{EVENT_PREFIX}*{SUFFIX}"):
            old.unlink(missing_ok=True)
        self._writer = _writer(self.run_dir, "log")
        if hparams:
            _, start, _ = summary.hparams(hparam_values(hparams), {})
            _write(self._writer, 0, [start])
        for record in history:
            self._add(record)
        self._writer.flush()

    def _add(self, record: Mapping) -> bool:
        scalars = scalars_of(record)
        if not scalars or not isinstance(record.get("step"), int):
            return False
        _write(self._writer, record["step"], [_scalar_summary(scalars)])
        return True

    def write(self, record: Mapping) -> bool:
        """Append the event of one metrics.jsonl record and flush; whether it had scalars."""
        added = self._add(record)
        if added:
            self._writer.flush()
        return added

    def close(self) -> None:
        self._writer.close()


def write_result(run_dir: str | Path, result: Mapping) -> None:
    """The final metrics (:data:`FINAL_TAGS`) at the run's last step and the HParams session end."""
    writer = _writer(Path(run_dir), "result")
    try:
        step = result.get("steps") if isinstance(result.get("steps"), int) else 0
        status = Status.Value(STATUS.get(result.get("status"), "STATUS_UNKNOWN"))
        end = _plugin_summary("_hparams_/session_end_info",
                              HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=0))
        _write(writer, step, [_scalar_summary(scalars_of(result, FINAL_TAGS)), end])
    finally:
        writer.close()


def varied_fields(configs: Iterable[Mapping[str, Any]], ignore: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """The flat config fields whose values differ between ``configs``, each with a value that is
    set (not None) in one of them (what the experiment's column type is read from); ``ignore``:
    fields left out (the run's name is TensorBoard's run column already)."""
    configs = [hparam_values(c) | {k: None for k, v in c.items() if v is None} for c in configs]
    keys = sorted({k for c in configs for k in c} - set(ignore))
    out = {}
    for key in keys:
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values[1:]):
            example = next((v for v in values if v is not None), None)
            if example is not None:
                out[key] = example
    return out


def write_experiment(logdir: str | Path, hparams: Mapping[str, Any]) -> Path | None:
    """Write (replace) the HParams experiment of a study in ``logdir`` (its runs' parent): the
    columns ``hparams`` (flat fields: :func:`varied_fields`) and the metrics :data:`FINAL_TAGS`.

    Written to a temporary file and renamed to :data:`EXPERIMENT`, so shards writing it at
    once leave one whole file. None written (returns None) when nothing varies.
    """
    values = hparam_values(hparams)
    if not values:
        return None
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    experiment, _, _ = summary.hparams(values, dict.fromkeys(FINAL_TAGS.values(), 0.0))
    with tempfile.TemporaryDirectory(dir=logdir, prefix=".experiment-") as tmp:
        writer = _writer(Path(tmp), "study")
        try:
            _write(writer, 0, [experiment])
        finally:
            writer.close()
        (written,) = Path(tmp).glob(f"{EVENT_PREFIX}*")
        os.replace(written, logdir / EXPERIMENT)
    return logdir / EXPERIMENT


def read_events(path: str | Path) -> list[dict]:
    """Every event of an event file as {"wall_time", "step", "file_version" (or None), "scalars":
    {tag: value}, "plugins": {tag: plugin name}}, checking both checksums of each TFRecord.

    Raises:
      ValueError: a record's checksum does not match or the file ends inside a record.
    """
    data, events, i = Path(path).read_bytes(), [], 0
    while i < len(data):
        header = data[i:i + 8]
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        if struct.unpack("<I", data[i + 8:i + 12])[0] != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        (length,) = struct.unpack("<Q", header)
        body, end = data[i + 12:i + 12 + length], i + 16 + length
        if end > len(data):
            raise ValueError(f"{path}: truncated record at byte {i}")
        if struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(body):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        event = event_pb2.Event.FromString(body)
        values = event.summary.value
        events.append({"wall_time": event.wall_time, "step": event.step,
                       "file_version": event.file_version or None,
                       "scalars": {v.tag: v.simple_value for v in values if v.HasField("simple_value")},
                       "plugins": {v.tag: v.metadata.plugin_data.plugin_name for v in values
                                   if v.metadata.plugin_data.plugin_name}})
        i = end
    return events
