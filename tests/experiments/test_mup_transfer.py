"""experiments.mup_transfer: optimum / drift / prediction on known curves; a tiny grid end to end (shards, resume)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments import lib, mup_transfer

TINY = mup_transfer.Preset(base_width=8, learning_rates=(4e-3, 1.6e-2, 6.4e-2), steps=4, num_layers=1, seq_len=16,
                           batch_size=4, eval_batches=1)


def test_optimum_vertex_and_interval():
    lrs = 1e-3 * 2.0 ** np.arange(6)
    losses = 3.0 + 0.1 * (np.log2(lrs) - np.log2(4.5e-3)) ** 2
    o = mup_transfer.optimum(lrs, losses, threshold=0.03)
    assert o["lr_opt"] == pytest.approx(4.5e-3, rel=1e-6)  # the parabola is exact here
    assert o["best_lr"] == 4e-3 and not o["on_edge"]
    assert (o["lr_lo"], o["lr_hi"]) == (4e-3, 8e-3)  # 8e-3 is 2.2% above the best, 2e-3 4.5%
    diverged = mup_transfer.optimum(lrs, np.where(lrs > 1e-2, np.nan, losses), threshold=0.0)
    assert diverged["best_lr"] == 4e-3


def test_drift_and_prediction_from_a_known_table():
    lrs = [1e-3 * 2**i for i in range(5)]
    rows = []
    for par, shift in (("sp", -1.0), ("mup", 0.0)):  # SP's optimum halves per width doubling
        for k, width in enumerate((8, 16, 32, 64)):
            N = 1000 * 4**k
            best = np.log2(4e-3) + shift * k
            rows.append({"parametrization": par, "width": width, "N": N,
                         **mup_transfer.optimum(np.array(lrs), 2.0 + 50 * N**-0.5 + 0.05 * (np.log2(lrs) - best) ** 2,
                                                0.01)})
    opt = pd.DataFrame(rows)
    drift = mup_transfer.drift_steps(opt, lrs)
    assert drift["mup"] == pytest.approx(0.0, abs=1e-9)
    assert drift["sp"] < -1.5
    pred = mup_transfer.predict_widest(opt, "mup")
    assert abs(pred["rel_error"]) < 1e-3  # L(N) = 2 + 50 N^-1/2 exactly


def test_tiny_grid_end_to_end_with_shards(tmp_path):
    study, groups = mup_transfer.build_study(TINY, "transformer")
    assert len(study.runs) == 2 * 4 * 3 and len(groups) == 8
    for shard in ((0, 2), (1, 2)):
        lib.run_study(study, tmp_path, shard=shard, groups=groups, progress=False, compilation_cache=False)
    table = lib.run_study(study, tmp_path, groups=groups, progress=False, compilation_cache=False)  # resumes: all done
    assert (table["status"] == "complete").all() and len(table) == 24
    result = mup_transfer.analyze(study, table, tmp_path, threshold=TINY.threshold)
    assert set(result["drift"]) == {"sp", "mup"} and len(result["optima"]) == 8
    assert np.isfinite(result["prediction"]["mup"]["predicted"])
    for name in ("transfer.png", "prediction.png", "report.md", "optima.csv", "summary.json"):
        assert (tmp_path / name).exists()
    assert "Loss prediction" in (tmp_path / "report.md").read_text()
