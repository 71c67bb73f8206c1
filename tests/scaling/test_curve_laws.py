"""Schedule-aware laws: the fast feature form against naive loops, parameter recovery, bootstrap.

The naive references are written here from the papers' sums (O(T^2) loops in NumPy),
independently of :mod:`scaling.schedule_features`.
"""

import jax
import numpy as np
import pandas as pd
import pytest

from scaling import lr_schedules as S
from scaling.curve_fit import curve_errors, curve_predictions, fit_curves
from scaling.curve_laws import CURVE_LAWS, evaluate
from scaling.curve_tables import load_schedules
from scaling.schedule_features import annealing_area, check_schedule

MPL = {"L0": 3.0, "A": 0.5, "alpha": 0.5, "B": 400.0, "C": 2.0, "beta": 0.6, "gamma": 0.6}
LRA = {"L0": 3.0, "A": 0.5, "alpha": 0.5, "C": 0.4}


def naive_mpl(p, eta, steps):
    """Luo et al. 2025: L0 + A S(t)^-alpha - B sum_{k=1..t} (eta_{k-1}-eta_k) G(eta_k^-gamma S_k(t))."""
    out = []
    for t in steps:
        k = np.arange(1, t + 1)
        s_k = np.array([np.sum(eta[j:t + 1]) for j in k])  # S_k(t), summed afresh for each k
        g = 1.0 - (p["C"] * eta[k] ** (-p["gamma"]) * s_k + 1.0) ** (-p["beta"])
        ld = np.sum((eta[k - 1] - eta[k]) * g)
        out.append(p["L0"] + p["A"] * np.sum(eta[:t + 1]) ** (-p["alpha"]) - p["B"] * ld)
    return np.array(out)


def naive_s2(eta, steps, decay=0.999):
    """Tissue et al. 2024: S2 = sum m_i, m_i = decay m_{i-1} + (eta_{i-1} - eta_i), after the peak."""
    peak = int(np.argmax(eta))
    m, s2, out = 0.0, 0.0, {}
    for i in range(1, len(eta)):
        m = decay * m + (eta[i - 1] - eta[i] if i > peak else 0.0)
        s2 += m
        out[i] = s2
    return np.array([out.get(t, 0.0) for t in steps])


SMALL = {
    "constant": S.constant(300, 1e-3, warmup=20),
    "cosine": S.cosine(300, 1e-3, 1e-4, warmup=20),
    "wsd": S.wsd(300, 1e-3, 1e-4, decay_start=200, warmup=20),
    "wsd_linear": S.wsd(300, 1e-3, 1e-4, decay_start=200, warmup=20, shape="linear"),
    "two_stage": S.two_stage(300, 1e-3, 3e-4, switch=150, warmup=20),
}
STEPS = np.array([1, 5, 19, 20, 21, 60, 149, 150, 151, 220, 299])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_exact_features_equal_the_naive_sum(name):
    eta = SMALL[name]
    law = CURVE_LAWS["multi_power"]
    ref = 7e-4  # any LR unit: the coordinates absorb it
    x = law.features(eta, STEPS, ref, 0.0)
    got = evaluate(law, law.from_params(MPL, ref), x)
    np.testing.assert_allclose(got, naive_mpl(MPL, eta, STEPS), rtol=1e-12)


def test_binned_features_are_second_order_accurate():
    """Bins of relative width r: error ~ r^2 (halving r quarters it), 1e-6 of the loss at r = 0.1."""
    eta = S.cosine(3000, 1e-3, 1e-4, warmup=100)
    steps = np.arange(50, 3000, 97)
    law = CURVE_LAWS["multi_power"]
    exact = naive_mpl(MPL, eta, steps)
    err = {r: np.max(np.abs(evaluate(law, law.from_params(MPL, 1e-3), law.features(eta, steps, 1e-3, r))
                            - exact)) for r in (0.2, 0.1)}
    assert err[0.1] < 1e-5 * exact.min()
    assert err[0.1] < err[0.2] / 2.5


def test_annealing_area_equals_the_momentum_loop():
    for eta in SMALL.values():
        np.testing.assert_allclose(annealing_area(eta, STEPS, 1.0), naive_s2(eta, STEPS), atol=1e-15)
    law = CURVE_LAWS["lr_annealing"]
    eta = SMALL["wsd"]
    s = np.cumsum(eta)[STEPS]
    want = LRA["L0"] + LRA["A"] * s ** -LRA["alpha"] - LRA["C"] * naive_s2(eta, STEPS)
    got = evaluate(law, law.from_params(LRA, 2e-3), law.features(eta, STEPS, 2e-3, 0.1))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def synthetic(params_law, noise=3e-4, seed=0):
    """Four runs (constant, cosine, WSD, two-stage) of 3000 steps, every 60th step, log-normal noise."""
    law, params = params_law
    rng = np.random.default_rng(seed)
    lrs = {"constant": S.constant(3000, 1e-3, 100), "cosine": S.cosine(3000, 1e-3, 1e-4, 100),
           "wsd": S.wsd(3000, 1e-3, 1e-4, 2200, 100), "two_stage": S.two_stage(3000, 1e-3, 2e-4, 1500, 100)}
    steps = np.arange(120, 3000, 60)
    rows = []
    for run, eta in lrs.items():
        x = CURVE_LAWS[law].features(eta, steps, 1e-3, 0.0 if law == "lr_annealing" else 0.05)
        loss = evaluate(CURVE_LAWS[law], CURVE_LAWS[law].from_params(params, 1e-3), x)
        noisy = loss * np.exp(rng.normal(0, noise, len(steps)))
        rows.append(pd.DataFrame({"run": run, "step": steps, "loss": noisy}))
    return pd.concat(rows, ignore_index=True), lrs


@pytest.fixture(scope="module")
def mpl_data():
    return synthetic(("multi_power", MPL), noise=0.0)


def test_multi_power_recovers_known_parameters(mpl_data):
    curves, lrs = mpl_data
    fit = fit_curves(curves, lrs, "multi_power", method="bfgs")
    for k, v in MPL.items():
        assert fit.params[k] == pytest.approx(v, rel=2e-2), k
    assert np.max(np.abs(fit.predict() / curves["loss"].to_numpy() - 1)) < 1e-4


def test_lr_annealing_recovers_known_parameters():
    curves, lrs = synthetic(("lr_annealing", LRA), noise=3e-4)
    fit = fit_curves(curves, lrs, "lr_annealing")
    assert fit.method == "bfgs" and fit.n_at_best >= 2
    for k, v in LRA.items():
        assert fit.params[k] == pytest.approx(v, rel=3e-2), k


def test_recipe_runs_and_bootstrap_resamples_whole_runs(mpl_data):
    curves, lrs = mpl_data
    fit = fit_curves(curves, lrs, "multi_power")
    assert fit.method == "luo2025"
    # the recipe stops early (at most 200 AdamW steps from its simplified fit): near, not on
    assert np.max(np.abs(fit.predict() / curves["loss"].to_numpy() - 1)) < 2e-2
    boot = fit.bootstrap(n=8, seed=1)
    assert boot.n == 8 and len(boot.samples) == 8 - boot.n_failed > 0
    assert set(boot.distinct) <= {1, 2, 3, 4}  # runs, not points, are drawn
    new = pd.DataFrame({"run": "wsd_long", "step": [500, 3000, 5999]})
    pred = curve_predictions(fit, new, {"wsd_long": S.wsd(6000, 1e-3, 1e-4, 5000, 100)}, boot)
    assert list(pred.columns[:2]) == ["run", "step"]
    assert np.all(pred["lower"] <= pred["predicted_loss"] + 1e-12)
    assert np.all(pred["predicted_loss"] <= pred["upper"] + 1e-12)


def test_curve_errors_are_per_run_then_averaged():
    pred = pd.DataFrame({"run": ["a", "a", "b", "b"], "loss": [2.0, 4.0, 1.0, 3.0],
                         "predicted_loss": [2.2, 4.0, 1.0, 2.7]})
    e = curve_errors(pred)
    assert e.loc["a", "PredE"] == pytest.approx(0.05) and e.loc["b", "WorstE"] == pytest.approx(0.1)
    assert e.loc["mean", "WorstE"] == pytest.approx(0.1)
    assert e.loc["a", "R2"] == pytest.approx(1 - 0.04 / 2.0)


@pytest.mark.parametrize("lr_rows, message", [
    ({"run": ["a", "a"], "step": [0, 2], "lr": [1e-3, 1e-3]}, "step 1 is missing"),
    ({"run": ["b", "b", "b"], "step": [0, 1, 2], "lr": [1e-3, 1e-3, 1e-3]}, "run 'a' has no learning rates"),
])
def test_bad_schedules_name_the_problem(lr_rows, message):
    curves = pd.DataFrame({"run": ["a"] * 3, "step": [0, 1, 2], "loss": [3.0, 2.9, 2.8]})
    with pytest.raises(ValueError, match=message):
        fit_curves(curves, pd.DataFrame(lr_rows), "lr_annealing")


def test_non_monotone_steps_and_steps_past_the_schedule_are_refused():
    lrs = load_schedules({"a": np.full(10, 1e-3)})
    with pytest.raises(ValueError, match="strictly increasing"):
        fit_curves(pd.DataFrame({"run": "a", "step": [1, 3, 2, 4, 5], "loss": 3.0}), lrs, "lr_annealing")
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        check_schedule(np.full(10, 1e-3), [5, 10], "a")


def test_recipe_steps_stay_in_the_laws_domain():
    """The recipe's AdamW step of 5e-2 on A, from A = 0.04 (recipe units) above a true 0.011, would take A
    below 0 (the log-coordinates' NaN: the law was refused on one CPU, fitted on another); the projected
    step keeps it positive, and the fit goes on past that step to a lower objective."""
    from scaling import curve_recipe
    from scaling.curve_fit import stack_features
    from scaling.curve_tables import load_curves, match

    truth = {**MPL, "A": 0.02}
    curves, lrs = synthetic(("multi_power", truth), noise=0.0)
    law = CURVE_LAWS["multi_power"]
    per_run = match(load_curves(curves), load_schedules(lrs))
    x = stack_features(law, per_run, 1e-3, 0.05)
    logy = np.log(np.concatenate([lo for *_, lo in per_run]))
    th, log_u = law.from_params(truth, 1e-3), np.log(curve_recipe.RECIPE_PEAK)
    nat = np.array([np.exp(th[0]), np.exp(th[1] + th[2] * log_u), th[2], np.exp(th[3] - log_u) / th[5],
                    np.exp(th[4] - (1.0 - th[6]) * log_u), th[5], th[6]])
    assert 0.01 < nat[1] < 0.012
    start = nat.copy()
    start[1] = 0.04
    with jax.enable_x64(True):
        np.testing.assert_allclose(curve_recipe.internal_theta(nat), th, rtol=1e-12)  # the recipe's units
        xj = {k: jax.numpy.asarray(v) for k, v in x.items()}
        p, f, k = curve_recipe._adamw(law.log_form)(start[None], xj, logy, np.ones((1, len(logy))), 1e-3)
        f0 = float(jax.numpy.sum(curve_recipe.huber(law.log_form(curve_recipe.internal_theta(start), xj) - logy,
                                                    1e-3)))
    assert np.all(np.asarray(p) > 0) and np.all(np.isfinite(curve_recipe.internal_theta(np.asarray(p[0]))))
    assert int(k[0]) > 2 and float(f[0]) < f0


def test_recipe_stage_one_keeps_the_best_start_inside_the_laws_domain(monkeypatch):
    """The simplified law's lowest objective may have L0 < 0 (L0 = -1.84 on the default schedules study):
    stage 2's log-coordinates cannot start there, so stage 1 keeps the best start with L0, A, B > 0;
    with none inside, fit_curves says so instead of "did not converge"."""
    from scaling import curve_recipe
    from scaling.table import FitConvergenceError

    theta = np.array([[-1.84, 3.13, 0.07, 906.0], [0.24, 1.11, 0.16, 912.0], [0.3, -0.1, 0.2, 900.0],
                      [0.5, 1.0, 0.2, 800.0]])
    value = np.array([0.00481, 0.004867, 0.0047, np.nan])
    monkeypatch.setattr(curve_recipe, "minimize_multistart", lambda *a, **k: {"theta": theta, "value": value})
    best = curve_recipe._stage1(theta, {}, np.zeros(3), np.ones((1, 3)), 1e-3)
    np.testing.assert_array_equal(best, theta[[1]])
    curves, lrs = synthetic(("multi_power", MPL), noise=0.0)
    monkeypatch.setattr(curve_recipe, "minimize_multistart", lambda form, theta0, *a, **k: {
        "theta": np.tile([-1.0, 1.0, 0.2, 800.0], (len(theta0), 1)), "value": np.full(len(theta0), 0.005)})
    with pytest.raises(FitConvergenceError, match="recipe ended without a finite objective .as where no simplified-law start kept L0, A, B > 0"):
        fit_curves(curves, lrs, "multi_power")
