"""Reading and validating loss-curve tables and their learning-rate schedules.

A curve table has one row per evaluation: columns ``run``, ``step``, ``loss`` (steps strictly
increasing within a run). A schedule table has columns ``run``, ``step``, ``lr`` with EVERY
step of each run from 0 (the laws sum the LR over all steps). Run names are compared as
text, so ``1`` in one CSV and ``"1"`` in another are the same run.

Axis letters: T steps of a schedule, m evaluation points.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from scaling.schedule_features import check_schedule
from scaling.table import load_table


def _columns(df: pd.DataFrame, need: tuple[str, ...], what: str) -> pd.DataFrame:
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; need {list(need)}, the table has "
                         f"{list(df.columns)}")
    out = df.copy()
    out["run"] = out["run"].astype(str)
    for c in need[1:]:
        values = pd.to_numeric(out[c], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row = out.index[bad.to_numpy()][0]
            raise ValueError(f"{what}: column {c!r} must be finite numbers; bad in row {row} "
                             f"({df[c][row]!r})")
        out[c] = values.to_numpy(dtype=np.float64)
    return out


def load_curves(table, need_loss: bool = True) -> pd.DataFrame:
    """The curve table (DataFrame or CSV path) with ``run`` as text, validated.

    ``need_loss``: require a ``loss`` column (> 0); without it (a table to predict) only
    ``run`` and ``step`` are needed.
    """
    df = load_table(table)
    if len(df) == 0:
        raise ValueError("curve table has no rows")
    has_loss = need_loss or "loss" in df.columns
    df = _columns(df, ("run", "step", "loss") if has_loss else ("run", "step"), "curve table")
    if has_loss and (df["loss"] <= 0).any():
        raise ValueError(f"curve table: loss must be > 0; bad in row {df.index[df['loss'] <= 0][0]}")
    for run, rows in df.groupby("run", sort=False):
        steps = rows["step"].to_numpy()
        if np.any(steps != np.round(steps)) or np.any(steps < 0):
            raise ValueError(f"curve table: run {run!r}: steps must be integers >= 0")
        if np.any(np.diff(steps) <= 0):
            i = int(np.argmax(np.diff(steps) <= 0))
            raise ValueError(f"curve table: run {run!r}: steps must be strictly increasing "
                             f"(step {steps[i + 1]:g} follows {steps[i]:g})")
    return df


def load_schedules(lrs) -> dict[str, np.ndarray]:
    """{run: learning rate at every step [T]} from a schedule table (DataFrame or CSV) or a dict.

    A table must list every step 0..T-1 of each run once (in any order).
    """
    if isinstance(lrs, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in lrs.items()}
    df = _columns(load_table(lrs), ("run", "step", "lr"), "learning-rate table")
    if len(df) == 0:
        raise ValueError("learning-rate table has no rows")
    out = {}
    for run, rows in df.groupby("run", sort=False):
        steps = rows["step"].to_numpy()
        order = np.argsort(steps, kind="stable")
        steps = steps[order]
        expected = np.arange(len(steps))
        if not np.array_equal(steps, expected):
            first = int(expected[np.argmax(steps != expected)])
            raise ValueError(f"learning-rate table: run {run!r} must list every step from 0 "
                             f"once; step {first} is missing or repeated")
        out[run] = rows["lr"].to_numpy()[order]
    return out


def match(curves: pd.DataFrame, schedules: Mapping[str, np.ndarray], what: str = "--lr"):
    """[(run, eta [T], steps [m], loss [m] or None)] per run of ``curves``, in table order.

    Raises ValueError for a run without a schedule, or steps outside its schedule.
    """
    out = []
    for run, rows in curves.groupby("run", sort=False):
        if run not in schedules:
            raise ValueError(f"run {run!r} has no learning rates ({what}); runs with learning "
                             f"rates: {sorted(schedules)[:10]}")
        eta, steps = check_schedule(schedules[run], rows["step"].to_numpy(), run)
        loss = rows["loss"].to_numpy(dtype=np.float64) if "loss" in rows else None
        out.append((run, eta, steps, loss))
    return out
