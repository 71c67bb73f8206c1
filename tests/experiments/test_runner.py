"""The sweep runner: checks before training, shards and their merge, skipping finished runs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments import runner
from lm.config import ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lm.data import DataConfig
from lm.flops import param_count, train_flops_per_token

TIMING = ["compile_s", "train_s", "wall_s"]


def tiny_run(d_model=16, steps=12, name=None, lr=1e-2) -> RunConfig:
    model = ModelConfig(d_model=d_model, num_layers=1, num_heads=1, d_ff=4 * d_model)
    return RunConfig(
        model=model,
        data=DataConfig(seq_len=32, batch_size=4),
        optimizer=OptimizerConfig(learning_rate=lr),
        train=TrainConfig(steps=steps, eval_every=steps, eval_batches=1, log_every=3, checkpoint_every=6,
                          progress=False),
        name=name or f"d{d_model}_s{steps}",
    )


def tiny_study(**kw) -> runner.Study:
    # one model shape: the whole grid shares one compiled train step (fast tests)
    runs = tuple(tiny_run(16, s, name=f"s{s}_lr{lr:g}", lr=lr) for lr in (1e-2, 3e-3) for s in (6, 12))
    kw.setdefault("loss_at_flops", (1e6, 3e6, 1e7, 3e7))
    return runner.Study(name="tiny", runs=runs, tags={r.name: {"lr": r.optimizer.learning_rate} for r in runs}, **kw)


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    study = tiny_study()
    table = runner.run_study(study, out, progress=False, compilation_cache=False)
    return study, out, table


# ------------------------------------------------------------------- checks, no training


def test_duplicate_runs_rejected():
    a = tiny_run(16, 6, name="a")
    with pytest.raises(runner.StudyError, match="duplicate run name 'a'"):
        runner.check_grid([a, dataclasses.replace(a, train=dataclasses.replace(a.train, steps=7))])
    with pytest.raises(runner.StudyError, match="identical configs"):
        runner.Study(name="s", runs=(a, dataclasses.replace(a, name="b")))


def test_too_short_run_rejected():
    with pytest.raises(runner.StudyError, match="train.steps=3, fewer than the study's minimum of 5"):
        runner.Study(name="s", runs=(tiny_run(16, 3),), min_steps=5)


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_rejected(text):
    with pytest.raises(runner.StudyError, match="--shard"):
        runner.parse_shard(text)


def test_shards_are_a_disjoint_cover():
    runs = [tiny_run(16, s) for s in range(5, 12)]
    for n in (1, 2, 3, 7, 9):
        parts = [runner.shard_runs(runs, (i, n)) for i in range(n)]
        names = [r.name for p in parts for r in p]
        assert sorted(names) == sorted(r.name for r in runs)
        assert len(set(names)) == len(names)


def test_output_dir_of_another_study_rejected_before_training(tmp_path):
    study = tiny_study()
    runner.prepare_out(study, tmp_path)
    other = runner.Study(name="tiny", runs=study.runs[:2])
    trained = []
    with pytest.raises(runner.StudyError, match="holds a different study"):
        runner.run_study(other, tmp_path, progress=False, on_run_done=lambda r, res: trained.append(r))
    assert trained == [] and list((tmp_path / "runs").iterdir()) == []
    # Run directories without a manifest are not ours either.
    stray = tmp_path / "stray"
    (stray / "runs" / "x").mkdir(parents=True)
    with pytest.raises(runner.StudyError, match="no study.json"):
        runner.prepare_out(study, stray)


def test_interpolate_loss_matches_log_linear_reference():
    records = [{"flops": 10.0, "train_loss": 5.0}, {"flops": 1000.0, "train_loss": 3.0},
               {"flops": 100.0, "train_loss": 4.0, "val_loss": 9.0}]
    got = runner.interpolate_loss(records, [1.0, 10.0, 31.622776601683793, 500.0, 1000.0, 2000.0])
    # by hand: log10 spacing, 4.5 at sqrt(10)*10, 3 + (1 - log10(5)) at 500
    want = [math.nan, 5.0, 4.5, 4.0 - (math.log10(500) - 2.0), 3.0, math.nan]
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------------- training


def test_table_has_one_row_per_run_with_exact_counts(full_sweep):
    study, out, table = full_sweep
    assert list(table["run"]) == list(study.run_names)
    assert (table["status"] == "complete").all()
    for run, row in zip(study.runs, table.to_dict("records")):
        tokens = run.train.steps * 4 * 32
        assert row["D"] == tokens
        assert row["N"] == param_count(run.model)["total"]
        assert row["C"] == tokens * train_flops_per_token(run.model, 32)
        assert row["model.d_model"] == run.model.d_model and row["lr"] == run.optimizer.learning_rate
        assert row["train.steps"] == run.train.steps and row["optimizer.learning_rate"] == run.optimizer.learning_rate
        result = json.loads((out / "runs" / run.name / "result.json").read_text())
        assert row["final_val_loss"] == result["final_val_loss"]
        assert row["final_train_loss"] == result["final_train_loss"]
        assert row["compile_s"] >= 0 and row["train_s"] > 0 and row["wall_s"] >= row["train_s"]
    # one compiled step serves every run of the same shapes (the learning rate is an argument)
    assert (table["compile_s"].iloc[1:] == 0).all()
    # the CSV reads back bit-exactly
    disk = runner.read_table(out / "results.csv")
    pd.testing.assert_frame_equal(disk.drop(columns=["resumed_from"]), table.drop(columns=["resumed_from"]),
                                  check_dtype=False, check_exact=True)
    # loss_at columns: the logged curve at that FLOP count, NaN past the run's end
    for run, row in zip(study.runs, table.to_dict("records")):
        recs = [json.loads(line) for line in (out / "runs" / run.name / "metrics.jsonl").read_text().splitlines()]
        for c in study.loss_at_flops:
            v = row[runner.loss_column(c)]
            if c > recs[-1]["flops"] or c < recs[0]["flops"]:
                assert math.isnan(v)
            else:
                lo = max((r for r in recs if r["flops"] <= c), key=lambda r: r["flops"])
                hi = min((r for r in recs if r["flops"] >= c), key=lambda r: r["flops"])
                assert min(lo["train_loss"], hi["train_loss"]) <= v <= max(lo["train_loss"], hi["train_loss"])
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["run"]) == set(study.run_names)


def test_rerun_trains_nothing(full_sweep):
    study, out, table = full_sweep
    stamps = {r.name: (out / "runs" / r.name / "result.json").stat().st_mtime_ns for r in study.runs}
    trained = []
    again = runner.run_study(study, out, progress=False, compilation_cache=False,
                             on_run_done=lambda r, res: trained.append(r.name))
    assert trained == []
    assert stamps == {r.name: (out / "runs" / r.name / "result.json").stat().st_mtime_ns for r in study.runs}
    pd.testing.assert_frame_equal(again, table, check_exact=True)


def test_shard_tables_merge_into_the_full_table(full_sweep, tmp_path):
    study, _, table = full_sweep
    paths = []
    for i in range(2):
        host = tmp_path / f"host{i}"  # separate hosts: no shared directory
        part = runner.run_study(study, host, shard=(i, 2), progress=False, compilation_cache=False)
        assert list(part["run"]) == list(study.run_names[i::2])
        assert (part["status"] == "complete").all()
        paths.append(host / f"results.shard-{i}-of-2.csv")
        assert not (host / "runs" / study.runs[1 - i].name / "result.json").exists()
    merged = runner.merge_tables(paths[::-1], order=study.run_names)
    cols = [c for c in table.columns if c not in TIMING + ["resumed_from"]]
    pd.testing.assert_frame_equal(merged[cols], table[cols], check_dtype=False, check_exact=True)
    # load_results finds the shard tables copied into one directory
    gather = tmp_path / "gather"
    runner.prepare_out(study, gather)
    for p in paths:
        (gather / p.name).write_bytes(p.read_bytes())
    loaded = runner.load_results(study, gather)
    pd.testing.assert_frame_equal(loaded[cols], table[cols], check_dtype=False, check_exact=True)
