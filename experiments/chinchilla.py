"""The main job: an isoFLOP grid of transformers, trained and fitted with the three Chinchilla approaches.

``python -m experiments.chinchilla [--preset smoke|default|full] [--data stdlib|synthetic|DIR] [--out DIR]``

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556):
for every FLOP budget C and every model size of a size ladder, train one model for
D = C / f tokens, where f = :func:`lm.model.counting.train_flops_per_token` (exact matmul FLOPs of
the architecture at this sequence length, attention included; not 6N), rounded to whole
steps. Each run has a cosine schedule whose length is the run's length (Hoffmann Sec. 3,
"the cosine cycle length matches the number of training steps") decaying to 10% of the
peak, and a warmup that is a fixed fraction of the run. Then (experiments.chinchilla_analysis):

  approach 1  the envelope of all training curves (minimum loss at each FLOP count) and
              the N_opt(C) it implies (Hoffmann Sec. 3.1);
  approach 2  per-budget parabolas of loss in log N: N*(C), D*(C) power laws (Sec. 3.2);
  approach 3  the parametric fit L(N, D) = E + A/N^alpha + B/D^beta with bootstrap
              intervals (Sec. 3.3);
  check       fit approaches 2 and 3 without the largest budget and predict its L*.

Presets: ``smoke`` (seconds; CI and tests), ``default`` (the README's main job, minutes on a
2-core CPU), ``full`` (GPU/TPU sizes; not run in CI). The size ladder :data:`LADDER` names
every model: ``d<width>L<layers>``; heads of 16 dims up to width 128, of 64 dims above;
gated MLP of width 4d; tied embeddings; :data:`lm.model.presets.LADDER` (vocabulary 259 bytes, or the tokenizer's of a
prepared ``--data DIR``; FLOPs and N include it). Runs over ``--max-epochs`` (default 1) epochs
of the training split are refused before training (:mod:`experiments.lib.data_budget`).

Outputs under ``--out`` (default ``runs/chinchilla/<preset>[-<data>]``): the run
directories, ``results.csv`` (one row per run, see experiments.lib.table), ``curves.csv``,
``report.md`` and the plots (PNG and SVG). Rerunning the same command resumes.

``--method wsd`` (Hägele et al. 2024, arXiv:2405.18392; MiniCPM): one warmup-stable run per
size and a cooldown branch (``--cooldown-fraction`` of its steps, ``--cooldown-shape``) at the
token count of every WSD budget (:func:`wsd_budgets`: the grid's budgets below the largest, each
interval split in ``wsd_splits``; :mod:`experiments.lib.branches`), under ``<--out>/wsd``; the
same approaches 2 and 3 are fitted, and the report sets them beside the grid's (read from
``<--out>``): the compute each method trained, the laws with intervals, and the optimal loss
of the largest grid budget, which the WSD method does not train, predicted by its fits
(approach 3 with its bootstrap interval).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import chinchilla_analysis, lib
from experiments.lib import branches, data_budget
from experiments.lib.report import jsonable
from experiments.lib.study import TABLE
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.counting import param_count, train_flops_per_token
from lm.model.presets import LADDER, ladder_model


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """One isoFLOP study: sizes x budgets and the shared training settings.

    Attributes:
      sizes: ladder names, smallest first.
      budgets: FLOP budgets C (ascending).
      seq_len, batch_size: identical for every run, so each size compiles one train step.
      learning_rate: AdamW peak learning rate (the same for every run). The CPU presets use
        2e-2: of {3e-3, 1e-2, 2e-2}, the best final loss for d16L1, d32L2 and d64L2 at 6e10 FLOPs.
      warmup_fraction: warmup length as a fraction of each run (at least one step).
      min_steps: shortest run allowed; a budget giving the smallest model fewer steps is an error,
        and larger sizes that would get fewer steps at a budget are left out of that budget.
      eval_batches: validation batches of the final evaluation.
      bootstrap: resamples of the approach-3 and approach-2 bootstraps.
      dtype: compute dtype of the models.
      tokens_per_param: optional (low, high): at each budget, train only the sizes whose
        D/N falls in this band (an isoFLOP grid centred on the optimum, as Hoffmann's Fig. 3).
      wsd_splits: ``--method wsd`` trains branches at the budgets below the largest, each
        interval between them split into this many geometric steps (:func:`wsd_budgets`).
    """

    sizes: tuple[str, ...]
    budgets: tuple[float, ...]
    seq_len: int
    batch_size: int
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.05
    min_steps: int = 8
    eval_batches: int = 8
    bootstrap: int = 200
    dtype: str = "float32"
    tokens_per_param: tuple[float, float] | None = None
    wsd_splits: int = 2

    def __post_init__(self):
        unknown = [s for s in self.sizes if s not in LADDER]
        if unknown:
            raise ValueError(f"Preset.sizes={self.sizes}: unknown sizes {unknown}; the ladder has {list(LADDER)}")
        if len(self.sizes) < 3:
            raise ValueError(f"Preset.sizes={self.sizes}: need at least 3 sizes for the isoFLOP parabolas")
        if len(set(self.sizes)) != len(self.sizes) or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"Preset: duplicate sizes or budgets in sizes={self.sizes}, budgets={self.budgets}")
        if not self.budgets or any(not (c > 0) for c in self.budgets):
            raise ValueError(f"Preset.budgets={self.budgets}: must be positive FLOP counts")
        if self.min_steps < 1:
            raise ValueError(f"Preset.min_steps={self.min_steps}: must be >= 1")
        if self.wsd_splits < 1:
            raise ValueError(f"Preset.wsd_splits={self.wsd_splits}: must be >= 1")


PRESETS: dict[str, Preset] = {
    # 3 sizes x 4 budgets of tiny models: seconds per run; the tests run it.
    "smoke": Preset(sizes=("d16L1", "d32L1", "d32L2"), budgets=(3e8, 6e8, 1.2e9, 2.4e9), seq_len=32,
                    batch_size=4, learning_rate=2e-2, min_steps=8, eval_batches=2, bootstrap=20,
                    wsd_splits=1),
    # The README's main job: 5 sizes (8k-150k parameters) x 4 budgets (2e10-1.6e11 FLOPs; four, so
    # that the extrapolation check has three to fit), minutes on a 2-core CPU.
    "default": Preset(sizes=("d16L1", "d32L1", "d32L2", "d48L2", "d64L2"), budgets=(2e10, 4e10, 8e10, 1.6e11),
                      seq_len=128, batch_size=8, learning_rate=2e-2, min_steps=16, eval_batches=8,
                      bootstrap=200),
    # GPU/TPU: 7 sizes (4M-520M parameters) x 5 budgets (1e17-1e19 FLOPs), bf16 compute; each
    # budget trains the sizes given 2 to 500 tokens per parameter (5.8e19 FLOPs: about 40 hours of
    # one H100 at 40% MFU).
    "full": Preset(sizes=("d256L4", "d384L6", "d512L8", "d640L10", "d768L12", "d1024L16", "d1280L20"),
                   budgets=(1e17, 3e17, 1e18, 3e18, 1e19), seq_len=1024, batch_size=128, learning_rate=2e-3,
                   min_steps=200, eval_batches=32, bootstrap=1000, dtype="bfloat16",
                   tokens_per_param=(2.0, 500.0)),
}


def data_config(preset: Preset, source: str) -> DataConfig:
    """The data of every run: the embedded corpus, the known-entropy Markov source, or a prepared directory.

    The synthetic chain (order 2 over 16 symbols: 256 contexts, 4 successors each; 1.60
    bits/byte) is small enough that the default preset's best models come within 0.15 nats
    of its entropy rate, so the fitted E can be set against the truth. (At that scale the
    synthetic loss curves drop through a plateau rather than along a power law, and the fit
    does not identify E; larger budgets are needed for the check to bite.)
    """
    if source != "synthetic":
        return data_budget.base_data(source, seq_len=preset.seq_len, batch_size=preset.batch_size)
    return DataConfig(seq_len=preset.seq_len, batch_size=preset.batch_size, source="synthetic", synthetic_alphabet=16,
                      synthetic_order=2, synthetic_branching=4, synthetic_concentration=1.0)


def run_name(budget: float, size: str) -> str:
    return f"C{budget:.2e}_{size}".replace("+", "")


def _steps(model: ModelConfig, data: DataConfig, budget: float) -> int:
    per_step = train_flops_per_token(model, data.seq_len) * data.batch_size * data.seq_len
    return int(round(budget / per_step))


def build_study(preset: Preset, data: str = "stdlib", preset_name: str = "custom") -> lib.Study:
    """The isoFLOP grid of ``preset`` as a runner Study (budgets x sizes, grid order budget-major).

    Each run: D = steps * batch_size * seq_len tokens with steps = round(C / (f * tokens per
    step)), f the exact training FLOPs per token; cosine schedule over exactly those steps
    with warmup ``warmup_fraction`` of them; 16 loss records per run; checkpoints every
    quarter of the run (and at the end).

    Raises:
      lib.StudyError: a budget gives even the smallest model fewer than ``min_steps``
        steps, or leaves fewer than 3 sizes at that budget (no parabola).
    """
    dcfg = data_config(preset, data)
    models = {s: ladder_model(*LADDER[s], dtype=preset.dtype, vocab_size=data_budget.vocab_size(dcfg))
              for s in preset.sizes}
    smallest = min(preset.sizes, key=lambda s: train_flops_per_token(models[s], preset.seq_len))
    runs, tags, dropped = [], {}, []
    for budget in sorted(preset.budgets):
        kept = 0
        for size in preset.sizes:
            steps = _steps(models[size], dcfg, budget)
            if steps < preset.min_steps:
                if size == smallest:
                    per_step = train_flops_per_token(models[size], preset.seq_len) * preset.batch_size * preset.seq_len
                    raise lib.StudyError(
                        f"budget C={budget:.3g} FLOPs is too small for the smallest model {size} "
                        f"({per_step:.3g} FLOPs per step of {preset.batch_size}x{preset.seq_len} tokens): it gives "
                        f"{steps} steps, fewer than min_steps={preset.min_steps}; the smallest usable budget is "
                        f"{per_step * preset.min_steps:.3g} FLOPs"
                    )
                dropped.append(run_name(budget, size))
                continue
            tpp = steps * dcfg.batch_size * dcfg.seq_len / param_count(models[size])["total"]
            if preset.tokens_per_param and not preset.tokens_per_param[0] <= tpp <= preset.tokens_per_param[1]:
                dropped.append(run_name(budget, size))
                continue
            kept += 1
            log_every = max(1, steps // 16)
            run = RunConfig(
                model=models[size],
                data=dcfg,
                optimizer=OptimizerConfig(learning_rate=preset.learning_rate),
                schedule=ScheduleConfig(kind="cosine", warmup_fraction=preset.warmup_fraction, min_ratio=0.1),
                train=TrainConfig(steps=steps, eval_every=steps, eval_batches=preset.eval_batches,
                                  log_every=log_every, checkpoint_every=4 * log_every, keep_checkpoints=1,
                                  progress=False),
                name=run_name(budget, size),
            )
            runs.append(run)
            tags[run.name] = {"budget": budget, "size": size}
        if kept < 3:
            raise lib.StudyError(
                f"budget C={budget:.3g} FLOPs trains only {kept} of the sizes {preset.sizes} for at least "
                f"min_steps={preset.min_steps} steps; an isoFLOP parabola needs 3: raise the budget or add smaller sizes"
            )
    # FLOP counts for approach 1: 8 per decade from the earliest logged point to the largest run's end
    spend = [r.train.steps * r.data.batch_size * r.data.seq_len * train_flops_per_token(r.model, r.data.seq_len)
             for r in runs]
    c_lo = min(s * r.train.log_every / r.train.steps for s, r in zip(spend, runs))
    c_hi = max(spend)
    n_pts = max(2, int(math.ceil(8 * math.log10(c_hi / c_lo))) + 1)
    loss_at = tuple(c_lo * (c_hi / c_lo) ** (i / (n_pts - 1)) for i in range(n_pts))
    meta = {"preset": preset_name, "data": data, "sizes": list(preset.sizes), "budgets": list(preset.budgets),
            "seq_len": preset.seq_len, "batch_size": preset.batch_size, "learning_rate": preset.learning_rate,
            "dropped_runs": dropped}
    tags = data_budget.with_epoch_tags(runs, tags)
    return lib.Study(name="chinchilla", runs=tuple(runs), tags=tags, meta=meta, loss_at_flops=loss_at,
                        min_steps=preset.min_steps)


def wsd_budgets(preset: Preset) -> tuple[float, ...]:
    """The budgets of ``--method wsd``: the grid's below its largest (held out: predicted, not
    trained), each interval split into ``wsd_splits`` geometric steps (2: 2e10, 2.83e10, 4e10, ...)."""
    grid = sorted(preset.budgets)[:-1]
    if len(grid) < 2:
        raise lib.StudyError(f"--method wsd needs >= 3 budgets (it holds the largest out), got {preset.budgets}")
    k = preset.wsd_splits
    return tuple(lo * (hi / lo) ** (i / k) for lo, hi in zip(grid, grid[1:]) for i in range(k)) + (grid[-1],)


def build_wsd_study(preset: Preset, out: str | Path, data: str = "stdlib", preset_name: str = "custom", *,
                    fraction: float = 0.2, shape: str = "sqrt") -> lib.Study:
    """``--method wsd``: the grid of :func:`wsd_budgets` as one stable run per size and its
    cooldown branches (:func:`experiments.lib.branches.wsd_study`; a branch keeps the grid run's
    name, N, D and C); ``out`` is the WSD study's directory."""
    grid = build_study(preset.replace(budgets=wsd_budgets(preset)), data, preset_name)
    study = branches.wsd_study(grid, out, label=lambda t: t["size"], fraction=fraction, shape=shape,
                               name="chinchilla-wsd")
    meta = {**study.meta, "grid_budgets": list(preset.budgets), "held_out_budget": max(preset.budgets)}
    return dataclasses.replace(study, meta=meta)


# ------------------------------------------------------------------------------- CLI


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _add_args(parser: argparse.ArgumentParser) -> None:
    ladder = ", ".join(f"{k}: {d}x{L}" for k, (d, L) in LADDER.items())
    parser.epilog += f"\nsize ladder (name: d_model x layers): {ladder}"
    parser.add_argument("--sizes", default=None, help=f"comma-separated ladder sizes (override), from {list(LADDER)}")
    parser.add_argument("--budgets", type=_floats, default=None, help="comma-separated FLOP budgets (override)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (override)")
    parser.add_argument("--loss", choices=("val", "train"), default="val",
                        help="fit the final validation loss (default) or the final training loss")
    branches.add_args(parser)


def _overrides(args: argparse.Namespace) -> dict:
    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip()) if args.sizes else None
    return {"sizes": sizes, "budgets": args.budgets or None, "learning_rate": args.learning_rate}


def _build(preset: Preset, args: argparse.Namespace, out: Path) -> lib.Study:
    branches.check_args(args)
    if args.method == "wsd":
        return build_wsd_study(preset, out, args.data, args.preset, fraction=args.cooldown_fraction,
                               shape=args.cooldown_shape)
    return build_study(preset, args.data, args.preset)


def _analyze(study: lib.Study, table, out: Path, preset: Preset, args: argparse.Namespace) -> dict:
    if args.method == "wsd":
        return analyze_wsd(study, table, out, preset, args)
    return chinchilla_analysis.analyze(study, table, out, bootstrap=preset.bootstrap, loss=args.loss)


def predict_optimum(fit: dict, table: pd.DataFrame, budget: float, boot3=None, level: float = 0.95) -> dict:
    """The optimal loss at ``budget`` predicted by a study's fits (``fit``: the numbers of fit.json).

    approach 3: L(N_opt, D_opt) of the law at its exact-FLOPs optimum (chinchilla_analysis.exact_optimum),
    with the percentile interval of the same over ``boot3``'s resamples (``approach3_interval``);
    approach 2: the saturating law L*(C) = E + A C^-alpha fitted to every budget's L* (as in
    IsoflopResult.extrapolation_check) at ``budget``; no interval (3 parameters on a few points)."""
    from scaling import fit_law, laws
    from scaling.bootstrap import percentile_intervals

    f, p = chinchilla_analysis.flops_per_token_of_n(table), fit["approach3"]["params"]

    def optimal_loss(p):  # values floats, or [n, 1] arrays (the resamples)
        with np.errstate(over="ignore", invalid="ignore"):  # a fit run off (A = inf): NaN, said by the report
            opt = chinchilla_analysis.exact_optimum(p, [budget], f)
            return laws.chinchilla(opt["N_opt"], opt["D_opt"], p["E"], p["A"], p["B"], p["alpha"], p["beta"]), opt

    loss, opt = optimal_loss(p)
    res = {"C": float(budget), "approach3": float(np.ravel(loss)[0]), "N_opt": float(opt["N_opt"][0]),
           "D_opt": float(opt["D_opt"][0]), "approach3_interval": [math.nan, math.nan]}
    if boot3 is not None and len(boot3.samples):
        loss = optimal_loss({k: boot3.samples[k].to_numpy(float)[:, None] for k in p})[0][:, 0]
        res["approach3_interval"] = percentile_intervals(pd.DataFrame({"L": loss}), {}, level).loc[
            "L", ["lower", "upper"]].astype(float).tolist()
    o = pd.DataFrame(fit["approach2"]["optima"])
    o = o[np.isfinite(o["L_star"].astype(float))]
    if len(o) >= 3:
        law = fit_law(pd.DataFrame({"C": o["C"].astype(float), "loss": o["L_star"].astype(float)}),
                      law="saturating", init_grid="porian")
        res["approach2"] = float(law.predict(pd.DataFrame({"C": [budget], "loss": [1.0]}))[0])
    return res


def analyze_wsd(study: lib.Study, table, out: Path, preset: Preset, args: argparse.Namespace) -> dict:
    """``--method wsd``: approaches 2 and 3 on the branches (report.md, fit.json), then the
    section beside the grid's results in ``out.parent`` (comparison.json)."""
    kept = [r for r in study.runs if study.tags[r.name]["kind"] == "branch"]
    only = dataclasses.replace(study, runs=tuple(kept), tags={r.name: study.tags[r.name] for r in kept})
    result = chinchilla_analysis.analyze(only, table[table["kind"] == "branch"], out, bootstrap=preset.bootstrap,
                                         loss=args.loss)
    grid = build_study(preset, args.data, args.preset)
    compute, lines = branches.compute_lines(study, grid)
    held = float(study.meta["held_out_budget"])
    pred = predict_optimum(result["fit"], table[table["kind"] == "branch"], held, result["boot3"])
    cmp = {"compute": compute, "held_out": pred, "grid_dir": str(out.parent)}
    lines = ["", "## WSD vs the grid", "", *lines, ""]
    grid_fit = out.parent / "fit.json"
    grid_n = json.loads(grid_fit.read_text()) if grid_fit.exists() else None
    if grid_n is None or grid_n.get("study") != grid.fingerprint() or grid_n.get("loss") != result["fit"]["loss"]:
        lines.append(f"No results of this preset's grid in {out.parent} to set beside these; train them with "
                     f"`python -m experiments.chinchilla --preset {args.preset} --data {args.data} --out {out.parent} "
                     f"--loss {args.loss}` (the default --method grid), then rerun this command with --analysis-only.")
    else:
        w3, g3 = result["fit"]["approach3"], grid_n["approach3"]
        q = {k: (w3["params"][k], w3["intervals"][k], g3["params"][k], g3["intervals"][k])
             for k in ("E", "A", "B", "alpha", "beta")}
        q["a = beta/(alpha+beta)"] = (w3["a"], w3["a_interval"], g3["a"], g3["a_interval"])
        w2, g2 = result["fit"]["approach2"], grid_n["approach2"]
        q["approach 2: a (N_opt ~ C^a)"] = (w2["a"], w2["a_interval"], g2["a"], g2["a_interval"])
        q["approach 2: b (D_opt ~ C^b)"] = (w2["b"], w2["b_interval"], g2["b"], g2["b_interval"])
        cmp["laws"], table_lines = branches.side_by_side(q)
        measured = next((o["L_star"] for o in g2["optima"] if abs(o["C"] / held - 1) < 1e-6), float("nan"))
        lines += [f"Approach 3 (L(N, D), the Chinchilla form) and approach 2 fitted by each method "
                  f"(grid: `{grid_fit}`):", "", *table_lines, "",
                  f"Held-out budget C = {held:.4g} FLOPs (trained by the grid only): its optimal loss L* = "
                  f"{measured:.4f} (the grid's isoFLOP parabola) is predicted by the WSD fits as",
                  *chinchilla_analysis.held_out_lines(pred, measured)]
        ex = grid_n["extrapolation"].get("approach2", {})
        if "L_pred" in ex:
            lines.append(f"- (the grid's own check, its fit without that budget: {ex['L_pred']:.4f}, "
                         f"{100 * ex['L_rel_error']:+.2f}%)")
    (out / "comparison.json").write_text(json.dumps(jsonable(cmp), indent=2))
    with open(result["report"], "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return {**result, "comparison": cmp}


def _summary(result: dict) -> str:
    return (f"table:  {result['out'] / TABLE}\nplots:  "
            + ", ".join(str(p) for p in result["plots"] if p.suffix == ".png") + " (and .svg)")


COMMAND = lib.StudyCommand(
    name="chinchilla", doc=__doc__, presets=PRESETS, build=_build, analyze=_analyze, summary=_summary,
    add_args=_add_args, overrides=_overrides, locate=branches.locate,
    extra_sources=("synthetic (a Markov source of known entropy rate; the report puts the fitted E next to it)",))


def build_parser() -> argparse.ArgumentParser:
    return COMMAND.parser()


def main(argv=None) -> dict:
    """Run the study (or a shard), then the analysis once the whole grid is trained.

    Returns:
      {"out": the study directory, "table": results table, "report": report path or None, ...}.
    """
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
