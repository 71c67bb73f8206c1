"""experiments.lr_scaling: law recovery from a synthetic landscape; the smoke grid end to end (vmapped)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from experiments import lr_scaling

TRUE = {"c": 2.0, "a": -0.7, "b": 0.3, "d": 0.5, "g": 0.6}


def synthetic(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """A loss landscape whose minimum per (N, D) is exactly at eta = c N^a D^b, B = d D^g (both on the grid)."""
    rng = np.random.default_rng(seed)
    rows = []
    for N, D in itertools.product((1e6, 4e6, 1.6e7), (1e9, 4e9)):
        eta = TRUE["c"] * N ** TRUE["a"] * D ** TRUE["b"]
        bopt = TRUE["d"] * D ** TRUE["g"]
        for f_lr, f_b in itertools.product((0.25, 0.5, 1.0, 2.0, 4.0), (0.5, 1.0, 2.0)):
            loss = 3.0 + 0.05 * np.log(f_lr) ** 2 + 0.02 * np.log(f_b) ** 2 + noise * rng.standard_normal()
            rows.append({"N": N, "D": D, "lr": eta * f_lr, "batch_size": bopt * f_b, "loss": loss})
    return pd.DataFrame(rows)


def test_fit_laws_recovers_known_exponents():
    fits = lr_scaling.fit_laws(synthetic(), threshold=0.0, n_bootstrap=20)
    for k, v in TRUE.items():
        assert fits["estimate"][k] == pytest.approx(v, rel=1e-9, abs=1e-9)
    # the near-optimal runs, filtered once and resampled, lie on the law: every identified resample recovers it
    for k in ("a", "b", "g"):
        lo, hi = fits["intervals"][k]
        assert lo - 1e-9 <= TRUE[k] <= hi + 1e-9


def test_bootstrap_widens_with_noise():
    clean = lr_scaling.fit_laws(synthetic(0.0), threshold=0.0, n_bootstrap=50)
    noisy = lr_scaling.fit_laws(synthetic(0.03), threshold=0.0, n_bootstrap=50)
    width = lambda f: f["intervals"]["a"][1] - f["intervals"]["a"][0]  # noqa: E731
    assert width(noisy) > width(clean)


def test_preset_validation():
    with pytest.raises(ValueError, match="multiple of batch"):
        lr_scaling.Preset(cells=(("d16L1", 1000), ("d32L1", 2048)), batch_sizes=(4, 8),
                          learning_rates=(1e-3, 1e-2, 1e-1), seq_len=32)


def test_smoke_grid_end_to_end(tmp_path):
    out = tmp_path / "study"
    res = lr_scaling.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--bootstrap", "10"])
    table, preset = res["table"], lr_scaling.PRESETS["smoke"]
    assert len(table) == len(preset.cells) * len(preset.batch_sizes) * len(preset.learning_rates)
    assert (table["status"] == "complete").all()
    np.testing.assert_allclose(table["lr"], table["optimizer.learning_rate"])
    np.testing.assert_array_equal(table["batch_size"], table["data.batch_size"])
    # every run of a cell trained exactly D tokens, whatever its batch size
    for (size, tokens) in preset.cells:
        assert (table[table["cell"] == lr_scaling.cell_name(size, tokens)]["D"] == tokens).all()
    # the near-optimal set holds each cell's best run
    near = res["near_optimal"]
    best = table.loc[table.groupby("cell")["final_val_loss"].idxmin(), "run"]
    assert set(best) <= set(near["run"])
    assert (out / "heatmaps.png").exists() and "eta_opt(N, D)" in (out / "report.md").read_text()
    # rerun: nothing is trained again and the table is identical
    again = lr_scaling.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--bootstrap", "10"])
    pd.testing.assert_frame_equal(again["table"], table)


def test_grid_edge_optima_flags_only_extremes():
    lrs, bss = [1e-3, 1e-2, 1e-1], [4, 8, 16]
    best = pd.DataFrame([
        {"cell": "inside", "lr": 1e-2, "batch_size": 8},
        {"cell": "small-batch", "lr": 1e-2, "batch_size": 4},
        {"cell": "both", "lr": 1e-1, "batch_size": 16},
    ])
    edges = dict(lr_scaling.grid_edge_optima(best, lrs, bss))
    assert set(edges) == {"small-batch", "both"}
    assert "batch size 4 is the smallest" in edges["small-batch"]
    assert "learning rate 0.1 is the largest" in edges["both"] and "batch size 16 is the largest" in edges["both"]


def test_no_analysis_of_a_partial_grid(tmp_path, capsys):
    # --analysis-only before any run (or with other shards pending) must not fit a partial grid
    result = lr_scaling.main(["--preset", "smoke", "--out", str(tmp_path), "--analysis-only"])
    assert "fits" not in result and (result["table"]["status"] == "pending").all()
    assert "analysis skipped" in capsys.readouterr().out
