"""``fit.json``: the machine-readable record of one ``python -m scaling.fit`` run.

Written under ``--out`` beside report.md; read back with :func:`read_fit_json`. Strict JSON
(non-finite numbers are ``null``). Schema (``"format": "scalelab.fit"``, ``"version": 1``)::

    {
      "format": "scalelab.fit", "version": 1,
      "law": "chinchilla", "citation": "Hoffmann et al. 2022, ...",
      "table": "runs.csv", "where": null, "holdout": null,    # the command's row selection
      "columns": {"N": "N", "D": "D", "loss": "loss", ...},   # variable -> column read
      "n": 60,                                                # rows fitted
      "objective": {"kind": "huber" | "huber_ml" | "ols_log", "value": 1.2345678e-05,
                    "huber_delta": 0.001 | null},
      "starts": {"n": 243, "n_at_best": 140} | null,          # null: no multistart (OLS)
      "parameters": {"E": 1.8, "A": 480.0, ...},              # full-data estimates (+ sigma)
      "fixed": {"alpha": 0.35},                               # held fixed (--fix)
      "derived": {"a=beta/(alpha+beta)": 0.51, "N_opt(C=1e+21)": 3.1e9, ...},
      "sd": {"E": 0.01, ...} | null,                          # bootstrap SDs (null: none run)
      "intervals": {"level": 0.95, "method": "percentile",
                    "bounds": {"E": [1.7, 1.9], ...}} | null,
      "fixed_by_construction": ["a=beta/(alpha+beta)", ...],  # point intervals by design
      "warnings": ["...", ...],                               # scaling.diagnostics, one line each
      "bootstrap": {"n": 1000, "n_failed": 3, "seed": 0, "level": 0.95, ...} | null,
      "extra": {...}                                          # law-family specifics (below)
    }

``bootstrap`` carries every scalar field of the :class:`scaling.bootstrap.BootstrapResult`
(read by name, so fields added later appear without a schema change). Hyperparameter laws
(``lr_opt``, ``bs_opt``, ...) write ``objective.kind = "ols_log"`` (sum of squared log
residuals of the near-optimal runs), ``starts = null``, and in ``extra``: ``threshold``,
``n_cells``, ``n_table`` (rows before the near-optimal filter), ``batch_unit`` and
``bootstrap_mean`` ({name: mean}; Step Law: means of the log-space OLS coefficients, so the
prefactor's is exp(mean log c)).

Axis letters: none (records of scalars).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

FORMAT, VERSION = "scalelab.fit", 1
_ARRAYS = ("samples", "intervals", "theta", "distinct")  # BootstrapResult fields not recorded


def _num(v):
    """A JSON number (float or int), or None where not finite."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def bootstrap_record(boot, seed: int | None = None) -> dict | None:
    """Every scalar field of a BootstrapResult (n, n_failed, level, and any added later)."""
    if boot is None:
        return None
    out = {} if seed is None else {"seed": int(seed)}
    names = [f.name for f in dataclasses.fields(boot)] if dataclasses.is_dataclass(boot) else []
    for name in names:
        if name in _ARRAYS:
            continue
        v = getattr(boot, name, None)
        if v is None or isinstance(v, str):
            out[name] = v
        elif isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)):
            out[name] = _num(v)
    return out


def _intervals(boot, names) -> tuple[dict | None, dict | None]:
    if boot is None:
        return None, None
    iv = boot.intervals
    rows = [k for k in names if k in iv.index]
    sd = {k: _num(iv.loc[k, "std"]) for k in rows}
    bounds = {k: [_num(iv.loc[k, "lower"]), _num(iv.loc[k, "upper"])] for k in rows}
    return sd, {"level": float(boot.level), "method": "percentile", "bounds": bounds}


def fit_record(res, boot, warnings, *, table: str, where=None, holdout=None, seed=None,
               budgets=()) -> dict:
    """The fit.json record of a :class:`scaling.fitting.FitResult` and its bootstrap."""
    from scaling.diagnostics import fixed_by_construction

    spec = res.law
    derived = {}
    if boot is not None:
        derived = {k: _num(boot.intervals.loc[k, "estimate"])
                   for k in boot.intervals.index if k not in res.params}
    elif spec.derived is not None:
        with np.errstate(all="ignore"):
            est = spec.derived({k: np.asarray(v) for k, v in res.params.items()}, list(budgets))
        derived = {k: _num(v) for k, v in est.items()}
    names = [*res.params, *derived]
    sd, intervals = _intervals(boot, names)
    if sd is not None:
        for k in res.fixed:
            sd[k], intervals["bounds"][k] = None, [_num(res.fixed[k])] * 2
    return {
        "format": FORMAT, "version": VERSION, "law": spec.name, "citation": spec.citation,
        "table": table, "where": where, "holdout": holdout,
        "columns": {v: res.columns[v] for v in (*spec.variables, "loss")},
        "n": int(len(res.logy)),
        "objective": {"kind": res.objective_kind, "value": _num(res.objective),
                      "huber_delta": _num(res.huber_delta)},
        "starts": {"n": int(res.n_starts), "n_at_best": int(res.n_at_best)},
        "parameters": {k: _num(v) for k, v in res.params.items()},
        "fixed": {k: _num(v) for k, v in res.fixed.items()},
        "derived": derived, "sd": sd, "intervals": intervals,
        "fixed_by_construction": sorted(fixed_by_construction(res, names) - set(res.fixed)),
        "warnings": list(warnings), "bootstrap": bootstrap_record(boot, seed if boot else None),
        "extra": {},
    }


def hyper_record(fit, *, table: str, where=None, threshold: float, n_table: int, columns,
                 batch_unit: str = "tokens", seed=None) -> dict:
    """The fit.json record of a :class:`scaling.hyperparams.HyperFit`."""
    from scaling.hyperparams import FORMS, HYPER_LAWS, log_residuals

    target, regs, names = FORMS[fit.law]
    sd, intervals = _intervals(fit.boot, names)
    mean = None
    if fit.boot is not None:
        mean = {k: _num(fit.boot.intervals.loc[k, "mean"]) for k in names}
    r = log_residuals(fit)
    return {
        "format": FORMAT, "version": VERSION, "law": fit.law,
        "citation": f"{HYPER_LAWS[fit.law]}; Li et al. 2025, arXiv:2503.04715; DeepSeek-AI "
                    "2024, arXiv:2401.02954",
        "table": table, "where": where, "holdout": None,
        "columns": {v: dict(columns or {}).get(v, v) for v in (target, *regs, "loss")},
        "n": int(len(fit.kept)),
        "objective": {"kind": "ols_log", "value": _num(np.sum(r * r)), "huber_delta": None},
        "starts": None,
        "parameters": {k: _num(v) for k, v in fit.params.items()},
        "fixed": {}, "derived": {}, "sd": sd, "intervals": intervals,
        "fixed_by_construction": [], "warnings": list(fit.warnings),
        "bootstrap": bootstrap_record(fit.boot, seed if fit.boot else None),
        "extra": {"threshold": float(threshold), "n_cells": int(fit.n_cells),
                  "n_table": int(n_table), "batch_unit": batch_unit, "bootstrap_mean": mean},
    }


def write_fit_json(path, record: dict) -> Path:
    """Write ``record`` as strict JSON (raises ValueError on a non-finite number left in it)."""
    path = Path(path)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def read_fit_json(path) -> dict:
    """A fit.json record, with ``null`` numbers in parameters, derived, fixed and sd as NaN
    and interval bounds as (lower, upper) tuples of floats.

    Raises ValueError naming the file when it is not a fit.json this code can read.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r}: not a readable fit.json ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r}: not a fit.json (format must be {FORMAT!r})")
    if not isinstance(doc.get("version"), int) or not 1 <= doc["version"] <= VERSION:
        raise ValueError(f"{str(path)!r}: fit.json version {doc.get('version')!r}; this code "
                         f"reads versions 1 to {VERSION}")
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    for key in ("parameters", "derived", "fixed", "sd"):
        if doc.get(key) is not None:
            doc[key] = {k: nan(v) for k, v in doc[key].items()}
    if doc.get("intervals"):
        doc["intervals"]["bounds"] = {k: (nan(lo), nan(hi))
                                      for k, (lo, hi) in doc["intervals"]["bounds"].items()}
    return doc
