"""Fit options: per-point weights, Huber likelihood with a free scale, start grids, offset
laws, predictions with bootstrap intervals (API and command line), samples.csv."""

import numpy as np
import pandas as pd
import pytest

from scaling import cli, fit_law, laws
from scaling.predict import predictions, select_rows
from tests.scaling.helpers import TRUE, chinchilla_table, theta_of

START = theta_of(TRUE)[None, :]


@pytest.fixture(scope="module")
def table():
    return chinchilla_table(m=40, noise=5e-3, seed=21)


def test_weights_equal_dropping_and_duplicating_rows(table):
    w = np.ones(len(table))
    w[:5] = 0.0
    w[5:8] = 2.0
    weighted = fit_law(table.assign(w=w), init_grid=START, weights="w")
    manual = fit_law(pd.concat([table.iloc[5:], table.iloc[5:8]]), init_grid=START)
    assert np.isclose(weighted.objective, manual.objective, rtol=1e-8)
    for k in TRUE:
        assert np.isclose(weighted.params[k], manual.params[k], rtol=1e-5), k
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        fit_law(table, init_grid=START, weights=-w)


def test_huber_likelihood_recovers_law_and_scale(table):
    res = fit_law(table, init_grid=START, objective="huber_ml", huber_delta=1.345)
    assert abs(res.params["alpha"] - TRUE["alpha"]) < 0.05
    assert abs(res.params["E"] - TRUE["E"]) < 0.1
    # residuals drawn with SD 5e-3: the Huber scale (delta=1.345 ~ 95% Gaussian efficiency)
    # estimates it
    assert 3e-3 < res.params["sigma"] < 8e-3
    r = res.residuals()
    from scaling.multistart import huber_log_normaliser
    nll = np.sum(np.where(np.abs(r / res.params["sigma"]) <= 1.345, 0.5 * (r / res.params["sigma"]) ** 2,
                          1.345 * (np.abs(r / res.params["sigma"]) - 0.5 * 1.345)))
    nll += len(r) * (np.log(res.params["sigma"]) + huber_log_normaliser(1.345))
    assert np.isclose(res.objective, nll, rtol=1e-9)
    boot = res.bootstrap(n=20, seed=0)
    assert "sigma" in boot.samples and boot.samples["sigma"].std() > 0


def test_huber_likelihood_default_delta_is_on_the_standardised_scale(table):
    """huber_ml's delta applies to r / sigma: its default is 1.345, and sigma then estimates the
    residual scale; the raw-residual 1e-3 would make the density Laplace, sigma ~ 1e-3 mean|r|."""
    res = fit_law(table, init_grid=START, objective="huber_ml")
    assert res.huber_delta == 1.345
    assert 3e-3 < res.params["sigma"] < 8e-3
    assert fit_law(table, init_grid=START).huber_delta == 1e-3
    tiny = fit_law(table, init_grid=START, objective="huber_ml", huber_delta=1e-3)
    mean_abs = np.mean(np.abs(tiny.residuals()))
    assert 0.5 < tiny.params["sigma"] / (1e-3 * mean_abs) < 2.0


def test_huber_normaliser_integrates_the_density():
    from scipy.integrate import quad

    from scaling.multistart import huber_log_normaliser
    for delta in (1e-2, 1.0, 3.0):
        h = lambda x: 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)
        z = 2 * quad(lambda x: np.exp(-h(x)), 0, delta)[0] + 2 * quad(lambda x: np.exp(-h(x)), delta, np.inf)[0]
        assert np.isclose(np.log(z), huber_log_normaliser(delta), rtol=1e-8)


def test_grid_values_replace_axes(table):
    res = fit_law(table, init_grid="small", grid_values={"alpha": [0.3], "beta": [0.3, 0.4]})
    assert res.n_starts == 3 ** 3 * 2
    assert set(res.starts.columns) >= {"a", "b", "e", "alpha", "beta"}


@pytest.mark.parametrize("law, var, fn", [("offset_n", "N", laws.offset_n), ("offset_d", "D", laws.offset_d)])
def test_offset_laws_recover_parameters(law, var, fn):
    rng = np.random.default_rng(5)
    x = np.exp(rng.uniform(np.log(1e7), np.log(1e11), 30))
    loss = fn(x, 1.9, 300.0, 0.3) * np.exp(rng.normal(0, 1e-3, 30))
    res = fit_law(pd.DataFrame({var: x, "loss": loss}), law=law)
    assert abs(res.params["alpha"] - 0.3) < 0.02 and abs(res.params["E"] - 1.9) < 0.05


def test_no_start_hits_the_iteration_cap_on_a_tiny_table():
    res = fit_law(chinchilla_table(m=6, noise=1e-2, seed=8), law="chinchilla_tied")
    assert res.n_starts == 900 and res.starts["converged"].all()


def test_predictions_interval_and_rel_error(table):
    fit_rows, held = select_rows(table, where="N < 2.5e9", holdout="N > 1.5e9")
    assert len(held) and (held["N"] > 1.5e9).all() and (fit_rows["N"] <= 1.5e9).all()
    res = fit_law(fit_rows, init_grid=START)
    boot = res.bootstrap(n=30, seed=1)
    pred = predictions(res, held, boot)
    assert (pred["lower"] <= pred["predicted_loss"]).all() and (pred["predicted_loss"] <= pred["upper"]).all()
    np.testing.assert_allclose(pred["rel_error"], pred["predicted_loss"] / held["loss"].to_numpy() - 1)
    np.testing.assert_allclose(pred["predicted_loss"], laws.chinchilla(held["N"], held["D"], **res.params), rtol=1e-10)


def test_cli_holdout_predict_samples(table, tmp_path, capsys):
    csv, other = tmp_path / "runs.csv", tmp_path / "big.csv"
    table.to_csv(csv, index=False)
    table.head(3).drop(columns=["loss"]).to_csv(other, index=False)
    out = tmp_path / "out"
    assert cli.main([str(csv), "--init-grid", "small", "--holdout", "N > 2e9", "--predict", str(other),
                     "--bootstrap", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pred = pd.read_csv(out / "predictions.csv")
    n_held = int((table["N"] > 2e9).sum())
    assert len(pred) == n_held + 3 and pred["rel_error"].notna().sum() == n_held
    assert pred[["predicted_loss", "lower", "upper"]].notna().all().all()
    samples = pd.read_csv(out / "samples.csv", index_col="resample")
    assert len(samples) == 20 and {"alpha", "beta", "E"} <= set(samples.columns)
    assert (out / "predicted_vs_observed.png").exists()
    report = (out / "report.md").read_text()
    assert "## Predictions" in report and "bootstrap SD" in report
    assert f"{samples['alpha'].std():.3g}" in printed
