"""IsoFLOP approaches 1 and 2 on synthetic Chinchilla data with known exponents."""

import numpy as np
import pandas as pd
import pytest

from scaling import fit_isoflop
from scaling.isoflop import envelope, group_budgets, optimal_power_laws
from tests.scaling.helpers import TRUE, chinchilla_loss

A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # N_opt ~ C^a (Hoffmann Eq. (4))


def isoflop_table(noise=0.0, seed=0, jitter=0.0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.geomspace(1e18, 1e21, 7):
        g = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (
            1 / (TRUE["alpha"] + TRUE["beta"]))
        n_opt = g * (c / 6) ** A_TRUE
        for f in np.geomspace(1 / 3, 3, 9):
            cc = c * (1 + jitter * rng.uniform(-1, 1))
            n = n_opt * f
            d = cc / (6 * n)
            rows.append(dict(C=cc, N=n, D=d, loss=chinchilla_loss(n, d, **TRUE)
                             * np.exp(rng.normal(0, noise))))
    return pd.DataFrame(rows)


def test_group_budgets_tolerates_small_mismatch():
    C = np.array([1e18, 1.01e18, 0.995e18, 1e19, 1.02e19, 1e20])
    g = group_budgets(C, rtol=0.05)
    assert len(np.unique(g)) == 3
    assert g[0] == g[1] == g[2] and g[3] == g[4]


def test_recovers_exponents_and_optima():
    iso = fit_isoflop(isoflop_table(jitter=0.01), n_bootstrap=0)
    assert len(iso.optima) == 7 and iso.optima["in_range"].all()
    # A parabola in log N is an approximation of the isoFLOP curve: exponents to 0.01.
    assert abs(iso.a - A_TRUE) < 0.01 and abs(iso.b - (1 - A_TRUE)) < 0.01
    np.testing.assert_allclose(iso.optima["C"] * 0 + 6 * iso.optima["N_star"]
                               * iso.optima["D_star"], iso.optima["C"], rtol=0.03)


def test_bootstrap_interval_covers_truth():
    iso = fit_isoflop(isoflop_table(noise=2e-3, seed=1), n_bootstrap=100, seed=0)
    lo, hi = iso.a_interval
    assert lo < iso.a < hi and lo < A_TRUE + 0.01 and hi > A_TRUE - 0.01
    assert hi - lo < 0.1


def test_power_law_stage_is_ols_in_log_space():
    C = np.geomspace(1e18, 1e22, 6)
    opt = pd.DataFrame({"C": C, "N_star": 0.1 * C**0.52, "D_star": 1.6 * C**0.48,
                        "in_range": True})
    e = optimal_power_laws(opt)
    assert np.isclose(e["a"], 0.52) and np.isclose(e["k_N"], 0.1)
    assert np.isclose(e["b"], 0.48) and np.isclose(e["k_D"], 1.6)


def test_warns_when_minimum_outside_sampled_range():
    t = isoflop_table()
    c0 = np.sort(t["C"].unique())[0]
    n_opt = t[t["C"] == c0]["N"].median()
    edge = t[(t["C"] != c0) | (t["N"] < n_opt * 0.6)]
    with pytest.warns(UserWarning, match="outside the sampled range"):
        iso = fit_isoflop(edge, n_bootstrap=0)
    assert not iso.optima.sort_values("C")["in_range"].iloc[0]


def test_extrapolation_check_on_clean_data():
    iso = fit_isoflop(isoflop_table(), n_bootstrap=0)
    ex = iso.extrapolation_check()
    assert abs(ex["L_rel_error"]) < 0.01 and abs(ex["N_rel_error"]) < 0.1


def test_envelope_approach_1():
    rows = []
    for n in np.geomspace(1e7, 3e9, 14):
        for d in np.geomspace(1e8, 1e12, 60):
            rows.append(dict(N=n, D=d, C=6 * n * d, loss=chinchilla_loss(n, d, **TRUE)))
    env = envelope(pd.DataFrame(rows), n_bins=40, C_range=(1e17, 1e20))
    # With a discrete set of 14 model sizes the envelope exponent is approximate.
    assert abs(env["a"] - A_TRUE) < 0.03
    assert len(env["envelope"]) >= 30


def test_without_token_column_uses_6ND():
    t = isoflop_table().drop(columns=["D"])
    iso = fit_isoflop(t, n_bootstrap=0)
    np.testing.assert_allclose(6 * iso.optima["N_star"] * iso.optima["D_star"], iso.optima["C"],
                               rtol=1e-12)
    assert abs(iso.a - A_TRUE) < 0.01
