"""Analysis of the Chinchilla isoFLOP study: the three approaches, the extrapolation check, plots, report.

Reads only the results table (experiments.lib.table) and fits with :mod:`scaling` (every
equation lives there); this module selects columns, calls the fits, and writes

  out/report.md      fitted values with bootstrap intervals, tokens per parameter at the
                     optimum, the extrapolation error (and, for synthetic data, E vs the truth)
  out/fit.json       the same numbers, machine-readable
  out/*.png, *.svg   the plots of :mod:`scaling.plots`

Hoffmann et al. 2022 (arXiv:2203.15556): approach 1 (Sec. 3.1, the envelope of training
curves), approach 2 (Sec. 3.2, isoFLOP parabolas), approach 3 (Sec. 3.3, parametric
L(N, D) = E + A/N^alpha + B/D^beta with the Huber loss, delta = 1e-3, L-BFGS from the
published grid).

Table columns used: N (total parameters), D (tokens), C (training FLOPs), budget (the
nominal FLOP budget of the run's isoFLOP group), the loss column (final_val_loss by
default) and the ``loss_at_<C>`` columns (approach 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import lib
from experiments.lib.report import jsonable

LOSS_COLUMNS = {"val": "final_val_loss", "train": "final_train_loss"}
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------- tables


def fit_table(table: pd.DataFrame, loss: str = "val") -> pd.DataFrame:
    """Finished runs with the columns the fits read: run, size, budget, N, D, C, loss.

    Raises:
      ValueError: no finished run, or ``loss`` unknown.
    """
    if loss not in LOSS_COLUMNS:
        raise ValueError(f"loss={loss!r}: allowed values are {sorted(LOSS_COLUMNS)}")
    done = table[table["status"] == "complete"]
    if done.empty:
        raise ValueError("the results table has no finished run to fit")
    out = pd.DataFrame({
        "run": done["run"], "size": done["size"], "budget": done["budget"].astype(float),
        "N": done["N"].astype(float), "D": done["D"].astype(float), "C": done["C"].astype(float),
        "loss": done[LOSS_COLUMNS[loss]].astype(float),
    })
    return out.reset_index(drop=True)


def curve_points(table: pd.DataFrame) -> pd.DataFrame:
    """Long table of the training curves at the study's FLOP checkpoints (approach 1).

    Returns:
      One row per (finished run, FLOP count reached): run, N, C (FLOPs), D (tokens seen
      at C = C / flops_per_token), loss (training loss at C).
    """
    cols = [c for c in table.columns if c.startswith("loss_at_")]
    done = table[table["status"] == "complete"]
    rows = []
    for r in done.to_dict("records"):
        for c in cols:
            value = r[c]
            if value is not None and np.isfinite(value):
                flops = float(c[len("loss_at_"):])
                rows.append({"run": r["run"], "N": float(r["N"]), "C": flops, "D": flops / r["flops_per_token"],
                             "loss": float(value)})
    return pd.DataFrame(rows, columns=["run", "N", "C", "D", "loss"])


def entropy_floor(study: lib.Study) -> dict[str, float] | None:
    """The synthetic source's entropy rate in nats per byte (the E a perfect fit recovers), else None."""
    data = study.runs[0].data
    if data.source != "synthetic":
        return None
    from lm.data.pipeline import entropy_rate_bits

    bits = entropy_rate_bits(data)
    return {"bits_per_byte": bits, "nats_per_byte": bits * LN2}


def flops_per_token_of_n(table: pd.DataFrame):
    """f(N): training FLOPs per token as a function of N, log-log interpolated along the ladder.

    Used to turn the approach-3 law into N_opt(C), D_opt(C) under this architecture's
    exact FLOP count instead of C = 6ND.
    """
    ladder = table.drop_duplicates("N").sort_values("N")
    logn, logf = np.log(ladder["N"].to_numpy(float)), np.log(ladder["flops_per_token"].to_numpy(float))
    if len(logn) == 1:
        return lambda n: np.asarray(n, float) * ladder["flops_per_token"].iloc[0] / ladder["N"].iloc[0]
    slope_lo = (logf[1] - logf[0]) / (logn[1] - logn[0])
    slope_hi = (logf[-1] - logf[-2]) / (logn[-1] - logn[-2])

    def f(n):
        x = np.log(np.asarray(n, float))
        y = np.interp(x, logn, logf)
        y = np.where(x < logn[0], logf[0] + slope_lo * (x - logn[0]), y)
        y = np.where(x > logn[-1], logf[-1] + slope_hi * (x - logn[-1]), y)
        return np.exp(y)

    return f


# -------------------------------------------------------------------------- analysis

FIT_COLUMNS = {"N": "N", "D": "D", "C": "budget", "loss": "loss"}


def _interval(boot, name: str) -> list[float]:
    if boot is None or name not in boot.intervals.index:
        return [math.nan, math.nan]
    return list(boot.interval(name))


def exact_optimum(params: dict, budgets, f) -> dict[str, np.ndarray]:
    """N_opt, D_opt [n, k] (or [k]) of the Chinchilla law(s) ``params`` at ``budgets`` [k]
    under FLOPs = f(N) * D; parameter values may be arrays [n, 1] (bootstrap fits at once).

    The same vectorised constrained minimum (:func:`scaling.laws.chinchilla_allocation_for_flops`)
    that draws the frontiers in :mod:`scaling.plots`, so table and figures agree.
    """
    from scaling import laws

    beta = params.get("beta", params["alpha"])
    n_opt, d_opt = laws.chinchilla_allocation_for_flops(
        np.asarray(budgets, float), params["A"], params["B"], params["alpha"], beta, f)
    return {"N_opt": np.atleast_1d(n_opt), "D_opt": np.atleast_1d(d_opt)}


def optimum_table(fit3, boot3, budgets, table, level: float = 0.95) -> list[dict]:
    """Per budget: N_opt, D_opt, tokens per parameter of the approach-3 law under this
    architecture's exact FLOPs per token, with percentile intervals over the bootstrap fits."""
    from scaling.bootstrap import percentile_intervals

    f = flops_per_token_of_n(table)
    est = exact_optimum(fit3.params, budgets, f)
    names = [(q, i) for i in range(len(budgets)) for q in ("N_opt", "D_opt", "tokens_per_param")]
    estimates = {f"{q}[{i}]": float(est[q][i] if q != "tokens_per_param" else est["D_opt"][i] / est["N_opt"][i])
                 for q, i in names}
    intervals = None
    if boot3 is not None and len(boot3.samples):
        samples = {k: v.to_numpy(float)[:, None] for k, v in boot3.samples[list(fit3.params)].items()}
        o = exact_optimum(samples, budgets, f)  # [n, k], all resamples at once
        cols = {}
        for i in range(len(budgets)):
            cols.update({f"N_opt[{i}]": o["N_opt"][:, i], f"D_opt[{i}]": o["D_opt"][:, i],
                         f"tokens_per_param[{i}]": o["D_opt"][:, i] / o["N_opt"][:, i]})
        intervals = percentile_intervals(pd.DataFrame(cols), estimates, level)
    out = []
    for i, c in enumerate(budgets):
        row = {"C": float(c)}
        for q in ("N_opt", "D_opt", "tokens_per_param"):
            key = f"{q}[{i}]"
            row[q] = estimates[key]
            row[f"{q}_interval"] = ([float(intervals.loc[key, "lower"]), float(intervals.loc[key, "upper"])]
                                    if intervals is not None else [math.nan, math.nan])
        out.append(row)
    return out


def analyze(study: lib.Study, table: pd.DataFrame, out: str | Path, *, bootstrap: int = 200,
            loss: str = "val", seed: int = 0) -> dict[str, Any]:
    """Fit the three approaches and the extrapolation checks; write report.md, fit.json and the plots.

    Args:
      study: the grid (its settings; the synthetic source's entropy rate).
      table: the results table (experiments.lib.table), merged over shards.
      out: where the report and plots go.
      bootstrap: resamples for every interval (0: none).
      loss: "val" (final validation loss) or "train" (final training loss).

    Returns:
      {"report": path of report.md, "fit": the numbers written to fit.json, "plots": [paths],
       "boot3": approach 3's BootstrapResult or None}.
    """
    import warnings

    from scaling import fit_isoflop, fit_law
    from scaling import plots as splots
    from scaling.isoflop import envelope

    out = Path(out)
    ft = fit_table(table, loss)
    budgets = sorted(float(b) for b in ft["budget"].unique())
    n: dict[str, Any] = {
        "study": study.fingerprint(), "meta": dict(study.meta), "loss": LOSS_COLUMNS[loss],
        "runs_complete": int(len(ft)), "runs_total": len(study.runs), "bootstrap": bootstrap,
        "table": "results.csv", "warnings": [],
    }

    # approach 3: parametric L(N, D), Huber on log residuals from the published grid
    fit3 = fit_law(ft, law="chinchilla", columns=FIT_COLUMNS)
    boot3 = fit3.bootstrap(n=bootstrap, seed=seed) if bootstrap >= 2 else None
    n["approach3"] = {
        "params": dict(fit3.params), "intervals": {k: _interval(boot3, k) for k in fit3.params},
        "a": float(fit3.params["beta"] / (fit3.params["alpha"] + fit3.params["beta"])),
        "a_interval": _interval(boot3, "a=beta/(alpha+beta)"),
        "objective": fit3.objective, "n_starts": fit3.n_starts, "n_at_best": fit3.n_at_best,
        "bootstrap_failed": None if boot3 is None else boot3.n_failed,
        "optimum": optimum_table(fit3, boot3, budgets, table),
    }
    from scaling.diagnostics import fit_warnings

    n["warnings"] += [f"approach 3: {w}" for w in fit_warnings(fit3, boot3)]

    # approach 2: isoFLOP parabolas
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        iso = fit_isoflop(ft, columns=FIT_COLUMNS, n_bootstrap=bootstrap, seed=seed)
    n["warnings"] += [str(w.message) for w in caught]
    optima = iso.optima.assign(tokens_per_param=iso.optima["D_star"] / iso.optima["N_star"])
    n["approach2"] = {"optima": optima.to_dict("records"), "a": iso.a, "b": iso.b,
                      "a_interval": list(iso.a_interval), "b_interval": list(iso.b_interval),
                      "budgets_used": int(optima["in_range"].sum())}

    # approach 1: envelope of the training curves, from the smallest budget up
    curves = curve_points(table)
    curves = curves[curves["C"] >= min(budgets) * (1 - 1e-9)]
    if curves["C"].nunique() >= 2:
        env = envelope(curves, n_bins=int(curves["C"].nunique()))
        n["approach1"] = {"a": env["a"], "b": env["b"], "k_N": env["k_N"], "k_D": env["k_D"],
                          "envelope": env["envelope"].to_dict("records")}
    else:
        n["approach1"] = None

    # extrapolation: refit without the largest budget, predict it
    n["extrapolation"] = _extrapolation(iso, ft, budgets)

    truth = entropy_floor(study)
    if truth is not None:
        n["synthetic"] = {**truth, "E_fit": fit3.params["E"], "E_interval": n["approach3"]["intervals"]["E"]}

    plots = []
    f = flops_per_token_of_n(table)  # frontiers under this architecture's exact FLOPs, where the runs lie
    plots += splots.plot_isoflop(iso, out)
    plots += splots.plot_loss_vs_compute(fit3, ft.assign(C=ft["C"]), out, columns={"N": "N", "D": "D", "loss": "loss"},
                                         boot=boot3, flops_per_token=f)
    plots += splots.plot_optimal_allocation(out, iso=iso, result=fit3, boot=boot3, flops_per_token=f)
    plots += splots.plot_residuals(fit3, out)
    plots += splots.plot_contours(fit3, out, flops_per_token=f)
    n["plots"] = [p.name for p in plots]
    (out / "fit.json").write_text(json.dumps(jsonable(n), indent=2))
    report = write_report(out, n, fit3, boot3)
    return {"report": report, "fit": n, "plots": plots, "boot3": boot3}


def held_out_lines(pred: dict, measured: float) -> list[str]:
    """Report lines of a held-out budget's predicted optimal loss against ``measured`` (the grid's L*);
    ``pred`` (of ``experiments.chinchilla.predict_optimum``) gains the relative errors and whether
    approach 3's interval covers ``measured``. A prediction that is not finite is said, never printed."""
    pred["measured_L_star"] = measured
    pred.update({f"{k}_rel_error": pred[k] / measured - 1.0 for k in ("approach3", "approach2") if k in pred})
    lo, hi = pred["approach3_interval"]
    has = bool(np.isfinite([lo, hi]).all())
    pred["approach3_covers"] = bool(lo <= measured <= hi) if has and np.isfinite(measured) else None
    said = {True: ", which covers it", False: ", which does NOT cover it", None: ""}[pred["approach3_covers"]]
    interval = (f"95% interval: [{lo:.4f}, {hi:.4f}]{said}" if has
                else "no interval (no bootstrap resamples, or none whose refit converged)")
    out = []
    for k, extra in (("approach3", f", {interval}"), ("approach2", "")):
        if k not in pred:
            continue
        if not np.isfinite(pred[k]):
            out.append(f"- approach {k[-1]}: no prediction (its fit ran off to a degenerate optimum: see the warnings)")
            continue
        rel = f" ({100 * pred[f'{k}_rel_error']:+.2f}%)" if np.isfinite(pred[f"{k}_rel_error"]) else ""
        out.append(f"- approach {k[-1]}: {pred[k]:.4f}{rel}{extra}")
    return out


def _extrapolation(iso, ft: pd.DataFrame, budgets: list[float]) -> dict[str, Any]:
    """Fit without the largest budget and predict it.

    approach 2: :meth:`scaling.isoflop.IsoflopResult.extrapolation_check` (L* by the
    saturating law in C, N* by the refitted power law; needs 4 budgets);
    approach 3: the parametric law refitted on the other budgets predicts the loss of every
    run of the largest budget (mean and max relative error).
    """
    from scaling import fit_law
    from scaling.diagnostics import fit_warnings

    res: dict[str, Any] = {"C": budgets[-1]}
    try:
        res["approach2"] = iso.extrapolation_check()
    except ValueError as err:
        res["approach2"] = {"skipped": str(err)}
    held = np.isclose(ft["budget"], budgets[-1], rtol=1e-9)
    if len(budgets) >= 2 and (~held).sum() >= 5:
        fit = fit_law(ft[~held], law="chinchilla", columns=FIT_COLUMNS)
        pred = fit.predict(ft[held])
        rel = pred / ft.loc[held, "loss"].to_numpy() - 1.0
        res["approach3"] = {"params": dict(fit.params), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                            "max_abs_rel_error": float(np.max(np.abs(rel))),
                            "runs": ft.loc[held, "run"].tolist(), "rel_errors": rel.tolist(),
                            "warnings": fit_warnings(fit)}
    else:
        res["approach3"] = {"skipped": "needs another budget and at least 5 runs besides the largest budget"}
    return res


def _fmt(x) -> str:
    """A number as the report prints it (4 significant digits)."""
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _iv(pair) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def write_report(out: Path, n: dict, fit3=None, boot3=None) -> Path:
    """report.md from the numbers of fit.json (nothing is fitted here)."""
    meta = n["meta"]
    level = "95%"
    L = [f"# Chinchilla isoFLOP study: preset `{meta.get('preset')}`, data `{meta.get('data')}`", "",
         f"{n['runs_complete']} of {n['runs_total']} runs complete; fitted loss `{n['loss']}` (nats/token); "
         f"sizes {', '.join(meta.get('sizes', []))}; budgets {', '.join(_fmt(c) for c in meta.get('budgets', []))} "
         f"FLOPs (exact training FLOPs per token, lm/model/counting.py). Table: `{n['table']}`; every number below is "
         f"in `fit.json`, fitted from that table by `scaling/` ({n['bootstrap']} bootstrap resamples, "
         f"{level} percentile intervals).", ""]
    a3 = n["approach3"]
    L += ["## Approach 3: parametric fit L(N, D) = E + A/N^alpha + B/D^beta", "",
          "Hoffmann et al. 2022, Sec. 3.3: sum of Huber losses (delta 1e-3) of log residuals, BFGS from "
          f"the published grid; {a3['n_at_best']} of {a3['n_starts']} starts reached the best optimum "
          f"(objective {_fmt(a3['objective'])}).", "",
          f"| parameter | fit | {level} interval |", "| --- | --- | --- |"]
    for k, v in a3["params"].items():
        L.append(f"| {k} | {_fmt(v)} | {_iv(a3['intervals'][k])} |")
    L.append(f"| a = beta/(alpha+beta) | {_fmt(a3['a'])} | {_iv(a3['a_interval'])} |")
    if a3["params"]["E"] < 1e-3:
        L += ["", "E was driven to 0: these runs do not identify the irreducible loss (their losses are "
              "far from it, or do not follow the power-law form); read A, alpha, B, beta with that in mind."]
    L += ["", "Compute-optimal allocation of each budget under the law (exact FLOPs per token of the ladder):", "",
          "| C (FLOPs) | N_opt | D_opt | tokens per parameter |", "| --- | --- | --- | --- |"]
    for r in a3["optimum"]:
        L.append(f"| {_fmt(r['C'])} | {_fmt(r['N_opt'])} {_iv(r['N_opt_interval'])} | {_fmt(r['D_opt'])} "
                 f"{_iv(r['D_opt_interval'])} | {_fmt(r['tokens_per_param'])} {_iv(r['tokens_per_param_interval'])} |")
    a2 = n["approach2"]
    L += ["", "## Approach 2: isoFLOP parabolas", "",
          f"N_opt ∝ C^a with a = {_fmt(a2['a'])} {_iv(a2['a_interval'])}; D_opt ∝ C^b with b = {_fmt(a2['b'])} "
          f"{_iv(a2['b_interval'])} ({a2['budgets_used']} budgets with the minimum inside their sizes; "
          "Chinchilla: a = 0.49, b = 0.51).", "",
          "| C (FLOPs) | N* | D* | L* | tokens per parameter | minimum inside the sizes |", "| --- | --- | --- | --- | --- | --- |"]
    for r in a2["optima"]:
        L.append(f"| {_fmt(r['C'])} | {_fmt(r['N_star'])} | {_fmt(r['D_star'])} | {_fmt(r['L_star'])} | "
                 f"{_fmt(r['tokens_per_param'])} | {'yes' if r['in_range'] else 'no'} |")
    a1 = n["approach1"]
    L += ["", "## Approach 1: envelope of the training curves", ""]
    if a1:
        L += [f"Minimum training loss over all runs at each FLOP count from the smallest budget up "
              f"({len(a1['envelope'])} points): N_opt ∝ C^{_fmt(a1['a'])}, D_opt ∝ C^{_fmt(a1['b'])} "
              "(Chinchilla: 0.50, 0.50). The envelope's N moves in steps of the size ladder, so with few sizes "
              "this exponent is coarse; approaches 2 and 3 are the better estimates."]
    else:
        L += ["Not enough curve points."]
    ex = n["extrapolation"]
    L += ["", f"## Extrapolation check (fit without the largest budget, C = {_fmt(ex['C'])})", ""]
    e2 = ex["approach2"]
    if "skipped" in e2:
        L.append(f"- approach 2: skipped ({e2['skipped']})")
    else:
        L.append(f"- approach 2: predicted L* = {_fmt(e2['L_pred'])} vs measured {_fmt(e2['L_star'])} "
                 f"(relative error {e2['L_rel_error']:+.2%}); predicted N* = {_fmt(e2['N_pred'])} vs "
                 f"{_fmt(e2['N_star'])} ({e2['N_rel_error']:+.1%})")
    e3 = ex["approach3"]
    if "skipped" in e3:
        L.append(f"- approach 3: skipped ({e3['skipped']})")
    else:
        L.append(f"- approach 3: the loss of the {len(e3['runs'])} runs at that budget predicted with mean "
                 f"relative error {e3['mean_abs_rel_error']:.2%} (max {e3['max_abs_rel_error']:.2%})")
        L += [f"  - warning: {w}" for w in e3.get("warnings", [])]
    if "synthetic" in n:
        s = n["synthetic"]
        L += ["", "## Known entropy rate (synthetic source)", "",
              f"Fitted E = {_fmt(s['E_fit'])} {_iv(s['E_interval'])} nats/token; the source's entropy rate is "
              f"{_fmt(s['nats_per_byte'])} nats/byte ({_fmt(s['bits_per_byte'])} bits/byte), the loss of a "
              "perfect model (up to O(order/seq_len) at segment starts and the EOS targets)."]
    if n["warnings"]:
        L += ["", "## Warnings", ""] + [f"- {w}" for w in n["warnings"]]
    L += ["", "## Plots", "",
          "Every frontier (loss vs compute, N_opt/D_opt, contours) is drawn under this architecture's exact "
          "training FLOPs per token f(N) (log-log interpolated along the ladder), C = f(N) D, where the runs lie; "
          "at these sizes f(N) is 10-25% above 6N.", ""]
    L += [f"![{p[:-4]}]({p})" for p in n["plots"] if p.endswith(".png")]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path
