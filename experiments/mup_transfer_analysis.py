"""The μP transfer study's numbers, read from its results table: optimum, drift, loss prediction, compute.

:mod:`experiments.mup_transfer` builds and trains the grid and writes the report from these.
Every function reads a table (one row per run: ``parametrization``, ``width``, ``lr``,
``seed`` when the study has several, ``status``, ``final_val_loss``, ``N_non_embedding``, and
``C`` and the seconds columns for the compute), never a run directory.

  seeds       per (parametrization, width, lr): the mean final loss over the seeds and its
              standard error (an lr where any seed diverged or did not finish counts as
              diverged: it is not a usable lr);
  optimum     per (parametrization, width): the best grid lr, the vertex of a parabola in
              log2 lr through it and its two neighbours (the grid edge if it is one), and the
              near-optimal interval: the lrs whose loss is within ``threshold`` of the best;
  drift       log(lr_opt(widest) / lr_opt(narrowest)) in grid steps (log of the grid
              ratio); μP should stay within one step over 8x width, SP drifts;
  prediction  L(N) = E + A N^-alpha (``scaling.fit_law(law="offset_n")``, N = non-embedding
              parameters) fitted to each width's best (seed-mean) loss except the widest;
              predicted against the widest's, with a bootstrap interval (``bootstrap``
              resamples of the fitted widths); relative error reported for μP (and SP, for
              contrast), with the widest's standard error over seeds;
  compute     per parametrization: FLOPs (sum of the runs' ``C``), wall and CPU seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def optimum(lrs: np.ndarray, losses: np.ndarray, threshold: float) -> dict:
    """Best grid lr, parabola-vertex lr (log2 space) and the near-optimal interval of one sweep.

    ``losses`` may hold inf/NaN (diverged runs). The vertex is clamped to the two neighbours.
    """
    order = np.argsort(lrs)
    lrs, losses = np.asarray(lrs, float)[order], np.where(np.isfinite(losses), losses, np.inf)[order]
    i = int(np.argmin(losses))
    best, lr_opt = losses[i], lrs[i]
    edge = i in (0, len(lrs) - 1)
    if not edge and np.all(np.isfinite(losses[i - 1:i + 2])):
        x, y = np.log2(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            lr_opt = float(2 ** np.clip(-b / (2 * a), x[0], x[2]))
    near = lrs[losses <= best * (1 + threshold)]
    return {"best_lr": float(lrs[i]), "lr_opt": float(lr_opt), "lr_lo": float(near.min()), "lr_hi": float(near.max()),
            "best_loss": float(best), "on_edge": edge}


def seed_means(table: pd.DataFrame, loss: str = "final_val_loss") -> pd.DataFrame:
    """One row per (parametrization, width, lr): ``loss`` averaged over the seeds, ``loss_se`` its standard
    error (NaN with one seed), ``seeds`` their number, ``status`` "complete" when every seed's run completed
    with a finite loss (else the first other status, or "diverged"; the mean is then NaN), N_non_embedding.

    A table written before seeds (no ``seed`` column) has one row, so one seed, per point.
    """
    rows = []
    for (par, width, lr), g in table.groupby(["parametrization", "width", "lr"], sort=True):
        vals = pd.to_numeric(g[loss], errors="coerce").to_numpy(float)
        done = (g["status"] == "complete").to_numpy() & np.isfinite(vals)
        status = "complete" if done.all() else next((s for s in g["status"] if s != "complete"), "diverged")
        n = len(g)
        rows.append({"parametrization": par, "width": int(width), "lr": float(lr),
                     "N_non_embedding": int(g["N_non_embedding"].iloc[0]), "status": status, "seeds": n,
                     loss: float(vals.mean()) if done.all() else np.nan,
                     "loss_se": float(vals.std(ddof=1) / math.sqrt(n)) if done.all() and n > 1 else np.nan})
    return pd.DataFrame(rows)


def optima(table: pd.DataFrame, threshold: float, loss: str = "final_val_loss") -> pd.DataFrame:
    """One row per (parametrization, width): :func:`optimum` of the seed means (:func:`seed_means`), N
    (non-embedding parameters), ``seeds`` and ``best_loss_se`` (the standard error of the best lr's mean)."""
    means = seed_means(table, loss)
    rows = []
    for (par, width), g in means.groupby(["parametrization", "width"], sort=True):
        ok = g["status"] == "complete"
        vals = np.where(ok, g[loss], np.inf)
        best = optimum(g["lr"].to_numpy(float), vals, threshold)
        se = g.loc[g["lr"] == best["best_lr"], "loss_se"]
        rows.append({"parametrization": par, "width": int(width), "N": int(g["N_non_embedding"].iloc[0]),
                     **best, "seeds": int(g["seeds"].max()), "best_loss_se": float(se.iloc[0]) if len(se) else np.nan})
    return pd.DataFrame(rows)


def drift_steps(opt: pd.DataFrame, lrs) -> dict[str, float]:
    """Per parametrization: log(lr_opt(widest) / lr_opt(narrowest)) in steps of the lr grid."""
    step = math.log(lrs[-1] / lrs[0]) / (len(lrs) - 1)
    out = {}
    for par, g in opt.groupby("parametrization"):
        g = g.sort_values("width")
        out[par] = math.log(g["lr_opt"].iloc[-1] / g["lr_opt"].iloc[0]) / step
    return out


def predict_widest(opt: pd.DataFrame, par: str, n_bootstrap: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Fit L(N) = E + A N^-alpha (``offset_n``) to the best losses of all widths but the widest; predict the widest.

    The interval is the percentile interval, at ``level``, of the bootstrap refits' predictions
    (:func:`scaling.predict.predictions`; the narrower widths resampled with replacement, none
    when ``n_bootstrap`` < 2). ``points``: the widths fitted (over-determined when > 3);
    ``max_residual``: the largest relative in-sample residual of the fit; ``actual_se``: the widest's
    standard error over seeds (NaN with one seed or an ``opt`` without ``best_loss_se``).
    """
    from scaling.fit import fit_law
    from scaling.predict import predictions

    g = opt[opt["parametrization"] == par].sort_values("N")
    rows = pd.DataFrame({"N": g["N"].astype(float), "loss": g["best_loss"].astype(float)})
    train, held = rows.iloc[:-1], rows.iloc[-1:]
    fit = fit_law(train, law="offset_n")
    boot = fit.bootstrap(n=n_bootstrap, seed=seed, level=level) if n_bootstrap >= 2 else None
    row = predictions(fit, held, boot).iloc[0]
    actual, lower, upper = float(held["loss"].iloc[0]), float(row["lower"]), float(row["upper"])
    actual_se = float(g["best_loss_se"].iloc[-1]) if "best_loss_se" in g.columns else float("nan")
    return {"parametrization": par, "params": fit.params, "N": int(held["N"].iloc[0]),
            "predicted": float(row["predicted_loss"]), "actual": actual, "actual_se": actual_se,
            "rel_error": float(row["rel_error"]),
            "lower": lower, "upper": upper, "level": level, "covered": bool(lower <= actual <= upper),
            "points": len(train), "max_residual": float(np.max(np.abs(fit.predict(train) / train["loss"] - 1))),
            "degenerate_fraction": None if boot is None else boot.degenerate_fraction, "fit": fit}


def compute(table: pd.DataFrame) -> pd.DataFrame:
    """Per parametrization: runs, training FLOPs (sum of ``C``), and seconds (wall, CPU, compile, train) summed
    over its runs (a group's are split evenly between its runs; ``cpu_s`` is NaN in records older than it)."""
    names = {"C": "flops", "wall_s": "wall_s", "cpu_s": "cpu_s", "compile_s": "compile_s", "train_s": "train_s"}
    full = table.assign(**{c: pd.to_numeric(table[c], errors="coerce") if c in table.columns else np.nan
                           for c in names})
    out = full.groupby("parametrization", sort=False).agg(
        runs=("parametrization", "size"), **{new: (c, lambda v: v.sum(min_count=1)) for c, new in names.items()})
    return out.reset_index()
