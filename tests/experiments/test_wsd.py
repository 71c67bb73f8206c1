"""experiments.wsd: the smoke study end to end; branches equal from-scratch WSD runs; FLOPs accounting."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import lib, wsd
from lm.train import solo as lm_train
from lm.train.records import read_metrics

PRESET = wsd.PRESETS["smoke"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsd") / "study"
    result = wsd.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, result


def test_grid_shape_and_branch_points(tmp_path):
    study = wsd.build_study(PRESET, tmp_path)
    kinds = [study.tags[r.name]["kind"] for r in study.runs]
    assert kinds[0] == "stable" and kinds.count("wsd") == kinds.count("cosine") == len(PRESET.lengths)
    stable = study.runs[0]
    for r in study.runs[1:]:
        assert r.model == stable.model and r.data == stable.data
        if study.tags[r.name]["kind"] == "wsd":
            src, s = r.train.init_from
            assert s == r.schedule.decay_start == r.train.steps - round(PRESET.decay_fraction * r.train.steps)
            assert s % stable.train.checkpoint_every == 0 and s <= stable.train.steps


def test_flops_saved_matches_step_count(smoke):
    _, result = smoke
    points = [n - round(PRESET.decay_fraction * n) for n in PRESET.lengths]
    wsd_steps = max(points) + sum(n - s for n, s in zip(PRESET.lengths, points))
    assert result["flops"]["flops_saved"] == pytest.approx(1 - wsd_steps / sum(PRESET.lengths), rel=1e-12)


def test_gaps_are_read_from_the_run_results(smoke):
    out, result = smoke
    for length, row in result["gaps"].iterrows():
        w = json.loads((out / "runs" / f"wsd-L{length}" / "result.json").read_text())["final_val_loss"]
        c = json.loads((out / "runs" / f"cosine-L{length}" / "result.json").read_text())["final_val_loss"]
        assert row["wsd"] == pytest.approx(w) and row["cosine"] == pytest.approx(c)
        assert row["gap"] == pytest.approx(w - c)
    assert (out / "report.md").read_text().count("| ") > len(PRESET.lengths)
    assert (out / "data_scaling.png").exists() and (out / "loss_curves.png").exists()


def test_branch_equals_a_from_scratch_wsd_run(smoke, tmp_path):
    """Restoring the stable checkpoint (params, Adam state, data position) and decaying gives the
    same run as training the WSD schedule from step 0 (the reference: no branching at all)."""
    out, _ = smoke
    study = wsd.build_study(PRESET, out)
    branch = next(r for r in study.runs if r.name == f"wsd-L{PRESET.lengths[0]}")
    scratch = dataclasses.replace(branch, name="scratch", train=dataclasses.replace(branch.train, init_from=None))
    res = lm_train.train(scratch, tmp_path / "scratch")
    got = json.loads((lib.run_dir(out, branch) / "result.json").read_text())
    np.testing.assert_allclose(got["final_val_loss"], res["final_val_loss"], rtol=1e-6)
    np.testing.assert_allclose(got["final_train_loss"], res["final_train_loss"], rtol=1e-6)
    # and the branch's learning rates are the linear decay to min_ratio (hand-written schedule)
    recs = read_metrics(lib.run_dir(out, branch))
    s, n = branch.schedule.decay_start, branch.train.steps
    for r in recs:
        step = r["step"] - 1
        want = PRESET.learning_rate * (1 - (1 - PRESET.min_ratio) * (step - s + 1) / (n - s))
        assert r["lr"] == pytest.approx(want)
