"""Data-constrained scaling: unique-data budgets U repeated for several epochs at several model sizes.

``python -m experiments.data_constrained [--preset smoke|default|full] [--out DIR]``

Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (arXiv:2305.16264):
for every model size and unique-data budget U (``DataConfig.max_train_bytes`` caps the
training split only; U is the exact number of unique training targets it yields), train for
D = epochs x U tokens (cosine matched to the run). Analysis (reads the table, fits with
:mod:`scaling`), the paper's recipe (Sec. 5):

  1. L(N, D) = E + A/N^alpha + B/D^beta fitted on the single-epoch runs (no repetition;
     with fewer than 6 such runs, the tied form alpha = beta);
  2. with those fixed, R_D* and R_N* of Eqs. (5)-(7) (``fit_law(law="data_constrained",
     fixed=...)``) fitted on all runs, with bootstrap intervals;
  3. the value of repeated tokens: D'/U = 1 + R_D* (1 - exp(-(epochs - 1) / R_D*)) (Eq. 5),
     fitted curve with its band, and the empirical effective data of every run (D' solving
     the fitted law for its loss);
  4. the number of epochs at which repetition costs more than ``--loss-increase`` (relative)
     over training on as many unique tokens (the largest model, the smallest U), and the
     measured pairs (U, e epochs) vs (e U, 1 epoch) where the grid holds both.

Validation: the cap leaves the validation split untouched, so every run of the study
evaluates on the same validation batches during training, and its own ``final_val_loss``
is the loss fitted.

Outputs under ``--out`` (default ``runs/data_constrained/<preset>``): run directories,
results.csv, curves.csv, report.md, repeated_value.png/svg, loss_vs_epochs.png/svg.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import lib
from experiments.lib import data_budget
from lm.data import pipeline as lm_data
from lm.data.config import DataConfig
from lm.model.presets import LADDER, ladder_model
from scaling import laws


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """sizes x unique budgets (bytes) x epochs."""

    sizes: tuple[str, ...]
    unique_bytes: tuple[int, ...]
    epochs: tuple[int, ...]
    seq_len: int
    batch_size: int
    learning_rate: float = 1e-2
    eval_batches: int = 4
    bootstrap: int = 200
    dtype: str = "float32"  # compute dtype (parameters stay float32)

    def __post_init__(self):
        if any(s not in LADDER for s in self.sizes) or len(self.sizes) < 2:
            raise ValueError(f"Preset.sizes={self.sizes}: need >= 2 ladder sizes from {list(LADDER)}")
        if len(self.unique_bytes) < 2 or 1 not in self.epochs or len(self.epochs) < 2:
            raise ValueError("Preset: need >= 2 unique budgets and epochs including 1 and a repetition")


PRESETS: dict[str, Preset] = {
    "smoke": Preset(sizes=("d16L1", "d32L1"), unique_bytes=(3000, 6000), epochs=(1, 2, 4), seq_len=32,
                    batch_size=4, eval_batches=2, bootstrap=20),
    "default": Preset(sizes=("d16L1", "d32L2", "d64L2"), unique_bytes=(1 << 16, 1 << 17, 1 << 18),
                      epochs=(1, 2, 4, 8, 16), seq_len=128, batch_size=8, eval_batches=8, bootstrap=200),
    "full": Preset(sizes=("d256L4", "d512L8", "d768L12"), unique_bytes=(1 << 26, 1 << 28, 1 << 30),
                   epochs=(1, 2, 4, 8, 16, 32, 64), seq_len=1024, batch_size=64, learning_rate=3e-3,
                   eval_batches=32, bootstrap=1000, dtype="bfloat16"),
}


# Repetition is what this study measures: --max-epochs defaults above the largest preset's 64 epochs.
MAX_EPOCHS = 100.0


def unique_tokens(data: DataConfig) -> int:
    """U: the training targets one epoch of the (capped) training split holds."""
    return int(lm_data.dataset_info(data)["train"]["targets"])


def build_study(preset: Preset, preset_name: str = "custom", *, data: str = "stdlib") -> lib.Study:
    runs, tags = [], {}
    tokens_per_step = preset.seq_len * preset.batch_size
    base = data_budget.base_data(data, seq_len=preset.seq_len, batch_size=preset.batch_size)
    for size in preset.sizes:
        model = data_budget.replace_vocab(ladder_model(*LADDER[size], dtype=preset.dtype), base)
        for ub in preset.unique_bytes:
            capped = dataclasses.replace(base, max_train_bytes=ub)
            if lm_data.dataset_info(capped)["train"]["bytes"] < ub:
                raise lib.StudyError(f"unique budget {ub} bytes is larger than the training split of --data={data} "
                                        f"({lm_data.dataset_info(base)['train']['bytes']} bytes); use a larger corpus")
            U = unique_tokens(capped)
            for e in preset.epochs:
                steps = max(4, int(round(e * U / tokens_per_step)))
                name = f"{size}-U{ub}-e{e}"
                runs.append(lib.cosine_run(name, model, capped, steps=steps, learning_rate=preset.learning_rate,
                                                 eval_batches=preset.eval_batches))
                tags[name] = {"size": size, "unique_bytes": ub, "U": U, "epochs": e,
                              "epochs_exact": steps * tokens_per_step / U}
    meta = {"preset": preset_name, "sizes": list(preset.sizes), "unique_bytes": list(preset.unique_bytes),
            "epochs": list(preset.epochs)}
    tags = data_budget.with_epoch_tags(runs, tags)
    return lib.Study(name="data_constrained", runs=tuple(runs), tags=tags, meta=meta, min_steps=4)


# --------------------------------------------------------------------------- analysis

_SMALL_GRID = {"alpha": (0.2, 0.5), "beta": (0.2, 0.5), "e": (0.0, 0.5, 1.0), "a": (2.0, 6.0, 10.0),
               "b": (2.0, 6.0, 10.0)}


def fit_data_constrained(table: pd.DataFrame, loss: str = "final_val_loss", n_bootstrap: int = 200,
                         chinchilla_grid=_SMALL_GRID) -> dict:
    """Chinchilla on the 1-epoch runs, then R_D*, R_N* with it fixed; bootstrap of the second fit."""
    from scaling import fit_law

    t = table[(table["status"] == "complete")].copy()
    t = t[np.isfinite(pd.to_numeric(t[loss], errors="coerce"))]
    data = pd.DataFrame({"N": t["N"].astype(float), "D": t["D"].astype(float), "U": t["U"].astype(float),
                         "loss": t[loss].astype(float), "epochs": t["epochs"]})
    one = data[data["epochs"] == 1]
    if len(one) >= 6:
        chin = fit_law(one[["N", "D", "loss"]], law="chinchilla", init_grid=chinchilla_grid)
    else:  # too few unconstrained runs for 5 parameters: the tied form alpha = beta (4 parameters)
        grid = {k: v for k, v in chinchilla_grid.items() if k != "beta"} if isinstance(chinchilla_grid, dict) \
            else chinchilla_grid
        chin = fit_law(one[["N", "D", "loss"]], law="chinchilla_tied", init_grid=grid)
    fixed = {k: chin.params.get(k, chin.params["alpha"]) for k in ("E", "A", "B", "alpha", "beta")}
    dc = fit_law(data[["N", "D", "U", "loss"]], law="data_constrained", fixed=fixed,
                 init_grid={"log_R_D_star": tuple(np.log([1.0, 5.0, 15.0, 50.0])),
                            "log_R_N_star": tuple(np.log([1.0, 5.0, 15.0, 50.0]))})
    boot = dc.bootstrap(n=n_bootstrap) if n_bootstrap >= 2 else None
    return {"chinchilla": chin, "dc": dc, "boot": boot, "data": data}


def repeated_value(epochs, R_D_star):
    """D'/U after ``epochs`` passes over U unique tokens (Muennighoff Eq. 5, :func:`scaling.laws.effective_data`)."""
    return laws.effective_data(epochs, 1.0, R_D_star)


def epochs_for_loss_increase(params: dict, N: float, U: float, increase: float,
                             max_epochs: float = 1000.0) -> float:
    """Smallest epoch count e (log grid) at which L(N, eU, U) > (1 + increase) L(N, eU, eU unique)."""
    grid = np.geomspace(1.0, max_epochs, 2000)
    rep = laws.data_constrained(N, grid * U, U, **params)
    uniq = laws.data_constrained(N, grid * U, grid * U, **params)
    over = np.flatnonzero(rep > (1.0 + increase) * uniq)
    return float(grid[over[0]]) if over.size else float("inf")


def measured_pairs(table: pd.DataFrame, loss: str = "final_val_loss") -> pd.DataFrame:
    """(size, U, e epochs) vs (size, e U unique, 1 epoch) where both are in the grid (same D, +-5%)."""
    t = table[table["status"] == "complete"]
    rows = []
    for _, r in t[t["epochs"] > 1].iterrows():
        cand = t[(t["size"] == r["size"]) & (t["epochs"] == 1) & (np.abs(t["D"] / r["D"] - 1) < 0.05)]
        if len(cand):
            u = cand.iloc[0]
            rows.append({"size": r["size"], "U": r["U"], "epochs": r["epochs"], "D": r["D"], "repeated": r[loss],
                         "unique": u[loss], "relative_increase": r[loss] / u[loss] - 1})
    return pd.DataFrame(rows)


def identification_notes(params: dict, data: pd.DataFrame, intervals: pd.DataFrame | None = None) -> list[str]:
    """Plain-language warnings for fitted quantities the grid cannot determine.

    * R_N* only acts on runs with excess parameters, N > U_N = N_opt(U) (the size for which
      the run's unique tokens are compute-optimal, Muennighoff et al. 2023 Eq. (7)); with no
      such run, or with a bootstrap interval of zero width, it is not identified.
    * R_D* likewise needs repeated runs (epochs > 1).
    * E at ~0 means the irreducible loss is not resolved at these scales.

    Args:
      params: the fitted law's parameters (E, A, B, alpha, beta, R_D_star, R_N_star).
      data: the fitted runs with N, U, epochs columns.
      intervals: the bootstrap interval table (rows R_D_star, R_N_star; lower/upper), or None.
    """
    notes = []
    u_n = laws.n_opt_for_tokens(data["U"].to_numpy(float), params["A"], params["B"], params["alpha"],
                                params["beta"])
    excess = int(np.sum(data["N"].to_numpy(float) > u_n))
    flat = lambda k: (intervals is not None and k in intervals.index
                      and np.isclose(intervals.loc[k, "lower"], intervals.loc[k, "upper"], rtol=1e-6))
    span = f"U_N = N_opt(U) from {min(u_n):.3g} to {max(u_n):.3g}"
    if excess == 0:
        notes.append(f"R_N* = {params['R_N_star']:.3g} is not identified: no run has more parameters than its "
                     f"unique data makes compute-optimal (N > U_N, {span}), so the excess-parameter decay never "
                     "enters the fit; add larger models or smaller U to measure it.")
    elif flat("R_N_star") or params["R_N_star"] > 1e6:
        notes.append(f"R_N* = {params['R_N_star']:.3g} ran off to a flat direction of the fit: {excess} of "
                     f"{len(data)} runs have excess parameters (N > U_N, {span}), and the loss shows no decay "
                     "in their value; read R_N* as unbounded (not measured) at these scales.")
    if int(np.sum(data["epochs"] > 1)) == 0 or flat("R_D_star") or params["R_D_star"] > 1e6:
        notes.append(f"R_D* = {params['R_D_star']:.3g} is not identified by the repeated runs of this grid.")
    if params["E"] < 1e-6:
        notes.append(f"E = {params['E']:.3g}: the irreducible loss is not resolved at these scales (the fit "
                     "puts it at zero); read A, B, alpha, beta as an effective local fit.")
    return notes


def analyze(table: pd.DataFrame, out: str | Path, *, bootstrap: int = 200, loss_increase: float = 0.01,
            loss: str = "final_val_loss", preset_name: str = "") -> dict:
    out = Path(out)
    res = fit_data_constrained(table, loss, bootstrap)
    p = dict(res["dc"].params)
    data = res["data"]
    # empirical effective data of each run: D' solving E + A/N'^alpha + B/D'^beta = loss (N' = N here)
    resid = data["loss"] - p["E"] - p["A"] / data["N"] ** p["alpha"]
    with np.errstate(invalid="ignore", divide="ignore"):
        d_eff = np.where(resid > 0, (p["B"] / resid) ** (1 / p["beta"]), np.nan)
    figures = lib.figures.plot_repeated_value(data, d_eff, p, res["boot"], out)
    figures += lib.figures.plot_loss_vs_epochs(table, res["dc"], out, loss)

    n_big, u_small = float(data["N"].max()), float(data["U"].min())
    e_star = epochs_for_loss_increase(p, n_big, u_small, loss_increase)
    pairs = measured_pairs(table, loss)
    iv = res["boot"].intervals if res["boot"] is not None else None
    fixed = [(k, f"{p[k]:.4g}", "(fixed from the 1-epoch fit)") for k in ("E", "A", "B", "alpha", "beta")]
    fitted = [(k, f"{p[k]:.4g}", f"[{iv.loc[k, 'lower']:.3g}, {iv.loc[k, 'upper']:.3g}]" if iv is not None else "")
              for k in ("R_D_star", "R_N_star")]
    lines = [f"# Data-constrained scaling ({preset_name} preset)", "",
             "Muennighoff et al. 2023 (arXiv:2305.16264), Eqs. (5)-(7); Chinchilla part fitted on the 1-epoch runs "
             f"and held fixed. Loss: {loss}.", "",
             *lib.markdown_table(["parameter", "estimate", "95% interval"], fixed + fitted, align="lrl")]
    when = (f"from {e_star:.3g} epochs on" if np.isfinite(e_star) else
            "at no epoch count up to 1000: no cost of repetition is resolved within this grid")
    notes = identification_notes(p, data, iv)
    if notes:
        lines += ["", "Not identified by this grid:", ""] + [f"- {n}" for n in notes]
    from scaling.diagnostics import fit_warnings, markdown

    lines += ["", *markdown(fit_warnings(res["chinchilla"]), "Warnings, Chinchilla fit (1 epoch)")]
    lines += markdown(fit_warnings(res["dc"], res["boot"]), "Warnings, data-constrained fit")
    lines += ["", "Paper: R_D* = 15.4, R_N* = 5.3.", "",
              f"**Repetition costs more than {100 * loss_increase:g}% loss (vs as many unique tokens) {when}** "
              f"(fitted law, N = {n_big:.3g}, U = {u_small:.3g} tokens).", ""]
    if len(pairs):
        lines += ["Measured: repeated vs unique data at the same D:", ""]
        lines += lib.markdown_table(
            ["size", "U", "epochs", "repeated", "unique", "relative increase"],
            [(r["size"], f"{r['U']:.3g}", r["epochs"], f"{r['repeated']:.4f}", f"{r['unique']:.4f}",
              f"{100 * r['relative_increase']:+.2f}%") for _, r in pairs.iterrows()], align="lrrrrr")
    report = lib.write_report(out, lines, figures)
    return {"params": p, "fits": res, "epochs_threshold": e_star, "loss_increase": loss_increase, "pairs": pairs,
            "plots": figures, "report": report, "notes": notes}


# ------------------------------------------------------------------------------- CLI


def _add_args(parser) -> None:
    parser.add_argument("--loss-increase", type=float, default=0.01,
                        help="relative loss increase the report's epoch threshold refers to (default 0.01 = 1%%)")


def _analyze(study: lib.Study, table: pd.DataFrame, out: Path, preset: Preset, args) -> dict:
    return analyze(table, out, bootstrap=preset.bootstrap, loss_increase=args.loss_increase, preset_name=args.preset)


def _summary(result: dict) -> str:
    p = result["params"]
    return (f"R_D* = {p['R_D_star']:.3g}, R_N* = {p['R_N_star']:.3g}; repetition costs > "
            f"{100 * result['loss_increase']:g}% from {result['epochs_threshold']:.3g} epochs")


COMMAND = lib.StudyCommand(name="data_constrained", doc=__doc__, presets=PRESETS,
                           build=lambda preset, args, out: build_study(preset, args.preset, data=args.data),
                           analyze=_analyze, summary=_summary, add_args=_add_args, max_epochs=MAX_EPOCHS)


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
