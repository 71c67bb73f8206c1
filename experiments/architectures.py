"""Architecture families on one FLOP grid: L(C) frontiers, compute multipliers, decode-cache sizes.

``python -m experiments.architectures [--preset smoke|default|full] [--out DIR]``

Transformer, Griffin, Hawk (De et al. 2024, arXiv:2402.19427), gated linear attention
(Yang et al. 2024, arXiv:2312.06635), MLA (DeepSeek-V2, arXiv:2405.04434) and a top-2-of-8
MoE whose ACTIVE parameters match the dense transformer (expert width 2d: top_k x 2d = the
dense MLP's 4d) are trained on one grid of FLOP budgets x sizes. The FLOPs of a run are
exact per family (:func:`lm.model.counting.train_flops_per_token`: attention, recurrences, the MoE's
active experts, not 6N), so every family spends the same C at a budget.

Analysis (reads only the table, fits with :mod:`scaling`):
  frontier     per family and budget the lowest-loss run; L(C) = E + A C^-alpha fitted to
               those points (``fit_law(law="saturating")``, Huber on log residuals,
               multistart L-BFGS) with bootstrap bands, all families on one plot;
  chinchilla   per family with >= 8 runs and >= 2 sizes: L(N, D) = E + A/N^alpha + B/D^beta
               (N = active parameters) with bootstrap intervals;
  multipliers  C_f(L*) / C_max where L* is the transformer's fitted frontier loss at the
               largest budget C_max and C_f(L) = (A_f / (L - E_f))^(1/alpha_f): the compute a
               family needs to match the transformer (< 1: more efficient); intervals pair
               the bootstrap resamples of the two fits;
  cache        decode-cache bytes per token at ``context`` tokens (:func:`lm.model.network.cache_bytes`)
               beside each multiplier.

Outputs under ``--out`` (default ``runs/architectures/<preset>``): run directories,
results.csv (column ``family``, ``N_active``), curves.csv, multipliers.csv, report.md,
frontiers.png/svg. ``notebooks/architecture_comparison`` reproduces the plots from the table.

``--method wsd`` (Hägele et al. 2024, arXiv:2405.18392): one warmup-stable run per family and
size, and a cooldown branch at each of ``wsd_budgets`` budgets (geometric over the grid's
range; :mod:`experiments.lib.branches`), under ``<--out>/wsd``: more frontier points per
family for less compute than the grid. The same analysis; the report adds the compute of
both methods and the grid's multipliers (from ``<--out>``) beside these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import lib
from experiments.lib import branches, data_budget
from experiments.architectures_analysis import e_profile_lines, unbounded_note
from experiments.lib.report import check_level, jsonable
from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.moe import MoEConfig
from lm.model.config import ModelConfig
from lm.model.counting import param_count, train_flops_per_token

FAMILIES = ("transformer", "griffin", "hawk", "gla", "mla", "moe")
CONTEXT = 4096


def family_model(family: str, d_model: int, num_layers: int) -> ModelConfig:
    """The ``family``'s model at width ``d_model`` and depth ``num_layers`` (heads of 16 dims).

    Mirrors :data:`lm.model.presets.PRESETS` (Griffin: RRW blocks, local MQA window 256, RoPE on
    half the head, MLP 3d, logit soft-cap 30; Hawk: R only; GLA; MLA with kv rank d/4; MoE:
    8 experts of width 2d, top-2, so the active MLP equals the dense 4d MLP).
    """
    h = max(1, d_model // 16)
    base = ModelConfig(d_model=d_model, num_layers=num_layers, pattern="A", num_heads=h, d_ff=4 * d_model)
    if family == "transformer":
        return base
    if family in ("griffin", "hawk"):
        return dataclasses.replace(base, pattern="RRW" if family == "griffin" else "R", num_kv_heads=1, window=256,
                                   rope_fraction=0.5, d_ff=3 * d_model, logit_softcap=30.0)
    if family == "gla":
        return dataclasses.replace(base, pattern="L",
                                   families={"la": LinearAttentionConfig(variant="gla", output_norm="rms")})
    if family == "mla":
        return dataclasses.replace(base, pattern="M", families={"mla": MLAConfig(
            kv_lora_rank=max(8, d_model // 4), qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16)})
    if family == "moe":
        return dataclasses.replace(base, moe_every=1,
                                   moe=MoEConfig(num_experts=8, top_k=2, d_ff=2 * d_model, activation="geglu"))
    raise ValueError(f"family={family!r}: allowed families are {FAMILIES}")


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """families x sizes (d_model, num_layers) x FLOP budgets, one batch shape.

    wsd_budgets: ``--method wsd``'s number of budgets, geometric from the grid's smallest to its largest.
    """

    sizes: tuple[tuple[int, int], ...]
    budgets: tuple[float, ...]
    seq_len: int
    batch_size: int
    families: tuple[str, ...] = FAMILIES
    learning_rate: float = 1e-2
    min_steps: int = 8
    eval_batches: int = 4
    bootstrap: int = 200
    dtype: str = "float32"  # compute dtype (parameters stay float32)
    wsd_budgets: int = 8

    def __post_init__(self):
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"Preset.families={self.families}: unknown {bad}; allowed {FAMILIES}")
        if "transformer" not in self.families:
            raise ValueError("Preset.families: must include 'transformer' (the reference of the multipliers)")
        if len(self.budgets) < 3 or self.wsd_budgets < 3:
            raise ValueError(f"Preset.budgets={self.budgets}, wsd_budgets={self.wsd_budgets}: need >= 3 budgets to "
                             "fit E, A, alpha")


PRESETS: dict[str, Preset] = {
    "smoke": Preset(sizes=((16, 3),), budgets=(2e8, 4e8, 8e8), seq_len=32, batch_size=4, eval_batches=2,
                    bootstrap=20, min_steps=4),
    "default": Preset(sizes=((32, 3), (48, 3), (64, 3)), budgets=(1e10, 2e10, 4e10, 8e10), seq_len=128,
                      batch_size=8, eval_batches=8, bootstrap=200),
    "full": Preset(sizes=((256, 6), (384, 6), (512, 9), (768, 12)), budgets=(1e17, 3e17, 1e18, 3e18),
                   seq_len=1024, batch_size=128, learning_rate=2e-3, min_steps=200, eval_batches=32, bootstrap=1000,
                   dtype="bfloat16"),
}


def build_study(preset: Preset, preset_name: str = "custom", *, data: str = "stdlib") -> lib.Study:
    """The grid (family-major); sizes giving fewer than ``min_steps`` steps at a budget are left out."""
    data = data_budget.base_data(data, seq_len=preset.seq_len, batch_size=preset.batch_size)
    tokens_per_step = preset.seq_len * preset.batch_size
    runs, tags, dropped = [], {}, []
    for family in preset.families:
        for d, L in preset.sizes:
            model = data_budget.replace_vocab(dataclasses.replace(family_model(family, d, L), dtype=preset.dtype), data)
            fpt = train_flops_per_token(model, preset.seq_len)
            counts = param_count(model)
            for budget in preset.budgets:
                steps = int(round(budget / (fpt * tokens_per_step)))
                name = f"{family}-d{d}L{L}-C{budget:.2e}".replace("+", "")
                if steps < preset.min_steps:
                    dropped.append(name)
                    continue
                runs.append(lib.cosine_run(name, model, data, steps=steps, learning_rate=preset.learning_rate,
                                                 eval_batches=preset.eval_batches))
                tags[name] = {"family": family, "size": f"d{d}L{L}", "budget": budget, "N_active": counts["active"],
                              "cache_bytes_per_token": cache_per_token(model)}
    meta = {"preset": preset_name, "families": list(preset.families), "sizes": [list(s) for s in preset.sizes],
            "budgets": list(preset.budgets), "dropped_runs": dropped}
    tags = data_budget.with_epoch_tags(runs, tags)
    return lib.Study(name="architectures", runs=tuple(runs), tags=tags, meta=meta, min_steps=preset.min_steps)


def build_wsd_study(preset: Preset, out: str | Path, preset_name: str = "custom", *, data: str = "stdlib",
                    fraction: float = 0.2, shape: str = "sqrt") -> lib.Study:
    """``--method wsd``: the grid at ``wsd_budgets`` budgets (geometric over the grid's range) as one
    stable run per family and size and its cooldown branches (:func:`experiments.lib.branches.wsd_study`)."""
    lo, hi, k = min(preset.budgets), max(preset.budgets), preset.wsd_budgets
    grid = build_study(preset.replace(budgets=tuple(lo * (hi / lo) ** (i / (k - 1)) for i in range(k))),
                       preset_name, data=data)
    return branches.wsd_study(grid, out, label=lambda t: f"{t['family']}-{t['size']}", fraction=fraction,
                              shape=shape, name="architectures-wsd")


def cache_per_token(model: ModelConfig, context: int = CONTEXT) -> float:
    """Decode-cache bytes per token of ``model`` at ``context`` tokens (:func:`lm.model.network.cache_bytes`)."""
    from lm.model.network import cache_bytes

    return cache_bytes(model, context) / context


# --------------------------------------------------------------------------- analysis


def frontier(table: pd.DataFrame, loss: str = "final_val_loss") -> pd.DataFrame:
    """Per family and budget the lowest-loss complete run: columns family, C, loss."""
    t = table[table["status"] == "complete"].assign(loss=lambda d: pd.to_numeric(d[loss], errors="coerce"))
    t = t[np.isfinite(t["loss"])]
    idx = t.groupby(["family", "budget"])["loss"].idxmin()
    return t.loc[idx, ["family", "C", "loss"]].reset_index(drop=True)


def fit_frontiers(front: pd.DataFrame, n_bootstrap: int = 200, seed: int = 0) -> dict:
    """{family: (FitResult, BootstrapResult)} of L(C) = E + A C^-alpha on each family's frontier."""
    from scaling import fit_law

    out = {}
    for family, df in front.groupby("family", sort=False):
        fit = fit_law(df[["C", "loss"]], law="saturating")
        out[family] = (fit, fit.bootstrap(n=n_bootstrap, seed=seed))
    return out


def compute_for_loss(loss, E, A, alpha):
    """C at which E + A C^-alpha = loss (inf where the family's floor E is at or above it)."""
    loss, E, A, alpha = (np.asarray(v, dtype=np.float64) for v in (loss, E, A, alpha))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.where(loss > E, (A / np.maximum(loss - E, 1e-300)) ** (1.0 / alpha), np.inf)


def percentile_inf(x, q: float) -> float:
    """np.percentile of ``x`` where inf (a resample whose floor never reaches the loss) counts as the
    largest value: a percentile at or next to one is inf (np.percentile interpolates inf - inf to nan)."""
    big = np.finfo(np.float64).max
    value = float(np.percentile(np.where(np.isposinf(x), big, x), q))
    return math.inf if value > 1e300 else value


def compute_multipliers(fits: dict, c_max: float, cache: dict[str, float] | None = None,
                        reference: str = "transformer", level: float = 0.95) -> pd.DataFrame:
    """Per family: compute multiplier to match the reference's fitted loss at ``c_max``, with intervals."""
    check_level(level)
    ref_fit, ref_boot = fits[reference]
    p = ref_fit.params
    target = p["E"] + p["A"] * c_max ** -p["alpha"]
    rs = ref_boot.samples
    t_boot = (rs["E"] + rs["A"] * c_max ** -rs["alpha"]).to_numpy()
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    rows = []
    for family, (fit, boot) in fits.items():
        q, s = fit.params, boot.samples
        k = min(len(s), len(t_boot))
        m_boot = compute_for_loss(t_boot[:k], s["E"].to_numpy()[:k], s["A"].to_numpy()[:k], s["alpha"].to_numpy()[:k])
        m_boot = m_boot / c_max
        rows.append({"family": family,
                     "multiplier": float(compute_for_loss(target, q["E"], q["A"], q["alpha"]) / c_max),
                     "lower": percentile_inf(m_boot, lo) if k else math.nan,
                     "upper": percentile_inf(m_boot, hi) if k else math.nan,
                     "unreached": float(np.mean(np.isposinf(m_boot))) if k else math.nan,
                     "E": q["E"], "A": q["A"], "alpha": q["alpha"],
                     "cache_bytes_per_token": (cache or {}).get(family, math.nan)})
    return pd.DataFrame(rows).set_index("family")


E_PROFILE = (0.5, 1.0)  # E (nats) held fixed to test a Chinchilla fit's E -> 0: below every loss of these presets


def fit_chinchilla_per_family(table: pd.DataFrame, loss: str = "final_val_loss", n_bootstrap: int = 200,
                              init_grid="hoffmann") -> dict:
    """{family: interval table} of L(N_active, D) for families with >= 8 runs of >= 2 sizes.

    A table's attrs: "warnings" (``scaling.diagnostics.fit_warnings``) and, when the fit's E -> 0,
    "E_profile": {E: the objective with E held there / the free fit's} for E in :data:`E_PROFILE`
    (all >= 1: E = 0 is the data's optimum; one < 1: the free fit missed it).

    ``init_grid``: starts of the multistart fit (``scaling.fit_law``; "hoffmann" = the published grid).
    """
    from scaling import fit_law
    from scaling.diagnostics import E_MIN_FRACTION, fit_warnings

    out = {}
    t = table[table["status"] == "complete"]
    for family, df in t.groupby("family", sort=False):
        if len(df) < 8 or df["size"].nunique() < 2:
            continue
        data = pd.DataFrame({"N": df["N_active"], "D": df["D"], "loss": df[loss]})
        fit = fit_law(data, law="chinchilla", init_grid=init_grid)
        boot = fit.bootstrap(n=n_bootstrap)
        out[family] = boot.intervals
        out[family].attrs["warnings"] = fit_warnings(fit, boot)
        if fit.params["E"] < E_MIN_FRACTION * float(data["loss"].min()):
            out[family].attrs["E_profile"] = {
                e: fit_law(data, law="chinchilla", init_grid=init_grid, fixed={"E": e}).objective / fit.objective
                for e in E_PROFILE}
    return out


def analyze(table: pd.DataFrame, out: str | Path, *, bootstrap: int = 200, loss: str = "final_val_loss",
            preset_name: str = "", chinchilla_grid="hoffmann") -> dict:
    """Frontier fits, multipliers, optional per-family Chinchilla fits; plot, multipliers.csv, report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    front = frontier(table, loss)
    fits = fit_frontiers(front, bootstrap)
    cache = table.groupby("family")["cache_bytes_per_token"].max().to_dict()
    mult = compute_multipliers(fits, float(front["C"].max()), cache)
    mult.to_csv(out / "multipliers.csv")
    chin = fit_chinchilla_per_family(table, loss, bootstrap, chinchilla_grid)
    figures = lib.figures.plot_frontiers(table[table["status"] == "complete"], fits, mult, out, context=CONTEXT,
                                         loss=loss)
    lines = [f"# Architecture comparison ({preset_name} preset)", "",
             f"Loss: {loss}. Frontier L(C) = E + A C^-alpha per family (lowest-loss run per budget); "
             f"{bootstrap} bootstrap resamples, 95% percentile intervals. Multiplier: compute needed to reach the "
             f"transformer's fitted loss at C_max = {front['C'].max():.3g} FLOPs, relative to C_max.", ""]
    lines += lib.markdown_table(
        ["family", "E", "A", "alpha", "compute multiplier", "95% interval", "decode cache B/token"],
        [(f, f"{r['E']:.3f}", f"{r['A']:.3g}", f"{r['alpha']:.3f}", f"{r['multiplier']:.3g}",
          f"[{r['lower']:.3g}, {r['upper']:.3g}]", f"{r['cache_bytes_per_token']:.4g}") for f, r in mult.iterrows()],
        align="lrrrrlr")
    lines += unbounded_note(mult)
    from scaling.diagnostics import fit_warnings, markdown

    for f, (fit, boot) in fits.items():
        lines += ["", *markdown(fit_warnings(fit, boot), f"Warnings, L(C) fit of {f}")]
    for f, iv in chin.items():
        lines += ["", f"Chinchilla fit, {f} (N = active parameters):", ""]
        lines += lib.markdown_table(
            ["quantity", "estimate", "lower", "upper"],
            [(q, f"{iv.loc[q, 'estimate']:.4g}", f"{iv.loc[q, 'lower']:.4g}", f"{iv.loc[q, 'upper']:.4g}")
             for q in ("E", "A", "B", "alpha", "beta") if q in iv.index], align="lrrr")
        lines += ["", *markdown(iv.attrs.get("warnings", []), f"Warnings, Chinchilla fit of {f}")]
        if "E_profile" in iv.attrs:
            lines += e_profile_lines(f, iv.attrs["E_profile"])
    lib.write_report(out, lines, figures)
    return {"frontier": front, "fits": fits, "multipliers": mult, "chinchilla": chin, "plots": figures,
            "report": out / "report.md"}


# ------------------------------------------------------------------------------- CLI


def _build(preset: Preset, args, out: Path) -> lib.Study:
    branches.check_args(args)
    if args.method == "wsd":
        return build_wsd_study(preset, out, args.preset, data=args.data, fraction=args.cooldown_fraction,
                               shape=args.cooldown_shape)
    return build_study(preset, args.preset, data=args.data)


def _analyze(study: lib.Study, table: pd.DataFrame, out: Path, preset: Preset, args) -> dict:
    if args.method == "grid":
        return analyze(table, out, bootstrap=preset.bootstrap, preset_name=args.preset)
    result = analyze(table[table["kind"] == "branch"], out, bootstrap=preset.bootstrap, preset_name=args.preset)
    return {**result, **compare_wsd(study, result, build_study(preset, args.preset, data=args.data), out, args)}


def compare_wsd(study: lib.Study, result: dict, grid: lib.Study, out: Path, args) -> dict:
    """The WSD report's section beside the grid: compute of both, frontier points and warnings per
    family, and the multipliers of both methods with intervals (the grid's from ``out.parent``)."""
    from scaling.diagnostics import fit_warnings

    compute, lines = branches.compute_lines(study, grid)
    points = result["frontier"].groupby("family").size().to_dict()
    warned = {f: fit_warnings(fit, boot) for f, (fit, boot) in result["fits"].items()}
    too_few = [f for f, w in warned.items() if any("distinct points" in x for x in w)]
    lines = ["", "## WSD vs the grid", "", *lines, "",
             "Frontier points per family: " + ", ".join(f"{f} {n}" for f, n in points.items()) + "; L(C) fits with "
             "too few distinct points: " + (", ".join(too_few) or "none") + "; with any warning: "
             + (", ".join(f for f, w in warned.items() if w) or "none") + ".", ""]
    cmp = {"compute": compute, "frontier_points": points, "warnings": warned, "too_few_points": too_few}
    theirs = out.parent / "multipliers.csv"
    manifest = out.parent / "study.json"
    same = manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == grid.fingerprint()
    if theirs.exists() and same:
        g, w = pd.read_csv(theirs).set_index("family"), result["multipliers"]
        q = {f: (w.loc[f, "multiplier"], [w.loc[f, "lower"], w.loc[f, "upper"]], g.loc[f, "multiplier"],
                 [g.loc[f, "lower"], g.loc[f, "upper"]]) for f in w.index if f in g.index}
        cmp["multipliers"], table_lines = branches.side_by_side(q)
        lines += [f"Compute multipliers of both methods (grid: `{theirs}`):", "", *table_lines]
        if any(math.isinf(v) for f in q for v in (*q[f][1], *q[f][3])):
            lines += ["", "`inf`: an interval unbounded above (see the multiplier table: in at least 2.5% of the "
                          "resamples that family's fitted floor never reaches the target loss)."]
    else:
        lines.append(f"No results of this preset's grid in {out.parent} to set beside these; train them with "
                     f"`python -m experiments.architectures --preset {args.preset} --data {args.data} "
                     f"--out {out.parent}`, then rerun this command with --analysis-only.")
    (out / "comparison.json").write_text(json.dumps(jsonable(cmp), indent=2))
    with open(result["report"], "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return {"comparison": cmp}


def _summary(result: dict) -> str:
    return result["multipliers"][["multiplier", "lower", "upper", "cache_bytes_per_token"]].to_string()


COMMAND = lib.StudyCommand(name="architectures", doc=__doc__, presets=PRESETS,
                           build=_build, analyze=_analyze, summary=_summary, keep_diverged=True,
                           add_args=branches.add_args, locate=branches.locate)


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
