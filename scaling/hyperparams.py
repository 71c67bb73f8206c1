"""Fitting hyperparameter scaling laws: optimal learning rate and batch size.

Step Law (Li et al. 2025, arXiv:2503.04715) and DeepSeek LLM (2024, arXiv:2401.02954,
Sec. 3.1): in each (N, D) cell of a sweep over learning rate and batch size, the runs whose
loss is within ``threshold`` (relative) of the cell's best are near-optimal; the law
eta(N, D) = c N^a D^b (resp. B(D) = d D^g) is fitted by ordinary least squares in log space
on those runs.

Axis letters: m runs, r near-optimal runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from scaling.constants import DEEPSEEK_NEAR_OPTIMAL_THRESHOLD
from scaling.table import load_table


def near_optimal(df: pd.DataFrame, cell: list[str], loss: str, threshold: float) -> pd.DataFrame:
    """Rows whose loss <= (1 + threshold) * min loss of their cell."""
    if threshold < 0:
        raise ValueError(f"threshold={threshold!r}: must be >= 0")
    best = df.groupby(cell)[loss].transform("min")
    return df[df[loss] <= (1.0 + threshold) * best]


def _ols_log(y: np.ndarray, xs: list[np.ndarray]) -> np.ndarray:
    design = np.column_stack([np.ones_like(y)] + [np.log(x) for x in xs])
    coef, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    return coef


def fit_lr_law(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None,
               threshold: float = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD) -> dict[str, float]:
    """Fit eta_opt(N, D) = c N^a D^b on the near-optimal runs (columns N, D, lr, loss).

    Returns:
      {"c", "a", "b", "n_runs"}: the :func:`scaling.laws.lr_opt` parameters.
    """
    cols = {"N": "N", "D": "D", "lr": "lr", "loss": "loss", **dict(columns or {})}
    df = load_table(table)
    _check(df, cols)
    sel = near_optimal(df, [cols["N"], cols["D"]], cols["loss"], threshold)
    if len(sel) < 3:
        raise ValueError(f"{len(sel)} near-optimal runs: need >= 3 to fit c, a, b")
    coef = _ols_log(sel[cols["lr"]].to_numpy(float),
                    [sel[cols["N"]].to_numpy(float), sel[cols["D"]].to_numpy(float)])
    return {"c": float(np.exp(coef[0])), "a": float(coef[1]), "b": float(coef[2]),
            "n_runs": int(len(sel))}


def fit_bs_law(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None,
               threshold: float = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD) -> dict[str, float]:
    """Fit B_opt(D) = d D^g on the near-optimal runs (columns N, D, batch_size, loss).

    Returns:
      {"d", "g", "n_runs"}: the :func:`scaling.laws.bs_opt` parameters.
    """
    cols = {"N": "N", "D": "D", "batch_size": "batch_size", "loss": "loss",
            **dict(columns or {})}
    df = load_table(table)
    _check(df, cols)
    sel = near_optimal(df, [cols["N"], cols["D"]], cols["loss"], threshold)
    if len(sel) < 2:
        raise ValueError(f"{len(sel)} near-optimal runs: need >= 2 to fit d, g")
    coef = _ols_log(sel[cols["batch_size"]].to_numpy(float), [sel[cols["D"]].to_numpy(float)])
    return {"d": float(np.exp(coef[0])), "g": float(coef[1]), "n_runs": int(len(sel))}


def _check(df: pd.DataFrame, cols: Mapping[str, str]) -> None:
    for var, col in cols.items():
        if col not in df.columns:
            raise ValueError(f"missing column {col!r} for {var!r}; columns: {list(df.columns)}")
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(v) | (v <= 0)
        if bad.any():
            raise ValueError(f"column {col!r} must be finite and > 0; bad rows "
                             f"{list(df.index[bad][:20])}")
