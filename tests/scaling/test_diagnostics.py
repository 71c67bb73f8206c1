"""Honest warnings (scaling.diagnostics): each fires on the case it names, and a clean fit
has none."""

import numpy as np
import pandas as pd
import pytest

from scaling import fit_law
from scaling.bootstrap import BootstrapResult, percentile_intervals
from scaling.diagnostics import bootstrap_warnings, fit_warnings, parameter_warnings
from tests.scaling.helpers import TRUE, chinchilla_table, theta_of

SMALL = {"a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0),
         "alpha": (0.0, 0.5, 1.0), "beta": (0.0, 0.5, 1.0)}


@pytest.fixture(scope="module")
def clean():
    res = fit_law(chinchilla_table(m=60, noise=3e-3, seed=2), init_grid=theta_of(TRUE)[None, :])
    return res, res.bootstrap(n=40, seed=0)


def test_clean_fit_has_no_warnings(clean):
    assert fit_warnings(*clean) == []


def test_all_n_equal_is_flagged():
    t = chinchilla_table(m=30, noise=1e-3, seed=4).assign(N=3e8)
    res = fit_law(t, init_grid=SMALL)
    w = fit_warnings(res)
    assert any("all N equal (3e+08)" in x for x in w), w


def test_as_many_points_as_parameters_is_flagged():
    res = fit_law(chinchilla_table(m=5, noise=1e-3, seed=6), init_grid=SMALL)
    w = fit_warnings(res, res.bootstrap(n=20, seed=0))
    assert any("5 distinct points for 5 free parameters: the law interpolates" in x for x in w), w
    assert any("of bootstrap resamples have no more distinct points" in x for x in w), w


def test_parameters_running_off():
    w = parameter_warnings({"E": 2.9e-54, "A": 2e175, "B": 400.0, "alpha": 3.7, "beta": 0.0,
                            "R_D_star": 3e7}, min_loss=2.0)
    text = "\n".join(w)
    for part in ("E = 2.9e-54 -> 0", "A = 2e+175: the coefficient is running off",
                 "alpha = 3.7 > 2", "beta = 0: the exponent is at its bound 0",
                 "R_D_star = 3e+07 > 1e+06"):
        assert part in text, text
    assert parameter_warnings({"E": 1.7, "A": 400.0, "alpha": 0.3}, min_loss=2.0) == []


def test_few_starts_at_best_and_estimate_outside_interval(clean):
    res, _ = clean
    lucky = res.__class__(**{**res.__dict__, "n_at_best": 1, "n_starts": 4500})
    assert any("only 1 of 4500 starts reach the best" in x for x in fit_warnings(lucky))
    samples = pd.DataFrame({"alpha": np.linspace(0.5, 0.6, 50)})
    boot = BootstrapResult(samples=samples, level=0.9, n=50, n_failed=0,
                           intervals=percentile_intervals(samples, {"alpha": 0.34}, 0.9))
    (w,) = bootstrap_warnings(boot)
    assert "alpha = 0.34 lies outside its own 90% interval" in w


def test_level_outside_unit_interval_refused():
    with pytest.raises(ValueError, match=r"level=1.5: must be in \(0, 1\)"):
        percentile_intervals(pd.DataFrame({"a": [1.0, 2.0]}), {}, 1.5)


# --- Each warning fires when, and only when, it should (issue 24, section 3) ----------------

def _boot(samples: dict, estimates: dict, level=0.95):
    s = pd.DataFrame(samples)
    return BootstrapResult(samples=s, intervals=percentile_intervals(s, estimates, level), level=level,
                           n=len(s), n_failed=0)


@pytest.fixture(scope="module")
def fits(clean):
    """Synthetic fits, each made to show (or not show) one condition; a single start each."""
    import dataclasses

    t = chinchilla_table(m=30, noise=3e-3, seed=2)
    tied = fit_law(t, law="chinchilla_tied", init_grid=theta_of(TRUE)[None, :4])
    both_fixed = fit_law(t, init_grid=theta_of(TRUE)[None, :3], fixed={"alpha": 0.35, "beta": 0.37})
    dup = fit_law(pd.concat([t, t.iloc[:3], t.iloc[:1]]), init_grid=theta_of(TRUE)[None, :])
    seeds = fit_law(pd.concat([t, t.iloc[:3].assign(loss=t["loss"].iloc[:3] * 1.002)]),
                    init_grid=theta_of(TRUE)[None, :])
    res = clean[0]
    starts = lambda k, s: dataclasses.replace(res, n_at_best=k, n_starts=s)  # noqa: E731
    tied_boot = tied.bootstrap(n=20, seed=0, budgets=[1e21])
    return {
        "tied_fit": (tied, tied_boot, both_fixed), "clean_fit": res,
        "clean": lambda: fit_warnings(*clean),
        "tied": lambda: fit_warnings(tied, tied_boot),
        "alpha_beta_fixed": lambda: fit_warnings(both_fixed, both_fixed.bootstrap(n=20, seed=0, budgets=[1e21])),
        "collapsed_free_param": lambda: bootstrap_warnings(_boot({"alpha": [0.3] * 20}, {"alpha": 0.3})),
        "interval_runs_off": lambda: bootstrap_warnings(
            _boot({"R_D_star": np.geomspace(6.5, 4.7e13, 40)}, {"R_D_star": 95.4})),
        "interval_stays": lambda: bootstrap_warnings(
            _boot({"R_D_star": np.geomspace(6.5, 4.7e3, 40)}, {"R_D_star": 95.4})),
        "exponent_interval_runs_off": lambda: bootstrap_warnings(
            _boot({"alpha": np.linspace(0.2, 3.0, 40)}, {"alpha": 0.35})),
        "1_of_9_starts": lambda: fit_warnings(starts(1, 9)),
        "2_of_9_starts": lambda: fit_warnings(starts(2, 9)),
        "3_of_9_starts": lambda: fit_warnings(starts(3, 9)),
        "1_of_2_starts": lambda: fit_warnings(starts(1, 2)),
        "2_of_4500_starts": lambda: fit_warnings(starts(2, 4500)),
        "3_of_4500_starts": lambda: fit_warnings(starts(3, 4500)),
        "9_of_9_starts": lambda: fit_warnings(starts(9, 9)),
        "duplicate_rows": lambda: fit_warnings(dup),
        "repeated_seeds": lambda: fit_warnings(seeds),
    }


# (case, a warning that must appear, or None; text that must not appear in any warning)
WHEN = [
    ("clean", None, "warning"),
    ("tied", None, "collapsed"),
    ("alpha_beta_fixed", None, "collapsed"),
    ("collapsed_free_param", "alpha: the 95% interval collapsed to the point 0.3", None),
    ("interval_runs_off", "> 1e+06: running off (no decay measured), in some bootstrap refits", "outside"),
    ("interval_stays", None, "running off"),
    ("exponent_interval_runs_off", "2.93 > 2: the exponent is running off, in some bootstrap refits", None),
    ("1_of_9_starts", "only 1 of 9 starts reach the best objective", None),
    ("2_of_9_starts", "only 2 of 9 starts reach the best objective", None),
    ("3_of_9_starts", None, "starts reach"),
    ("1_of_2_starts", "only 1 of 2 starts reach", None),
    ("2_of_4500_starts", "only 2 of 4500 starts reach", None),
    ("3_of_4500_starts", None, "starts reach"),
    ("9_of_9_starts", None, "starts reach"),
    ("duplicate_rows", "4 rows duplicate another row in every fitted column (N, D, loss)", None),
    ("repeated_seeds", None, "duplicate"),
]


@pytest.mark.parametrize("case, fires, absent", WHEN, ids=[c for c, _, _ in WHEN])
def test_warning_fires_when_and_only_when(fits, case, fires, absent):
    w = fits[case]()
    if fires is not None:
        assert any(fires in x for x in w), w
    if absent == "warning":
        assert w == []
    elif absent is not None:
        assert not any(absent in x for x in w), w


def test_fixed_by_construction_is_marked_in_the_table(fits):
    from scaling.diagnostics import fixed_by_construction
    from scaling.report import parameter_table

    tied, boot, both_fixed = fits["tied_fit"]
    assert fixed_by_construction(tied, boot.intervals.index) == {"a=beta/(alpha+beta)",
                                                                 "b=alpha/(alpha+beta)"}
    assert "| a=beta/(alpha+beta) | 0.5 | fixed by construction |" in parameter_table(tied, boot)
    names = boot.intervals.index
    # alpha, beta fixed: the ratios are constant, N_opt(C) still moves with A and B
    assert fixed_by_construction(both_fixed, [*names, "beta"]) == {
        "alpha", "beta", "a=beta/(alpha+beta)", "b=alpha/(alpha+beta)"}
    free = fits["clean_fit"]
    assert fixed_by_construction(free, [*names, "beta"]) == set()
