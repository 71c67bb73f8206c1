"""A sweep with broken or diverged runs: failed runs are marked and the sweep goes on, the
analysis reads the finished runs and names the others, progress logs stay plain lines."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments import lib
from experiments.lib import report as lib_report  # not a lazy export of experiments.lib
from experiments.lib.progress import SweepProgress
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.train.tensorboard import EXPERIMENT, read_events


def tiny_run(name: str, lr: float = 1e-2) -> RunConfig:
    return RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1, d_ff=32),
                     data=DataConfig(seq_len=16, batch_size=2, source="synthetic", synthetic_doc_len=64),
                     optimizer=OptimizerConfig(learning_rate=lr),
                     train=TrainConfig(steps=4, eval_every=4, eval_batches=1, log_every=2, checkpoint_every=2,
                                       keep_checkpoints=None, progress=False),
                     name=name)


def test_a_run_with_unreadable_checkpoints_fails_alone_and_the_sweep_goes_on(tmp_path, capsys):
    study = lib.Study(name="broken", runs=(tiny_run("a"), tiny_run("b", lr=3e-3), tiny_run("boom", lr=1e30)))
    first = lib.run_study(study, tmp_path, progress=False, compilation_cache=False)
    assert first.set_index("run")["status"].to_dict() == {"a": "complete", "b": "complete", "boom": "diverged"}
    for name, row in first.set_index("run").iterrows():  # every run has its TensorBoard event file
        (events,) = (tmp_path / "runs" / name).glob("events.out.tfevents.*.log.scalelab")
        logged = [e for e in read_events(events) if e["scalars"]]
        if row["status"] == "complete":
            assert logged[-1]["step"] == 4 and logged[-1]["scalars"]["val/loss"] == np.float32(row["final_val_loss"])
            (final,) = (tmp_path / "runs" / name).glob("events.out.tfevents.*.result.scalelab")
            assert [e for e in read_events(final) if e["scalars"]][-1]["scalars"]["final/val_loss"] == \
                np.float32(row["final_val_loss"])
    assert (tmp_path / "runs" / EXPERIMENT).is_file()  # the HParams columns: the learning rates differ
    boom = json.loads((tmp_path / "runs" / "boom" / "result.json").read_text())  # the one divergence record
    assert boom["status"] == "diverged" and boom["diverged_at"] is not None and boom["final_val_loss"] is None
    assert not (tmp_path / "runs" / "boom" / "failure.json").exists()
    # a run directory of the former form (failure.json, no result.json) still reads as diverged, never retrained
    (tmp_path / "runs" / "boom" / "result.json").unlink()
    (tmp_path / "runs" / "boom" / "failure.json").write_text(json.dumps({"status": "diverged", "error": "nan"}))
    for name in ("a", "b"):  # killed after the last checkpoint, before result.json
        (tmp_path / "runs" / name / "result.json").unlink()
    for f in (tmp_path / "runs" / "a" / "checkpoints").rglob("*"):
        if f.is_file() and "ocdbt.process_0" in str(f):
            f.write_bytes(f.read_bytes()[:10])
    capsys.readouterr()
    table = lib.run_study(study, tmp_path, progress=False, compilation_cache=False).set_index("run")
    assert table["status"].to_dict() == {"a": "failed", "b": "complete", "boom": "diverged"}
    assert table.loc["b", "final_val_loss"] == first.set_index("run").loc["b", "final_val_loss"]
    failure = json.loads((tmp_path / "runs" / "a" / "failure.json").read_text())
    assert failure["status"] == "failed" and "none of the checkpoints" in failure["error"]
    assert "1 run(s) failed (unreadable checkpoints" in capsys.readouterr().out
    assert not lib.sweep._finished(tmp_path, study.runs[0])  # retried by the next call
    assert lib.sweep._finished(tmp_path, study.runs[2])  # a diverged run is not
    assert not (tmp_path / "runs" / "boom" / "result.json").exists()  # the old-form run was not trained again


def _table(statuses: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"run": list(statuses), "status": list(statuses.values()),
                         "final_val_loss": [1.0 if s == "complete" else math.nan for s in statuses.values()]})


@pytest.mark.parametrize("statuses, kwargs, expect_rows, message", [
    ({"a": "complete", "b": "pending", "c": "diverged"}, {}, None,
     "analysis skipped: 1 of 3 runs pending (not trained yet; other shards or an interrupted sweep: rerun): b; "
     "1 diverged: c"),
    ({"a": "complete", "b": "failed"}, {}, None, "analysis skipped: 1 failed (unreadable checkpoints; rerun to retry): b"),
    ({"a": "diverged", "b": "diverged"}, {}, None, "analysis skipped: no run of the 2 finished without diverging"),
    ({"a": "complete", "b": "diverged", "c": "complete"}, {}, ["a", "c"],
     "analysing 2 of 3 runs; 1 diverged (left out of the analysis): b"),
    ({"a": "complete", "b": "diverged"}, {"keep_diverged": True}, ["a", "b"],
     "analysing 1 of 2 runs; 1 diverged (kept in the analysis): b"),
    ({"a": "complete", "b": "diverged"}, {"require_all": True}, None,
     "analysis skipped: 1 of 2 runs diverged (b) and this study's analysis needs every run"),
    ({"a": "complete", "b": "complete"}, {}, ["a", "b"], ""),
])
def test_analysis_table_reads_finished_runs_and_names_the_others(statuses, kwargs, expect_rows, message, capsys):
    ready = lib_report.analysis_table(_table(statuses), **kwargs)
    out = capsys.readouterr().out.strip()
    assert (ready is None) == (expect_rows is None)
    if ready is not None:
        assert ready["run"].tolist() == expect_rows
    assert out.startswith(message) if message else out == ""
    assert "pending shards" not in out


def test_report_names_the_diverged_runs(tmp_path):
    report = lib.write_report(tmp_path, ["# Study"])
    lib_report.note_left_out(report, _table({"a": "complete", "b": "diverged"}))
    text = report.read_text()
    assert "## Diverged runs" in text and "1 of 2 runs diverged (non-finite loss)" in text and "`b`" in text
    lib_report.note_left_out(report, _table({"a": "complete"}))
    assert report.read_text() == text


def test_progress_off_a_terminal_is_a_plain_line_every_few_percent():
    runs = [dataclasses.replace(r, train=dataclasses.replace(r.train, steps=100)) for r in (tiny_run("a"), tiny_run("b"))]
    stream = io.StringIO()
    bar = SweepProgress(runs, done=0, total=2, stream=stream, every_percent=25, every_seconds=1e9)
    assert not bar.interactive  # a StringIO is not a terminal
    for run in runs:
        bar.start([run])
        for step in range(1, 101):
            bar(step, 100, {"loss": 2.0})
        bar.finish([run])
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and all(line.startswith("[progress] runs ") for line in lines)
    steps = [line for line in lines if " step " in line]
    assert 4 <= len(steps) <= 5  # every 25% of the work, not every step
    assert lines[-1].startswith("[progress] runs 2/2 | b done | 100%")


def test_progress_on_a_terminal_is_a_bar():
    stream = io.StringIO()
    bar = SweepProgress([tiny_run("a")], done=0, total=1, stream=stream, interactive=True)
    bar.start([tiny_run("a")])
    bar(1, 4, {"loss": 3.0})
    bar.close()
    assert "\r" in stream.getvalue() and "runs 0/1 | a step 1/4 loss 3.000" in stream.getvalue()
