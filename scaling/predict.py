"""Predicting held-out runs from a fitted law, with bootstrap intervals.

"Fit on the small models, predict the big ones" (Gadre et al. 2024, arXiv:2403.08540,
Sec. 4): rows are chosen with query expressions (``select_rows``, :mod:`scaling.row_filter`), the law is
fitted on one part and evaluated on another (``predictions``): each row gets the point
prediction, the percentile interval of the bootstrap refits' predictions and, where the
row has an observed loss, the relative error.

Axis letters: m rows to predict, n bootstrap samples, q law coordinates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from scaling.fitting import jitted_log_form
from scaling.row_filter import ExpressionError, row_mask
from scaling.table import extract, load_table


def query(df: pd.DataFrame, expr: str, what: str) -> pd.Series:
    """Boolean mask [m] of the rows where ``expr`` holds (:mod:`scaling.row_filter` grammar,
    never ``eval``); ValueError naming ``what`` (e.g. "--where") and the expression."""
    try:
        return row_mask(df, expr)
    except ExpressionError as exc:
        raise ValueError(f"{what} {expr!r}: {exc}") from None


def select_rows(df: pd.DataFrame, where: str | None = None, holdout: str | None = None):
    """(rows to fit, held-out rows): ``where`` picks the rows to use, ``holdout`` sets some aside."""
    use = query(df, where, "--where") if where is not None else pd.Series(True, index=df.index)
    held = (query(df, holdout, "--holdout") & use if holdout is not None
            else pd.Series(False, index=df.index))
    fit_rows, held_rows = df[use & ~held], df[held]
    if len(fit_rows) == 0:
        raise ValueError(f"no rows left to fit (--where {where!r}, --holdout {holdout!r})")
    if holdout is not None and len(held_rows) == 0:
        raise ValueError(f"--holdout {holdout!r}: selects no rows")
    return fit_rows, held_rows


def bootstrap_predictions(result, boot, logx: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted losses [n, m] of every bootstrap refit (``boot.theta`` rows) at ``logx``."""
    spec = result.law
    with jax.enable_x64(True):
        f = jitted_log_form(spec.log_form, batched=True)
        out = f(jnp.asarray(boot.theta[:, :len(spec.theta_names)], jnp.float64),
                {k: jnp.asarray(v, jnp.float64) for k, v in logx.items()})
        return np.exp(np.asarray(out, dtype=np.float64))


def predictions(result, table, boot=None, level: float | None = None) -> pd.DataFrame:
    """``table``'s rows plus ``predicted_loss``, ``lower``, ``upper`` and, where a loss is
    given, ``rel_error`` = predicted / observed - 1.

    Args:
      result: :class:`scaling.fitting.FitResult`.
      table: DataFrame or CSV path with the law's variables (columns as in the fit).
      boot: optional :class:`scaling.bootstrap.BootstrapResult` (its refits give the
        interval; NaN without one).
    """
    df = load_table(table).copy()
    if len(df) == 0:
        raise ValueError("the table to predict has no rows")
    x = extract(df, result.law.variables, result.columns)
    logx = {k: np.log(v) for k, v in x.items()}
    df["predicted_loss"] = result.predict(df)
    lo = hi = np.full(len(df), np.nan)
    if boot is not None and boot.theta is not None and len(boot.theta):
        level = boot.level if level is None else level
        preds = bootstrap_predictions(result, boot, logx)
        lo, hi = np.nanpercentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
    df["lower"], df["upper"] = lo, hi
    loss_col = result.columns["loss"]
    if loss_col in df.columns:
        observed = pd.to_numeric(df[loss_col], errors="coerce").to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            df["rel_error"] = np.where(observed > 0, df["predicted_loss"] / observed - 1.0, np.nan)
    return df
