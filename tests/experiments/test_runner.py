"""The sweep runner: checks before training, shards and their merge, skipping finished runs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

import experiments.lib.sweep  # noqa: F401  (lib.sweep, lib.table below: the package loads them on first use)
import experiments.lib.table  # noqa: F401
from experiments import lib
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.counting import param_count, train_flops_per_token

TIMING = ["compile_s", "train_s", "wall_s", "cpu_s"]


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


def tiny_study(**kw) -> lib.Study:
    # one model shape: the whole grid shares one compiled train step (fast tests)
    runs = tuple(tiny_run(16, s, name=f"s{s}_lr{lr:g}", lr=lr) for lr in (1e-2, 3e-3) for s in (6, 12))
    kw.setdefault("loss_at_flops", (1e6, 3e6, 1e7, 3e7))
    return lib.Study(name="tiny", runs=runs, tags={r.name: {"lr": r.optimizer.learning_rate} for r in runs}, **kw)


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    study = tiny_study()
    table = lib.run_study(study, out, progress=False, compilation_cache=False)
    return study, out, table


# ------------------------------------------------------------------- checks, no training


def test_duplicate_runs_rejected():
    a = tiny_run(16, 6, name="a")
    with pytest.raises(lib.StudyError, match="duplicate run name 'a'"):
        lib.study.check_grid([a, dataclasses.replace(a, train=dataclasses.replace(a.train, steps=7))])
    with pytest.raises(lib.StudyError, match="identical configs"):
        lib.Study(name="s", runs=(a, dataclasses.replace(a, name="b")))


def test_too_short_run_rejected():
    with pytest.raises(lib.StudyError, match="train.steps=3, fewer than the study's minimum of 5"):
        lib.Study(name="s", runs=(tiny_run(16, 3),), min_steps=5)


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_rejected(text):
    with pytest.raises(lib.StudyError, match="--shard"):
        lib.study.parse_shard(text)


def test_shards_are_a_disjoint_cover():
    runs = [tiny_run(16, s) for s in range(5, 12)]
    for n in (1, 2, 3, 7, 9):
        parts = [lib.study.shard_runs(runs, (i, n)) for i in range(n)]
        names = [r.name for p in parts for r in p]
        assert sorted(names) == sorted(r.name for r in runs)
        assert len(set(names)) == len(names)


def test_output_dir_of_another_study_rejected_before_training(tmp_path):
    study = tiny_study()
    lib.sweep.prepare_out(study, tmp_path)
    other = lib.Study(name="tiny", runs=study.runs[:2])
    trained = []
    with pytest.raises(lib.StudyError, match="holds a different study"):
        lib.run_study(other, tmp_path, progress=False, on_run_done=lambda r, res: trained.append(r))
    assert trained == [] and list((tmp_path / "runs").iterdir()) == []
    # Run directories without a manifest are not ours either.
    stray = tmp_path / "stray"
    (stray / "runs" / "x").mkdir(parents=True)
    with pytest.raises(lib.StudyError, match="no study.json"):
        lib.sweep.prepare_out(study, stray)


def test_interpolate_loss_matches_log_linear_reference():
    records = [{"flops": 10.0, "train_loss": 5.0}, {"flops": 1000.0, "train_loss": 3.0},
               {"flops": 100.0, "train_loss": 4.0, "val_loss": 9.0}]
    got = lib.table.interpolate_loss(records, [1.0, 10.0, 31.622776601683793, 500.0, 1000.0, 2000.0])
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
        assert row["cpu_s"] > 0  # this process's CPU seconds while it trained the run
    # one compiled step serves every run of the same shapes (the learning rate is an argument)
    assert (table["compile_s"].iloc[1:] == 0).all()
    # the CSV reads back bit-exactly
    disk = lib.read_table(out / "results.csv")
    pd.testing.assert_frame_equal(disk.drop(columns=["resumed_from"]), table.drop(columns=["resumed_from"]),
                                  check_dtype=False, check_exact=True)
    # loss_at columns: the logged curve at that FLOP count, NaN past the run's end
    for run, row in zip(study.runs, table.to_dict("records")):
        recs = [json.loads(line) for line in (out / "runs" / run.name / "metrics.jsonl").read_text().splitlines()]
        for c in study.loss_at_flops:
            v = row[lib.table.loss_column(c)]
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
    again = lib.run_study(study, out, progress=False, compilation_cache=False,
                             on_run_done=lambda r, res: trained.append(r.name))
    assert trained == []
    assert stamps == {r.name: (out / "runs" / r.name / "result.json").stat().st_mtime_ns for r in study.runs}
    pd.testing.assert_frame_equal(again, table, check_exact=True)


def test_shard_tables_merge_into_the_full_table(full_sweep, tmp_path):
    study, _, table = full_sweep
    paths = []
    for i in range(2):
        host = tmp_path / f"host{i}"  # separate hosts: no shared directory
        part = lib.run_study(study, host, shard=(i, 2), progress=False, compilation_cache=False)
        assert list(part["run"]) == list(study.run_names[i::2])
        assert (part["status"] == "complete").all()
        paths.append(host / f"results.shard-{i}-of-2.csv")
        assert not (host / "runs" / study.runs[1 - i].name / "result.json").exists()
    merged = lib.merge_tables(paths[::-1], order=study.run_names)
    cols = [c for c in table.columns if c not in TIMING + ["resumed_from"]]
    pd.testing.assert_frame_equal(merged[cols], table[cols], check_dtype=False, check_exact=True)
    # load_results finds the shard tables copied into one directory
    gather = tmp_path / "gather"
    lib.sweep.prepare_out(study, gather)
    for p in paths:
        (gather / p.name).write_bytes(p.read_bytes())
    loaded = lib.load_results(study, gather)
    pd.testing.assert_frame_equal(loaded[cols], table[cols], check_dtype=False, check_exact=True)


# ------------------------------------------------------------------------------ groups

GROUPS = (("s6_lr0.01", "s6_lr0.003"), ("s12_lr0.01", "s12_lr0.003"))  # the lr axis at each length


class Recorder:
    """A group trainer that records what it was asked to train, then trains it (vmapped)."""

    def __init__(self, kill_after_dropping: str | None = None):
        self.calls: list[tuple[str, ...]] = []
        self.kill_after_dropping = kill_after_dropping

    def __call__(self, runs, run_dirs, *, progress=None):
        from lm.train.sweep import train_vmapped

        self.calls.append(tuple(r.name for r in runs))
        train_vmapped(runs, run_dirs, progress=progress)
        if self.kill_after_dropping is not None:  # killed before it wrote this run's result.json
            for r, d in zip(runs, run_dirs):
                if r.name == self.kill_after_dropping:
                    (d / "result.json").unlink()
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def grouped_sweep(tmp_path_factory):
    """The tiny grid trained in two groups, as two shards into one directory."""
    out = tmp_path_factory.mktemp("grouped")
    study = tiny_study()
    shards = [lib.run_study(study, out, shard=(i, 2), groups=GROUPS, compilation_cache=False, progress=i == 0)
              for i in range(2)]
    table = lib.run_study(study, out, groups=GROUPS, progress=False, compilation_cache=False)
    return study, out, table, shards


def test_work_units_keep_groups_whole_across_shards():
    study = tiny_study()
    units = lib.sweep.work_units(study, GROUPS)
    assert [tuple(r.name for r in u) for u in units] == list(GROUPS)  # each placed at its first run
    solo = lib.sweep.work_units(study, GROUPS[:1])
    assert [tuple(r.name for r in u) for u in solo] == [GROUPS[0], ("s12_lr0.01",), ("s12_lr0.003",)]
    assert [u[0] for u in lib.sweep.work_units(study)] == list(study.runs)


def test_grouped_table_has_the_columns_and_values_of_solo_runs(full_sweep, grouped_sweep):
    _, _, solo = full_sweep
    study, out, table, shards = grouped_sweep
    assert list(table.columns) == list(solo.columns) and list(table["run"]) == list(study.run_names)
    assert (table["status"] == "complete").all()
    for i, part in enumerate(shards):
        assert set(part["run"]) == set(GROUPS[i]) and (out / f"results.shard-{i}-of-2.csv").exists()
    losses = [c for c in table.columns if "loss" in c or "bpb" in c]
    same = [c for c in table.columns if c not in losses + TIMING + ["resumed_from"]]
    pd.testing.assert_frame_equal(table[same], solo[same], check_exact=True)
    # a vmapped run follows its solo twin's curve (same data, same step); XLA may reorder sums
    np.testing.assert_allclose(table[losses].to_numpy(float), solo[losses].to_numpy(float), rtol=2e-5)
    assert (table["wall_s"] > 0).all() and (table["train_s"] > 0).all() and (table["cpu_s"] > 0).all()
    for name in study.run_names:
        assert json.loads((out / "runs" / name / "result.json").read_text())["vmapped_with"] == 2


def test_killed_group_retrains_only_its_unfinished_runs(grouped_sweep, tmp_path):
    study, _, reference, _ = grouped_sweep
    killed = Recorder(kill_after_dropping="s6_lr0.003")
    with pytest.raises(KeyboardInterrupt):
        lib.run_study(study, tmp_path, groups=GROUPS, train_group=killed, progress=False, compilation_cache=False)
    assert killed.calls == [GROUPS[0]]
    first = tmp_path / "runs" / "s6_lr0.01" / "result.json"
    stamp = first.stat().st_mtime_ns
    resumed = Recorder()
    table = lib.run_study(study, tmp_path, groups=GROUPS, train_group=resumed, progress=False,
                             compilation_cache=False)
    # the finished run of the killed group is kept; its unfinished run trains alone; the next group whole
    assert resumed.calls == [("s6_lr0.003",), GROUPS[1]]
    assert first.stat().st_mtime_ns == stamp
    assert (table["status"] == "complete").all()
    losses = ["final_train_loss", "final_val_loss"]
    np.testing.assert_allclose(table[losses].to_numpy(float), reference[losses].to_numpy(float), rtol=2e-5)
    # a group whose runs are all finished is skipped
    again = Recorder()
    rerun = lib.run_study(study, tmp_path, groups=GROUPS, train_group=again, progress=False,
                             compilation_cache=False)
    assert again.calls == []
    pd.testing.assert_frame_equal(rerun, table, check_exact=True)


def test_diverged_run_of_a_group_is_diverged_in_the_table(tmp_path):
    runs = (tiny_run(16, 6, name="ok", lr=1e-2), tiny_run(16, 6, name="boom", lr=1e30))
    study = lib.Study(name="div", runs=runs)
    table = lib.run_study(study, tmp_path, groups=[("ok", "boom")], progress=False, compilation_cache=False)
    row = table.set_index("run")
    assert row.loc["ok", "status"] == "complete" and np.isfinite(row.loc["ok", "final_val_loss"])
    assert row.loc["boom", "status"] == "diverged" and np.isnan(row.loc["boom", "final_val_loss"])
    assert table["final_val_loss"].dtype == float


@pytest.mark.parametrize("groups, match", [
    ([("s6_lr0.01", "nope")], r"not in the grid .*\['nope'\]"),
    ([("s6_lr0.01",), ("s6_lr0.01", "s6_lr0.003")], "'s6_lr0.01' is also in groups\\[0\\]"),
    ([("s6_lr0.01", "s6_lr0.01")], "twice"),
    ([()], "non-empty"),
    ([("s6_lr0.01", "s12_lr0.01")], "a vmapped sweep allows only"),  # lm.train.sweep.check_sweep's error
])
def test_bad_groups_fail_before_training_and_delete_nothing(full_sweep, tmp_path, groups, match):
    study, out, _ = full_sweep
    before = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*"))
    for target in (out, tmp_path / "new"):
        trainer = Recorder()
        with pytest.raises(lib.StudyError, match=match):
            lib.run_study(study, target, groups=groups, train_group=trainer, progress=False)
        assert trainer.calls == []
    assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert not (tmp_path / "new").exists()


def test_fingerprint_ignores_fields_added_later_only_at_their_default():
    import hashlib
    import itertools

    study = tiny_study()
    # the configs as written before the families were nested (the flat family keys of then, written
    # out by hand: the defaults) and before the fields below existed
    flat = {"rnn_width": None, "rnn_heads": None, "conv_width": 4, "scan_impl": "auto", "la_variant": "gla",
            "la_feature_map": "identity", "la_output_norm": "rms", "la_chunk_size": 64, "la_impl": "auto",
            "mla_q_lora_rank": 0, "mla_kv_lora_rank": 64, "mla_qk_nope_dim": 32, "mla_qk_rope_dim": 16,
            "mla_v_head_dim": 32, "mla_decode_path": "absorbed"}
    added = ("data.max_train_bytes", "data.path", "data.num_workers", "model.scan_layers", "model.remat",
             "model.parametrization", "model.base_width", "schedule.knots", "model.mup_zero_readout",
             "model.mup_zero_query", "train.checkpoint_steps", "model.mup_embedding_init", "model.mup_embedding_lr")
    old = [r.to_dict() for r in study.runs]
    for d in old:
        assert d["model"].pop("families") == {}  # attention only
        moe = d["model"]["moe"]
        d["model"].update(flat, moe_load_balance_weight=moe.pop("load_balance_weight"),
                          moe_router_z_weight=moe.pop("router_z_weight"))
    for d, path in itertools.product(old, added):
        section, leaf = path.split(".")
        del d[section][leaf]
    want = hashlib.sha256(json.dumps([old, list(study.loss_at_flops)], sort_keys=True).encode()).hexdigest()[:16]
    assert study.fingerprint() == want
    capped = lib.Study(name="tiny", runs=tuple(
        dataclasses.replace(r, data=dataclasses.replace(r.data, max_train_bytes=5000)) for r in study.runs))
    assert capped.fingerprint() != lib.Study(name="tiny", runs=study.runs).fingerprint()


def test_run_directories_written_before_an_added_field_still_belong_to_the_study(tmp_path):
    study = tiny_study()
    lib.sweep.prepare_out(study, tmp_path)
    old = study.runs[0].to_dict()
    del old["data"]["max_train_bytes"]
    (tmp_path / "runs" / study.runs[0].name).mkdir()
    (tmp_path / "runs" / study.runs[0].name / "config.json").write_text(json.dumps(old))
    lib.sweep.check_out(study, tmp_path)  # no error: the field is at its default
    old["data"]["max_train_bytes"] = 5000
    (tmp_path / "runs" / study.runs[0].name / "config.json").write_text(json.dumps(old))
    with pytest.raises(lib.StudyError, match="holds a different config"):
        lib.sweep.check_out(study, tmp_path)
