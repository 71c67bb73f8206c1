"""experiments.data_constrained: R_D* recovery on the law's own synthetic table, helpers, the train-only
unique-data cap, smoke end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from experiments import data_constrained as dc
from lm.data import pipeline as lm_data
from scaling import laws

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "R_D_star": 15.4, "R_N_star": 5.3}


def _table() -> pd.DataFrame:
    rows = []
    # models below N_opt(U) for every U, so the 1-epoch runs follow Chinchilla exactly (N' = N)
    for N, U, e in itertools.product((1e6, 2e6, 4e6), (1e8, 3e8, 1e9), (1, 2, 4, 8, 16, 32, 64)):
        rows.append({"status": "complete", "N": N, "U": U, "D": e * U, "epochs": e, "size": f"n{N:g}",
                     "final_val_loss": laws.data_constrained(N, e * U, U, **TRUE)})
    return pd.DataFrame(rows)


def test_fit_recovers_R_D_star():
    res = dc.fit_data_constrained(_table(), n_bootstrap=0)
    for k in ("E", "alpha", "beta"):
        assert res["chinchilla"].params[k] == pytest.approx(TRUE[k], rel=1e-3)
    assert res["dc"].params["R_D_star"] == pytest.approx(TRUE["R_D_star"], rel=1e-3)


def test_repeated_value_matches_effective_data():
    e = np.array([1.0, 2.0, 4.0, 40.0])
    np.testing.assert_allclose(dc.repeated_value(e, 15.4), laws.effective_data(e * 1e9, 1e9, 15.4) / 1e9, rtol=1e-12)


def test_epoch_threshold_is_where_the_increase_crosses():
    N, U = 4e6, 1e8
    e1 = dc.epochs_for_loss_increase(TRUE, N, U, 0.01)
    e2 = dc.epochs_for_loss_increase(TRUE, N, U, 0.02)
    assert 1 < e1 < e2 < np.inf
    def ratio(e):
        return laws.data_constrained(N, e * U, U, **TRUE) / laws.data_constrained(N, e * U, e * U, **TRUE)

    assert ratio(e1) > 1.01 and ratio(e1 / 1.01) <= 1.01


def test_unique_budget_caps_training_only_and_U_is_exact():
    """U (the table's tag) is the number of training targets one epoch yields, counted from the
    batches; every run of the study reads the same validation batches whatever its U."""
    study = dc.build_study(dc.PRESETS["smoke"])
    data = {study.tags[r.name]["unique_bytes"]: r.data for r in study.runs}
    us = {ub: {study.tags[r.name]["U"] for r in study.runs if study.tags[r.name]["unique_bytes"] == ub} for ub in data}
    val = None
    for ub, cfg in data.items():
        it = lm_data.make_iterator(cfg, "train", num_epochs=1)
        targets = sum(float(b["weights"].sum()) for b in it)
        assert us[ub] == {int(targets)}
        it = lm_data.make_iterator(cfg, "validation")
        batches = [next(it)["targets"] for _ in range(2)]
        it.close()
        if val is not None:
            np.testing.assert_array_equal(np.stack(batches), val)
        val = np.stack(batches)
    assert len({u for s in us.values() for u in s}) == len(data)


def test_smoke_end_to_end(tmp_path):
    out = tmp_path / "study"
    res = dc.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--bootstrap", "5"])
    table, preset = res["table"], dc.PRESETS["smoke"]
    assert len(table) == len(preset.sizes) * len(preset.unique_bytes) * len(preset.epochs)
    assert (table["status"] == "complete").all() and np.isfinite(table["final_val_loss"]).all()
    # D = epochs x U up to one step of rounding
    tokens_per_step = preset.seq_len * preset.batch_size
    assert (np.abs(table["D"] - table["epochs"] * table["U"]) <= tokens_per_step / 2).all()
    # U grows with the byte cap
    u = table.groupby("unique_bytes")["U"].first()
    assert u.is_monotonic_increasing and u.iloc[0] > 0
    assert (out / "repeated_value.png").exists() and "R_D_star" in (out / "report.md").read_text()


def test_identification_notes_name_what_the_grid_cannot_measure():
    p = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28, "R_D_star": 15.0, "R_N_star": 5.0}
    u = np.array([1e9, 1e10])
    u_n = laws.n_opt_for_tokens(u, p["A"], p["B"], p["alpha"], p["beta"])
    runs = lambda n_factor: pd.DataFrame({"N": u_n * n_factor, "U": u, "epochs": [1, 4]})
    assert dc.identification_notes(p, runs(2.0)) == []  # excess parameters, finite R's, E > 0
    small = dc.identification_notes(p, runs(0.5))  # every N below U_N: R_N* never acts
    assert len(small) == 1 and "no run has more parameters" in small[0]
    flat = dc.identification_notes(dict(p, R_N_star=1e13, E=1e-20), runs(2.0))
    assert len(flat) == 2 and "flat direction" in flat[0] and "2 of 2 runs" in flat[0] and "E = 1e-20" in flat[1]
    iv = pd.DataFrame({"lower": [3.0, 7.0], "upper": [3.0, 9.0]}, index=["R_D_star", "R_N_star"])
    assert any("R_D* = 15 is not identified" in n for n in dc.identification_notes(p, runs(2.0), iv))
