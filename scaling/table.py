"""Reading and validating the tables that scaling laws are fitted to.

A table is a pandas DataFrame or a CSV path with one row per run. Variables (N parameters,
D tokens, U unique tokens, C FLOPs, loss) are read from columns named after them unless
``columns`` maps a variable to another column name.

Axis letters: m rows (runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

VARIABLES = ("N", "D", "U", "C", "loss")


class FitConvergenceError(RuntimeError):
    """No start of a multistart fit converged."""


def load_table(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """The table as a DataFrame (a CSV path is read with ``pandas.read_csv``)."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, (str, os.PathLike)):
        if not os.path.exists(table):
            raise ValueError(f"table={str(table)!r}: no such CSV file")
        if os.path.isdir(table):
            raise ValueError(f"table={str(table)!r}: is a directory, not a CSV file")
        try:
            return pd.read_csv(table)
        except pd.errors.EmptyDataError:
            raise ValueError(f"table={str(table)!r}: empty file (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"table={str(table)!r}: not a readable CSV ({first})") from None
    raise ValueError(f"table of type {type(table).__name__}: must be a pandas DataFrame or a "
                     "CSV path")


def column_names(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Variable -> column name, defaulting each variable to its own name."""
    columns = dict(columns or {})
    unknown = set(columns) - set(VARIABLES)
    if unknown:
        raise ValueError(f"columns={columns!r}: keys {sorted(unknown)} are not variables; "
                         f"allowed: {VARIABLES}")
    return {v: columns.get(v, v) for v in VARIABLES}


def extract(df: pd.DataFrame, variables: Sequence[str], columns: Mapping[str, str] | None,
            positive: bool = True) -> dict[str, np.ndarray]:
    """The named variables as float64 arrays [m], validated.

    Raises ValueError for a missing column, a non-numeric column, NaN or inf values, or
    (``positive``) values <= 0, naming the offending rows by their index label.
    """
    names = column_names(columns)
    out = {}
    for var in variables:
        col = names[var]
        if col not in df.columns:
            raise ValueError(f"missing column {col!r} for variable {var!r}; the table has "
                             f"columns {list(df.columns)} (map it with columns={{{var!r}: ...}})")
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        text = np.isnan(values) & df[col].notna().to_numpy()
        if text.any():
            rows = list(df.index[text][:20])
            raise ValueError(f"column {col!r} ({var}) is not numeric: {df[col][text].iloc[0]!r} "
                             f"in rows {rows}{' ...' if text.sum() > 20 else ''}")
        bad = ~np.isfinite(values)
        if bad.any():
            rows = list(df.index[bad][:20])
            raise ValueError(f"column {col!r} ({var}) has NaN or inf in rows {rows}"
                             f"{' ...' if bad.sum() > 20 else ''}")
        if positive:
            bad = values <= 0
            if bad.any():
                rows = list(df.index[bad][:20])
                raise ValueError(f"column {col!r} ({var}) must be > 0; non-positive in rows "
                                 f"{rows}{' ...' if bad.sum() > 20 else ''}")
        out[var] = values
    return out
