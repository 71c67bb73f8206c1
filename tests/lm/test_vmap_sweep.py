"""lm.train.sweep: each vmapped run's loss curve equals its sequential twin (the one loop, K = 1, the solo step).

Tolerance: the twin runs the same float32 math, but vmapping turns each matmul into a
batched one whose reduction order XLA may tile differently, so losses agree to a few
float32 ulps per step and Adam's normalised update carries such differences forward; over
8 steps the observed relative gap is ~2e-7. We require rtol 1e-5 (about 80 ulps at loss ~6),
far below any real difference: one step of a 1.5x larger learning rate moves the loss by
>1e-3 relative here.
"""

import contextlib
import dataclasses
import json

import numpy as np
import pytest

from lm.data import check
from lm.train import loop, multihost, records, sharding
from lm.train import sweep as vs
from lm.model.config import ModelConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data.config import DataConfig

BASE = RunConfig(
    model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
    data=DataConfig(source="synthetic", seq_len=32, batch_size=4, synthetic_doc_len=100, synthetic_num_tokens=20_000),
    schedule=ScheduleConfig(kind="wsd", warmup_steps=2, decay_fraction=0.25),
    train=TrainConfig(steps=8, eval_batches=1, log_every=4, progress=False),
    name="t",
)


def sequential_losses(run: RunConfig) -> np.ndarray:
    """float32 [s]: ``run`` trained alone by the one loop (K = 1, the solo step, no directory)."""
    mesh = sharding.single_device_mesh()
    with contextlib.closing(multihost.make_host_iterator(run, mesh, "train")) as it:
        return loop.train_loop([run], sharding.init_sharded_state(run, mesh), it, mesh, evaluate_runs=False).losses[0]


def test_sweep_runs_is_the_product_grid():
    runs = vs.sweep_runs(BASE, learning_rates=[1e-3, 2e-3], seeds=[0, 1, 2])
    assert len(runs) == 6
    want = {(a, b) for a in (1e-3, 2e-3) for b in (0, 1, 2)}
    assert {(r.optimizer.learning_rate, r.train.seed) for r in runs} == want
    assert all(r.optimizer.weight_decay == BASE.optimizer.weight_decay for r in runs)
    assert len({r.name for r in runs}) == 6


def test_check_sweep_refuses_different_shapes():
    other = dataclasses.replace(BASE, name="u", model=dataclasses.replace(BASE.model, d_model=64, d_ff=128))
    with pytest.raises(ValueError, match="model"):
        vs.check_sweep([BASE, other])
    with pytest.raises(ValueError, match="unique"):
        vs.check_sweep([BASE, BASE])


@pytest.mark.parametrize("width", [None, 0, 3])  # CPU default (2: a loop of 2 x 2), all 4 vmapped, 3 + remainder 1
def test_vmapped_curves_equal_sequential_twins(tmp_path, width):
    runs = (
        vs.sweep_runs(BASE, learning_rates=[1e-3, 1e-2])
        + vs.sweep_runs(BASE, learning_rates=[3e-3], weight_decays=[0.5], seeds=[7])
        + (dataclasses.replace(BASE, name="cos", schedule=ScheduleConfig(kind="cosine", warmup_steps=1)),)
    )
    dirs = [tmp_path / r.name for r in runs]
    res = vs.train_vmapped(runs, dirs, evaluate=False, width=width)
    assert res.losses.shape == (4, 8)
    assert res.diverged_at == [None] * 4
    twins = np.stack([sequential_losses(r) for r in runs])
    np.testing.assert_allclose(res.losses, twins, rtol=1e-5, atol=0)
    # the runs really differ (so equality above is not vacuous)
    assert np.abs(twins[0, -1] - twins[1, -1]) > 1e-3
    # metrics.jsonl: window means of the per-step losses, like lm.train.solo.train
    recs = [json.loads(x) for x in (dirs[1] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [4, 8]
    np.testing.assert_allclose([r["train_loss"] for r in recs], [twins[1, :4].mean(), twins[1, 4:].mean()], rtol=1e-5)
    assert recs[0]["lr"] == pytest.approx(1e-2)
    assert (dirs[3] / "result.json").exists()
    assert all(records.read_corpus(d) == check.corpus_record(BASE.data) for d in dirs)  # what each run read


def test_a_diverging_run_is_flagged_and_leaves_the_others_untouched(tmp_path):
    short = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, steps=4))
    # weight decay inf turns run 1's parameters non-finite after its first update: its second loss is NaN.
    # OptimizerConfig refuses inf, so the value is forced past validation to exercise the divergence guard.
    runs = vs.sweep_runs(short, weight_decays=[0.1, 0.2])
    object.__setattr__(runs[1].optimizer, "weight_decay", float("inf"))
    res = vs.train_vmapped(runs, [tmp_path / r.name for r in runs], evaluate=False)
    assert res.diverged_at == [None, 1]
    assert np.isfinite(res.losses[1, 0]) and np.isnan(res.losses[1, 1:]).all()
    np.testing.assert_allclose(res.losses[0], sequential_losses(runs[0]), rtol=1e-5, atol=0)
    assert json.loads((tmp_path / runs[1].name / "result.json").read_text())["status"] == "diverged"


def test_a_grouped_run_writes_the_records_of_its_solo_run(tmp_path):
    """One loop: the same record timing (log_every, eval_every, the last step), window means and evaluations."""
    from lm.train import solo as train

    cfg = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, eval_every=6))
    runs = vs.sweep_runs(cfg, learning_rates=[1e-3, 1e-2])
    res = vs.train_vmapped(runs, [tmp_path / r.name for r in runs])
    solo = train.train(runs[1], tmp_path / "solo")
    grouped, alone = records.read_metrics(tmp_path / runs[1].name), records.read_metrics(tmp_path / "solo")
    assert [r["step"] for r in grouped] == [r["step"] for r in alone] == [4, 6, 8]
    assert [sorted(r) for r in grouped] == [sorted(r) for r in alone]  # val_loss at 6 and 8 in both
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose([r.get(key, 0.0) for r in grouped], [r.get(key, 0.0) for r in alone], rtol=1e-5)
    for key in ("final_train_loss", "final_val_loss", "final_val_bpb"):
        np.testing.assert_allclose(res.results[1][key], solo[key], rtol=1e-5)
    assert res.results[1]["vmapped_with"] == 2 and res.results[1]["diverged_at"] is None
