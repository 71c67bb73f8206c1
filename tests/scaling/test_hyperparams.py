"""Hyperparameter laws: OLS on near-optimal runs recovers eta(N, D) and B(D)."""

import numpy as np
import pandas as pd
import pytest

from scaling.hyperparams import fit_bs_law, fit_lr_law, near_optimal


def sweep(c=1.79, a=-0.713, b=0.307, d=0.58, g=0.571):
    """Each (N, D) cell sweeps lr and batch size on grids symmetric (in log) around the
    optimum; loss is quadratic in log lr and log batch size."""
    rows = []
    for N in (1e8, 4e8, 1.6e9):
        for D in (2e9, 2e10, 2e11):
            lr_star, bs_star = c * N**a * D**b, d * D**g
            for i in range(-3, 4):
                for j in range(-2, 3):
                    lr, bs = lr_star * 2.0 ** (i / 2), bs_star * 2.0 ** (j / 2)
                    loss = 2.0 + 0.01 * np.log(lr / lr_star) ** 2 + 0.004 * np.log(bs / bs_star) ** 2
                    rows.append(dict(N=N, D=D, lr=lr, batch_size=bs, loss=loss))
    return pd.DataFrame(rows)


def test_near_optimal_threshold():
    df = pd.DataFrame({"N": [1, 1, 1, 2, 2], "D": [1] * 5, "loss": [1.0, 1.001, 1.01, 2.0, 2.1]})
    sel = near_optimal(df, ["N", "D"], "loss", threshold=0.0025)
    assert list(sel.index) == [0, 1, 3]


def test_recovers_lr_and_batch_size_laws():
    df = sweep()
    lr = fit_lr_law(df, threshold=1e-4)
    assert np.isclose(lr["a"], -0.713, atol=1e-9) and np.isclose(lr["b"], 0.307, atol=1e-9)
    assert np.isclose(lr["c"], 1.79, rtol=1e-8)
    # A wider threshold keeps runs symmetric around the optimum: still unbiased.
    lr_wide = fit_lr_law(df, threshold=0.01)
    assert lr_wide["n_runs"] > lr["n_runs"] and np.isclose(lr_wide["a"], -0.713, atol=1e-9)
    bs = fit_bs_law(df, threshold=1e-4)
    assert np.isclose(bs["g"], 0.571, atol=1e-9) and np.isclose(bs["d"], 0.58, rtol=1e-8)


def test_bad_table_raises():
    df = sweep().drop(columns=["lr"])
    with pytest.raises(ValueError, match="missing column 'lr'"):
        fit_lr_law(df)
    df = sweep()
    df.loc[4, "loss"] = np.nan
    with pytest.raises(ValueError, match=r"bad rows \[4\]"):
        fit_bs_law(df)
