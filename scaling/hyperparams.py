"""Fitting hyperparameter scaling laws: optimal learning rate and batch size.

Step Law (Li et al. 2025, arXiv:2503.04715) and DeepSeek LLM (2024, arXiv:2401.02954,
Sec. 3.1): in each cell of a sweep over learning rate and batch size (a model size and
token count (N, D), or a compute budget C), the runs whose loss is within ``threshold``
(relative; default 0.25 %) of the cell's best are near-optimal; each law is a power law
fitted by ordinary least squares in log space on those runs. Batch sizes are in TOKENS
(``seq_len`` converts a table whose batch sizes count sequences).

Forms (:data:`FORMS`): eta(N, D) = c N^a D^b and B(D) = d D^g (Step Law Eqs. (1)-(2)),
B(N, D) = d N^h D^g, and DeepSeek's eta(C) = c C^a, B(C) = d C^g (Eq. (1)).

Bootstrap (the authors' scheme): the near-optimal filter is applied ONCE, then the kept
runs are resampled with replacement and the OLS refitted; mean, SD and percentile interval.
The bootstrap mean is that of the OLS coefficients, which live in log space, as the Step Law
paper averages: for the prefactor c it is exp(mean log c), not the plain mean of c (which a
few resamples with a large intercept pull up; kept as ``arith_mean``).

Axis letters: m runs, r near-optimal runs, n resamples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.bootstrap import BootstrapResult, percentile_intervals
from scaling.constants import DEEPSEEK_NEAR_OPTIMAL_THRESHOLD
from scaling.table import load_table

# name -> (target variable, regressors, parameter names: coefficient then exponents)
FORMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "lr_opt": ("lr", ("N", "D"), ("c", "a", "b")),
    "bs_opt": ("batch_size", ("D",), ("d", "g")),
    "bs_opt_nd": ("batch_size", ("N", "D"), ("d", "h", "g")),
    "lr_opt_c": ("lr", ("C",), ("c", "a")),
    "bs_opt_c": ("batch_size", ("C",), ("d", "g")),
}
HYPER_LAWS = {
    "lr_opt": "eta(N, D) = c N^a D^b (Step Law), from N, D, lr, loss",
    "bs_opt": "B(D) = d D^g, B in tokens (Step Law), from N, D, batch_size, loss",
    "bs_opt_nd": "B(N, D) = d N^h D^g, B in tokens, from N, D, batch_size, loss",
    "lr_opt_c": "eta(C) = c C^a (DeepSeek), from C (or 6ND), lr, loss",
    "bs_opt_c": "B(C) = d C^g, B in tokens (DeepSeek), from C (or 6ND), batch_size, loss",
}


def near_optimal(df: pd.DataFrame, cell: list[str], loss: str, threshold: float) -> pd.DataFrame:
    """Rows whose loss <= (1 + threshold) * min loss of their cell."""
    if not threshold >= 0:
        raise ValueError(f"threshold={threshold!r}: must be >= 0")
    best = df.groupby(cell)[loss].transform("min")
    return df[df[loss] <= (1.0 + threshold) * best]


def _ols_log(y: np.ndarray, xs: list[np.ndarray]) -> np.ndarray:
    design = np.column_stack([np.ones_like(y)] + [np.log(x) for x in xs])
    coef, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    return coef


@dataclass(frozen=True)
class HyperFit:
    """A fitted hyperparameter law.

    Attributes:
      law: a key of :data:`FORMS`; params: {name: value}; kept: the near-optimal runs [r];
      n_cells: cells of the sweep; boot: bootstrap over the kept runs (None without one);
        its ``intervals`` column ``mean`` is the log-space mean (exp(mean log) for the
        prefactor), ``arith_mean`` the plain one;
      warnings: one-line messages (:mod:`scaling.diagnostics`).
    """

    law: str
    params: dict[str, float]
    kept: pd.DataFrame
    n_cells: int
    boot: BootstrapResult | None
    warnings: tuple[str, ...]

    def predict(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        """The law at regressors ``x`` ({"N": [m], "D": [m]} or {"C": [m]})."""
        _, regs, names = FORMS[self.law]
        out = self.params[names[0]]
        for r, k in zip(regs, names[1:]):
            out = out * np.asarray(x[r], dtype=float) ** self.params[k]
        return np.asarray(out)


def log_residuals(fit: HyperFit) -> np.ndarray:
    """log target - log law [r] on the near-optimal runs (the OLS residuals)."""
    target, regs, _ = FORMS[fit.law]
    return np.log(fit.kept[target].to_numpy(float)) - np.log(fit.predict({r: fit.kept[r] for r in regs}))


def _prepare(table, law: str, columns: Mapping[str, str] | None,
             seq_len: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Standard columns (target, regressors, loss) as floats > 0 (batch sizes in tokens), and
    the cell columns."""
    if law not in FORMS:
        raise ValueError(f"law={law!r}: must be one of {sorted(FORMS)}")
    target, regs, _ = FORMS[law]
    cols = {"N": "N", "D": "D", "C": "C", "lr": "lr", "batch_size": "batch_size", "loss": "loss",
            **dict(columns or {})}
    df = load_table(table)
    need = [target, "loss"] + [r for r in regs if r != "C"]
    if "C" in regs and cols["C"] not in df.columns:
        need += ["N", "D"]  # C = 6 N D
    cell = ["N", "D"] if cols["N"] in df.columns and cols["D"] in df.columns else ["C"]
    need = list(dict.fromkeys(need + cell + (["C"] if "C" in regs and cols["C"] in df.columns else [])))
    _check(df, {v: cols[v] for v in need})
    out = pd.DataFrame({v: pd.to_numeric(df[cols[v]]).to_numpy(float) for v in need}, index=df.index)
    if "C" in regs and "C" not in out:
        out["C"] = 6.0 * out["N"] * out["D"]
    if seq_len is not None and "batch_size" in out:
        out["batch_size"] = out["batch_size"] * seq_len  # sequences -> tokens
    return out, cell


def fit_hyper_law(table, law: str = "lr_opt", columns: Mapping[str, str] | None = None,
                  threshold: float = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD, n_bootstrap: int = 0,
                  seed: int = 0, level: float = 0.95, seq_len: int | None = None) -> HyperFit:
    """Fit one of :data:`FORMS` by the Step Law recipe, with the authors' bootstrap.

    Args:
      table: DataFrame or CSV with the law's variables, ``lr`` or ``batch_size`` (tokens) and
        ``loss`` (rename with ``columns``); a missing C is 6 N D.
      threshold: near-optimal band relative to each cell's best loss (Step Law, DeepSeek:
        0.25 %).
      n_bootstrap: resamples of the near-optimal runs (0: none).
      seq_len: the table's batch sizes count sequences of this many tokens (None: tokens).
    """
    from scaling.diagnostics import bootstrap_warnings

    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    if n_bootstrap < 0 or n_bootstrap == 1:
        raise ValueError(f"n_bootstrap={n_bootstrap!r}: must be 0 or >= 2")
    if seq_len is not None and not (isinstance(seq_len, (int, np.integer)) and seq_len >= 1):
        raise ValueError(f"seq_len={seq_len!r}: must be an integer >= 1 (None: batch sizes in tokens)")
    target, regs, names = FORMS[law] if law in FORMS else (None, (), ())
    df, cell = _prepare(table, law, columns, seq_len)
    kept = near_optimal(df, cell, "loss", threshold)
    if len(kept) < len(names):
        raise ValueError(f"{len(kept)} near-optimal runs: need >= {len(names)} to fit {names}")
    y = kept[target].to_numpy(float)
    xs = [kept[r].to_numpy(float) for r in regs]
    coef = _ols_log(y, xs)
    params = {names[0]: float(np.exp(coef[0])), **{k: float(v) for k, v in zip(names[1:], coef[1:])}}
    warnings = []
    distinct = np.unique(np.column_stack(xs), axis=0).shape[0]
    if distinct <= len(names) - 1:
        warnings.append(f"{distinct} distinct ({', '.join(regs)}) among the near-optimal runs for "
                        f"{len(names) - 1} exponents: the exponents are not identified")
    for r, x in zip(regs, xs):
        if np.ptp(x) == 0:
            warnings.append(f"all {r} equal ({x[0]:.4g}): its exponent is not identified")
    boot = None
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(kept), size=(n_bootstrap, len(kept)))
        rows = []
        logx = np.column_stack([np.ones(len(y))] + [np.log(x) for x in xs])
        for i in idx:  # a resample whose design is rank-deficient cannot identify the law: failed
            if np.linalg.matrix_rank(logx[i]) == logx.shape[1]:
                rows.append(_ols_log(y[i], [x[i] for x in xs]))
        coefs = np.array(rows).reshape(-1, len(names))
        samples = pd.DataFrame({names[0]: np.exp(coefs[:, 0]),
                                **{k: coefs[:, j + 1] for j, k in enumerate(names[1:])}})
        n_distinct = np.array([np.unique(np.column_stack([x[i] for x in xs]), axis=0).shape[0]
                               for i in idx])
        intervals = percentile_intervals(samples, params, level)
        intervals["arith_mean"] = intervals["mean"]
        if len(coefs):  # Step Law: average the log-space coefficients, then map back
            intervals.loc[names[0], "mean"] = float(np.exp(np.mean(coefs[:, 0])))
        boot = BootstrapResult(samples=samples, intervals=intervals, level=level, n=n_bootstrap,
                               n_failed=n_bootstrap - len(rows), distinct=n_distinct)
        warnings += bootstrap_warnings(boot, len(names) - 1)
    return HyperFit(law=law, params=params, kept=kept, n_cells=int(df.groupby(cell).ngroups),
                    boot=boot, warnings=tuple(warnings))


def fit_lr_law(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None,
               threshold: float = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD) -> dict[str, float]:
    """eta_opt(N, D) = c N^a D^b on the near-optimal runs: {"c", "a", "b", "n_runs"}."""
    fit = fit_hyper_law(table, "lr_opt", columns, threshold)
    return {**fit.params, "n_runs": int(len(fit.kept))}


def fit_bs_law(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None,
               threshold: float = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD) -> dict[str, float]:
    """B_opt(D) = d D^g (B in tokens) on the near-optimal runs: {"d", "g", "n_runs"}."""
    fit = fit_hyper_law(table, "bs_opt", columns, threshold)
    return {**fit.params, "n_runs": int(len(fit.kept))}


def _check(df: pd.DataFrame, cols: Mapping[str, str]) -> None:
    for var, col in cols.items():
        if col not in df.columns:
            raise ValueError(f"missing column {col!r} for {var!r}; columns: {list(df.columns)}")
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(v) | (v <= 0)
        if bad.any():
            raise ValueError(f"column {col!r} must be finite and > 0; bad rows "
                             f"{list(df.index[bad][:20])}")
