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
