"""Bootstrap intervals: coverage of the true parameters, derived quantities, determinism,
refits against a brute-force reference, the convergence test, dropped and degenerate refits."""

import numpy as np
import pandas as pd

from scaling import fit_law, laws
from scaling.bootstrap import BootstrapResult, bootstrap_fit, percentile_intervals, resample_weights
from tests.scaling.helpers import TRUE, chinchilla_table, theta_of


def test_resample_weights_are_multinomial_counts():
    w = resample_weights(m=50, n=400, seed=1)
    assert w.shape == (400, 50) and np.all(w.sum(axis=1) == 50)
    # Each run's count is Binomial(50, 1/50): mean 1, variance 0.98.
    assert abs(w.mean() - 1.0) < 1e-12 and abs(w.var() - 0.98) < 0.05


def test_coverage_close_to_nominal():
    """Percentile intervals at 80 % over independent synthetic tables: the true alpha, beta
    and E are covered at close to the nominal rate, and the intervals are not inflated
    (their mean width tracks the spread of the estimates across tables)."""
    level, n_tables = 0.8, 16
    covered, widths, estimates = [], [], []
    for seed in range(n_tables):
        table = chinchilla_table(m=40, noise=0.01, seed=100 + seed)
        res = fit_law(table, init_grid=theta_of(TRUE)[None, :])
        boot = res.bootstrap(n=120, seed=seed, level=level)
        row_cov, row_w = [], []
        for k in ("alpha", "beta", "E"):
            lo, hi = boot.interval(k)
            row_cov.append(lo <= TRUE[k] <= hi)
            row_w.append(hi - lo)
        covered.append(row_cov)
        widths.append(row_w)
        estimates.append([res.params[k] for k in ("alpha", "beta", "E")])
    covered = np.array(covered)
    rate = covered.mean()
    # 48 trials at p = 0.8: mean 38.4, sd 2.8; the percentile bootstrap tends to
    # under-cover slightly at small m, hence the wider lower margin.
    assert 0.6 <= rate <= 0.95, rate
    spread = np.percentile(estimates, 90, axis=0) - np.percentile(estimates, 10, axis=0)
    ratio = np.mean(widths, axis=0) / spread
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio


def test_derived_quantities_follow_the_samples():
    table = chinchilla_table(m=60, noise=5e-3, seed=7)
    res = fit_law(table, init_grid=theta_of(TRUE)[None, :])
    boot = res.bootstrap(n=50, seed=3, budgets=[1e21])
    s = boot.samples
    np.testing.assert_allclose(s["a=beta/(alpha+beta)"], s["beta"] / (s["alpha"] + s["beta"]))
    n, d = laws.chinchilla_allocation(1e21, s["A"], s["B"], s["alpha"], s["beta"])
    np.testing.assert_allclose(s["N_opt(C=1e+21)"], n, rtol=1e-12)
    np.testing.assert_allclose(s["D_opt(C=1e+21)"], d, rtol=1e-12)
    assert boot.n == 50 and len(s) == 50 - boot.n_failed
    lo, hi = boot.interval("alpha")
    assert lo < res.params["alpha"] < hi
    again = res.bootstrap(n=50, seed=3, budgets=[1e21])
    np.testing.assert_array_equal(again.samples.to_numpy(), s.to_numpy())


def test_refits_match_a_brute_force_reference():
    """Default Huber objective: every resample refitted independently from the whole 'small'
    start grid (243 starts each, best kept; 150 resamples) is the reference. The bootstrap's
    refits (a few
    starts each) reach the reference's optimum and give the same SDs within 15 %."""
    from scaling.law_specs import get_law
    from scaling.multistart import minimize_multistart

    table = chinchilla_table(m=40, noise=0.02, seed=11)
    res = fit_law(table, init_grid="small")
    n = 150
    boot = res.bootstrap(n=n, seed=5)
    assert boot.n_failed == 0 and boot.starts > 1
    grid = get_law("chinchilla").grid("small")
    counts = resample_weights(m=40, n=n, seed=5)
    ref = minimize_multistart(res.law.log_form, np.tile(grid, (n, 1)), res.logx, res.logy,
                              weights=np.repeat(counts, len(grid), axis=0), huber_delta=1e-3)
    value = ref["value"].reshape(n, len(grid))
    best = np.nanargmin(value, axis=1)
    ref_theta = ref["theta"].reshape(n, len(grid), -1)[np.arange(n), best]
    ref_params = res.law.to_params(ref_theta)
    ours = res.law.to_params(boot.theta)
    # the same resamples: each refit at (or below) the reference's objective, up to rounding
    ref_best = value[np.arange(n), best]
    ours_value = np.array([  # the summed Huber loss at our refit, computed in NumPy
        np.sum(counts[i] * huber(np.log(res.law.predict({k: v[i] for k, v in ours.items()},
                                                           {"N": table["N"], "D": table["D"]}))
                                 - res.logy)) for i in range(n)])
    assert np.mean(ours_value <= ref_best * (1 + 1e-6) + 1e-15) >= 0.98
    for k in ("E", "A", "B", "alpha", "beta"):
        ratio = np.std(ours[k], ddof=1) / np.std(ref_params[k], ddof=1)
        assert abs(ratio - 1) < 0.15, (k, ratio)


def huber(r, delta=1e-3):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def test_scaled_gradient_matches_finite_differences():
    """max_j |sum_i dl_i/dtheta_j| / sum_i |dl_i/dtheta_j| against central differences of the
    per-point Huber terms written in NumPy."""
    from scaling.refit import scaled_gradient

    table = chinchilla_table(m=30, noise=0.02, seed=3)
    res = fit_law(table, init_grid=theta_of(TRUE)[None, :])
    w = resample_weights(m=30, n=3, seed=0)
    w[0] = 1.0  # the full data: its optimum is a stationary point
    theta = res.theta + np.array([[0.0] * 5, [0.1, -0.2, 0.05, 0.01, 0.0],
                                  [1.0, 1.0, -0.3, 0.2, 0.1]])
    got = scaled_gradient(res.law.log_form, theta, res.logx, res.logy, w, base=res.theta,
                          free=res.free, huber_delta=1e-3)

    def terms(th, wi):
        n_, d_ = table["N"].to_numpy(), table["D"].to_numpy()
        pred = np.exp(th[2]) + np.exp(th[0]) * n_ ** -th[3] + np.exp(th[1]) * d_ ** -th[4]
        return wi * huber(np.log(pred) - res.logy)

    for i in range(3):
        h = 1e-7
        jac = np.stack([(terms(theta[i] + h * e, w[i]) - terms(theta[i] - h * e, w[i])) / (2 * h)
                        for e in np.eye(5)], axis=1)
        want = np.max(np.abs(jac.sum(0)) / np.abs(jac).sum(0))
        assert np.isclose(got[i], want, rtol=1e-4, atol=1e-6), (i, got[i], want)
    assert got[0] < 1e-3 < got[2]


def test_refits_stopped_by_the_cap_are_dropped_and_named():
    """A cap of 2 BFGS steps leaves refits short of a tight gradient tolerance: they are
    counted as failed with reasons, dropped from the samples, and the warning names the share."""
    from scaling.diagnostics import bootstrap_warnings

    table = chinchilla_table(m=40, noise=0.02, seed=2)
    res = fit_law(table, init_grid="small")
    boot = bootstrap_fit(res, n=40, seed=1, max_iter=2, grid_starts=0, gtol=1e-9)
    assert boot.n_failed > 0.1 * boot.n and len(boot.samples) == boot.n - boot.n_failed
    reasons = boot.failed_reasons
    assert reasons.get("max_iter", 0) + reasons.get("stalled", 0) == boot.n_failed
    sg, ok = boot.scaled_grad, boot.status == "converged"
    assert np.all(sg[~ok] > 1e-9) and np.all(sg[ok] <= 1e-9)
    msg = [w for w in bootstrap_warnings(boot) if "did not converge" in w]
    assert len(msg) == 1 and f"{boot.n_failed / boot.n:.1%}" in msg[0] and "unreliable" in msg[0]


def _boot_with(status, degenerate=None):
    samples = pd.DataFrame({"alpha": np.linspace(0.3, 0.4, int(np.sum(status == "converged")))})
    iv = percentile_intervals(samples, {"alpha": 0.35}, 0.9)
    return BootstrapResult(samples=samples, intervals=iv, level=0.9, n=len(status),
                           n_failed=int(np.sum(status != "converged")), status=status)


def test_failed_share_thresholds():
    """<= 2 % dropped: no warning; 2-10 %: a warning naming the share and reasons; > 10 %:
    the intervals are called unreliable."""
    from scaling.refit import refit_warnings

    def status(k_failed, n=100):
        return np.array(["max_iter"] * k_failed + ["converged"] * (n - k_failed))

    assert refit_warnings(_boot_with(status(2))) == []
    w = refit_warnings(_boot_with(status(5)))
    assert len(w) == 1 and "5.0%" in w[0] and "max_iter: 5" in w[0] and "biases" in w[0]
    w = refit_warnings(_boot_with(status(11)))
    assert len(w) == 1 and "11.0%" in w[0] and "unreliable" in w[0]


def test_boundary_mask():
    from scaling.bootstrap import boundary_mask

    params = {"E": np.array([1.8, 1e-9, 1.7, 1.9, 1.8]),
              "A": np.array([400.0, 500.0, 1e40, 300.0, np.inf]),
              "alpha": np.array([0.3, 0.3, 0.3, 2.5, 0.3])}
    mask, reasons = boundary_mask(params, min_loss=2.0)
    assert mask.tolist() == [False, True, True, True, True]
    assert reasons == {"E -> 0": 1, "A running off": 2, "A not finite": 1, "alpha > 2": 1}


def test_refits_on_a_boundary_are_named_with_intervals_without_them():
    """E + A N^-alpha fitted to a power law with a small offset (E = 0.2): some resamples
    put E at its boundary 0. They are flagged (E below 1e-3 of the smallest loss, recomputed
    here), their share is in the warning, and the intervals without them are the percentiles
    of the remaining refits."""
    from scaling.diagnostics import bootstrap_warnings

    rng = np.random.default_rng(0)
    n_ = np.geomspace(1e7, 1e9, 12)
    loss = 0.2 + 400 * n_ ** -0.3 * np.exp(rng.normal(0, 0.01, n_.size))
    res = fit_law(pd.DataFrame({"N": n_, "loss": loss}), law="offset_n")
    boot = res.bootstrap(n=200, seed=0)
    e = boot.samples["E"].to_numpy()
    flagged = e < 1e-3 * loss.min()
    assert flagged.any() and np.array_equal(boot.degenerate, flagged)
    assert boot.degenerate_reasons == {"E -> 0": int(flagged.sum())}
    lo, hi = boot.interval("E")
    assert lo < 1e-6  # the degenerate corner drags the lower end to ~0 ...
    kept = e[~flagged]
    np.testing.assert_allclose(boot.intervals_without_degenerate.loc["E", ["lower", "upper"]],
                               np.percentile(kept, [2.5, 97.5]), rtol=1e-12)
    assert boot.intervals_without_degenerate.loc["E", "lower"] > 1e-3  # ... not without it
    msg = [w for w in bootstrap_warnings(boot) if "boundary" in w]
    assert len(msg) == 1 and f"{flagged.mean():.1%}" in msg[0] and "E -> 0" in msg[0]
