"""lm/train/records.py: the one writer and reader of metrics.jsonl / result.json."""

import dataclasses
import errno
import json
import math
import os

import pytest

from lm.train import run_writer
from lm.train import records
from lm.model.config import ModelConfig, RunConfig
from lm.data.config import DataConfig

RUN = RunConfig(model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
                data=DataConfig(source="synthetic", seq_len=16, batch_size=2), name="r")


def _write(path, recs, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)


def test_partial_last_line_is_ignored_on_read_and_dropped_on_resume(tmp_path):
    recs = [records.metric_record(RUN, s, 1e-3, 5.0 - s, 1.0, 100.0) for s in (1, 2, 3)]
    path = tmp_path / records.METRICS
    _write(path, recs, tail='{"step": 4, "tokens": 12')  # killed mid-write
    assert [r["step"] for r in records.read_metrics(tmp_path)] == [1, 2, 3]
    # resuming from the checkpoint at step 2 drops the later record and the partial line
    records.prepare_metrics(tmp_path, 2)
    assert path.read_text().splitlines() == [json.dumps(r) for r in recs[:2]]
    with run_writer.MetricsLog(path) as log:
        log.write(records.metric_record(RUN, 3, 1e-3, 2.0, 1.0, None))
    assert [r["step"] for r in records.read_metrics(tmp_path)] == [1, 2, 3]
    # a fresh run starts an empty log
    records.prepare_metrics(tmp_path, None)
    assert records.read_metrics(tmp_path) == []


def test_a_corrupted_middle_line_is_an_error_not_silently_dropped(tmp_path):
    (tmp_path / records.METRICS).write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 of 3"):
        records.read_metrics(tmp_path)


def test_metric_record_counts_tokens_and_flops():
    rec = records.metric_record(RUN, 5, 1e-3, 4.0, 0.5, None)
    assert rec["tokens"] == 5 * 16 * 2
    per_token = records.result_record(RUN, status="complete", final_train_loss=1.0, final_val_loss=1.0,
                                      final_val_bpb=1.0, compile_s=0.0, train_s=0.0,
                                      resumed_from=None)["flops_per_token"]
    assert rec["flops"] == rec["tokens"] * per_token > 0


def test_result_is_strict_json_with_nan_as_null(tmp_path):
    res = records.result_record(RUN, status="diverged", final_train_loss=float("nan"), final_val_loss=float("nan"),
                                final_val_bpb=float("nan"), compile_s=1.0, train_s=2.0, resumed_from=None,
                                diverged_at=3)
    assert math.isnan(res["final_train_loss"])
    records.write_result(tmp_path, res)
    text = (tmp_path / records.RESULT).read_text()
    assert "NaN" not in text and not (tmp_path / (records.RESULT + ".tmp")).exists()
    back = records.read_result(tmp_path)
    assert back["final_val_loss"] is None and back["diverged_at"] == 3 and back["steps"] == RUN.train.steps
    assert records.read_result(tmp_path / "missing") is None
    records.write_config(tmp_path, RUN)
    assert records.read_config(tmp_path) == RUN


def test_the_former_failure_json_of_a_diverged_run_reads_as_a_diverged_result(tmp_path):
    (tmp_path / records.FAILURE).write_text(json.dumps({"status": "diverged", "error": "loss became non-finite"}))
    res = records.read_result(tmp_path)
    assert res["status"] == "diverged" and res["final_val_loss"] is None and res["error"] == "loss became non-finite"
    records.write_failure(tmp_path, "failed", "unreadable checkpoints")  # the runner's "failed": not a result
    assert records.read_result(tmp_path) is None
    assert records.read_record(tmp_path, records.FAILURE) == {"status": "failed", "error": "unreadable checkpoints"}
    (tmp_path / records.RESULT).write_text('{"status": "compl')  # cut short: not finished, no error
    assert records.read_result(tmp_path) is None


def test_run_writer_writes_the_records_and_tells_its_listeners(tmp_path):
    seen = []
    writer = run_writer.RunWriter(tmp_path / "r", RUN, listeners=[lambda w, kind, rec: seen.append((w.run_dir, kind, rec))])
    writer.begin({"fingerprint": "abc"})
    writer.open_metrics(None)
    rec = records.metric_record(RUN, 1, 1e-3, 4.0, 0.5, None)
    writer.metrics(rec)
    res = records.result_record(RUN, status="complete", final_train_loss=4.0, final_val_loss=4.1, final_val_bpb=5.0,
                                compile_s=0.0, train_s=0.0, resumed_from=None)
    writer.result(res)
    writer.close()
    assert records.read_config(tmp_path / "r") == RUN and records.read_corpus(tmp_path / "r")["fingerprint"] == "abc"
    assert records.read_metrics(tmp_path / "r") == [rec] and records.read_result(tmp_path / "r") == res
    assert seen == [(tmp_path / "r", "metrics", rec), (tmp_path / "r", "result", res)]
    off = run_writer.RunWriter(tmp_path / "off", RUN, enabled=False, listeners=[lambda *a: seen.append(a)])
    off.begin(None)
    off.open_metrics(None)
    off.metrics(rec)
    off.result(res)
    assert not (tmp_path / "off").exists() and len(seen) == 2  # a non-primary host writes and tells nothing


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_record_written_into_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    records.write_config(tmp_path, RUN)
    before = (tmp_path / records.CONFIG).read_text()
    monkeypatch.setattr(records.os, "fsync", _no_space)
    with pytest.raises(records.DiskFullError) as err:
        records.write_config(tmp_path, dataclasses.replace(RUN, name="other"))
    assert str(err.value).startswith(f"{tmp_path}: no space left on device (")
    assert str(err.value).endswith(" MB free) while writing config.json")
    assert (tmp_path / records.CONFIG).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [records.CONFIG]


def test_a_full_disk_while_appending_a_metric_is_a_disk_full_error(tmp_path):
    with run_writer.MetricsLog(tmp_path / records.METRICS) as log:
        log._file.write = _no_space
        with pytest.raises(records.DiskFullError, match="while appending to metrics.jsonl"):
            log.write({"step": 1})


@pytest.mark.parametrize("err, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (ValueError("RESOURCE_EXHAUSTED: Error writing \"x\" in OCDBT database: Failed to write 10 bytes to file 18: "
                "No space left on device [os_error_code='28']"), True),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"), False),  # device OOM
    (OSError(errno.EACCES, "Permission denied"), False),
], ids=["ENOSPC", "EDQUOT", "orbax", "device OOM", "EACCES"])
def test_disk_full_errors_are_recognised_through_wrapping(err, full, tmp_path):
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = err
    for e in (err, wrapped):
        got = records.disk_full_error(e, tmp_path)
        assert (got is not None) == full
        if full:
            assert isinstance(got, records.DiskFullError) and got.directory == tmp_path and got.free_bytes > 0


@pytest.mark.parametrize("text, says", [
    ("{not json", "Expecting property name"),
    ('{"schema_version": 99}', "schema_version"),
    ('{"model": {"d_model": -1}}', "d_model"),
])
def test_a_config_json_that_does_not_load_is_one_line_naming_the_file(tmp_path, text, says):
    (tmp_path / records.CONFIG).write_text(text)
    with pytest.raises(ValueError) as err:
        records.read_config(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / records.CONFIG) + ": ") and says in message and "\n" not in message
    assert (tmp_path / records.CONFIG).read_text() == text  # nothing rewritten
