"""μP transfer and loss prediction: learning-rate sweeps at several widths under SP and μP.

``python -m experiments.mup_transfer --preset smoke|default|full [--family NAME] [--zero-readout | --random-readout] [--seeds K] [--out DIR]``

Tensor Programs V (Yang et al. 2022, arXiv 2203.03466, Fig. 1): under μP the optimal
learning rate stays put as the model widens, under SP it drifts (down). "Research without
Re-search" (Su et al. 2024, arXiv 2304.06875) and MiniCPM's model wind tunnel (Hu et al.
2024, arXiv 2404.06395, Sec. 3): with μP the loss of the wide model is predictable from the
narrow ones.

Grid: widths base x multipliers (smoke {1, 2, 4, 8}; default 16 x {1, 1.5, 2, 3, 4, 6, 8}, half-octave
steps; ``lm.model.parametrization.at_width``; μP's base width = the smallest) x {SP, μP} x peak
learning rates; each (parametrization, width) is one group of the shared runner
(``run_study(groups=...)``) trained as one vmapped program over its learning rates
(:func:`lm.train.sweep.train_vmapped`), with the runner's resume and shards. ``--seeds K``
trains every (width, lr) point from K init seeds (0..K-1), in the same vmapped group (one
group per seed where the step draws from the seed: MoE router jitter); the analysis reads
the mean over seeds, so a point's noise falls as K^-1/2 (README, μP: at the default preset
one seed's noise, about 1 %, is the size of the loss prediction's error).
Schedule: cosine with warmup; AdamW (independent weight decay under μP). ``--zero-readout``:
the μP runs start from Tensor Programs V's zero readout (``model.mup_zero_readout``; untied
heads, i.e. the transformer); ``--random-readout``: from a random readout (``model.mup_zero_readout=false``,
SP's readout at the base width), which trains the wider models to a lower loss (README, μP).

Analysis (reads only the table; :mod:`experiments.mup_transfer_analysis`): per (parametrization,
width) the mean over seeds, the optimal lr and its near-optimal interval; the optimum's drift in
grid steps (μP should stay within one step over 8x width, SP drifts); the widest μP model's loss
predicted by L(N) = E + A N^-alpha fitted to the narrower widths, with a bootstrap interval; and
what both sweeps cost (FLOPs, wall and CPU seconds).

Outputs under ``--out`` (default ``runs/mup_transfer/<preset>``): run directories,
results.csv, optima.csv, compute.csv, report.md, summary.json, transfer.png/svg (loss vs
lr, one curve per width, SP and μP side by side) and prediction.png/svg.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import lib
from experiments.mup_transfer_analysis import compute, drift_steps, optima, predict_widest, seed_means
from lm.model import parametrization
from lm.train import sweep as vmap_sweep
from lm.train.step import uses_step_rng
from lm.model.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.presets import FAMILIES, PARAMETRIZATIONS
from lm.model.presets import mup_family_model as family_model


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """Widths base x multipliers (each an integer width), learning-rate grid (geometric), run length and batch
    shape; ``zero_readout``: the μP runs' ``model.mup_zero_readout`` (None: the model's default, a zero
    readout for an untied head; False: a random readout); ``bootstrap``: resamples of the prediction
    interval; ``seeds``: init seeds per (width, lr) point (1: one run per point, seed 0, as before)."""

    base_width: int
    learning_rates: tuple[float, ...]
    steps: int
    multipliers: tuple[float, ...] = (1, 2, 4, 8)
    num_layers: int = 2
    seq_len: int = 64
    batch_size: int = 8
    warmup_fraction: float = 0.1
    eval_batches: int = 4
    threshold: float = 0.01
    zero_readout: bool | None = None
    bootstrap: int = 200
    seeds: int = 1

    def __post_init__(self):
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"Preset.seeds={self.seeds!r}: an integer >= 1 (init seeds per width and lr)")
        if len(self.learning_rates) < 3 or list(self.learning_rates) != sorted(self.learning_rates):
            raise ValueError(f"Preset.learning_rates={self.learning_rates}: need >= 3, increasing")
        if len(self.multipliers) < 3 or self.multipliers[0] != 1 or list(self.multipliers) != sorted(self.multipliers):
            raise ValueError(f"Preset.multipliers={self.multipliers}: need >= 3 increasing widths starting at the "
                             "base (1)")
        for m in self.multipliers:
            if m * self.base_width != round(m * self.base_width):
                raise ValueError(f"Preset.multipliers: {m} x base_width {self.base_width} is not an integer width")

    @property
    def widths(self) -> tuple[int, ...]:
        """d_model of each width of the grid: base_width x multipliers."""
        return tuple(round(m * self.base_width) for m in self.multipliers)


def _grid(lo: float, n: int, ratio: float = 2.0) -> tuple[float, ...]:
    return tuple(float(f"{lo * ratio**i:.4g}") for i in range(n))


PRESETS: dict[str, Preset] = {
    "smoke": Preset(base_width=16, learning_rates=_grid(8e-3, 6), steps=40, num_layers=2, seq_len=32, batch_size=8,
                    eval_batches=2),
    # 7 widths over 8x (half-octave steps: 6 narrower widths over-determine the 3-parameter L(N)),
    # an octave lr grid wide enough for SP's drift; ~10 CPU minutes per family (README, μP).
    "default": Preset(base_width=16, multipliers=(1, 1.5, 2, 3, 4, 6, 8), learning_rates=_grid(2e-3, 7), steps=200,
                      num_layers=2, seq_len=64, batch_size=16, eval_batches=16),
    "full": Preset(base_width=128, learning_rates=_grid(2.5e-4, 9), steps=4000, num_layers=8, seq_len=512,
                   batch_size=32, eval_batches=32),
}


def build_study(preset: Preset, family: str = "transformer",
                preset_name: str = "custom") -> tuple[lib.Study, tuple[tuple[str, ...], ...]]:
    """The grid as a Study and its vmapped groups (one per parametrization x width: the lr axis)."""
    runs, tags, groups = [], {}, []
    for par in PARAMETRIZATIONS:
        base = family_model(family, preset.base_width, preset.num_layers, par)
        if preset.zero_readout is not None and par == "mup":
            base = dataclasses.replace(base, mup_zero_readout=preset.zero_readout)  # Tensor Programs V, readout only
        for width in preset.widths:
            model = parametrization.at_width(base, width)
            run = RunConfig(
                model=model, data=DataConfig(seq_len=preset.seq_len, batch_size=preset.batch_size),
                optimizer=OptimizerConfig(),
                schedule=ScheduleConfig(kind="cosine", warmup_fraction=preset.warmup_fraction, min_ratio=0.1),
                train=TrainConfig(steps=preset.steps, eval_every=preset.steps, eval_batches=preset.eval_batches,
                                  log_every=max(1, preset.steps // 8), checkpoint_every=preset.steps, progress=False),
                name=f"{family}-{par}-d{model.d_model}",
            )
            for group in _groups(run, preset):
                groups.append(tuple(r.name for r in group))
                for r in group:
                    runs.append(r)
                    tags[r.name] = {"parametrization": par, "family": family, "width": model.d_model,
                                    "lr": r.optimizer.learning_rate, "seed": r.train.seed}
    meta = {"preset": preset_name, "family": family, "base_width": preset.base_width,
            "learning_rates": list(preset.learning_rates), "threshold": preset.threshold, "seeds": preset.seeds}
    return lib.Study(name="mup_transfer", runs=tuple(runs), tags=tags, meta=meta, min_steps=4), tuple(groups)


def _groups(run: RunConfig, preset: Preset) -> list[tuple[RunConfig, ...]]:
    """One (parametrization, width)'s vmapped groups: its learning rates x seeds in one group (names
    ``<name>-lr<lr>``, plus ``-s<seed>`` with seeds > 1), or one group per seed when the step draws
    from the seed (MoE router jitter: :func:`lm.train.sweep.check_sweep`)."""
    if preset.seeds == 1:
        return [vmap_sweep.sweep_runs(run, learning_rates=preset.learning_rates)]
    if uses_step_rng(run):
        return [vmap_sweep.sweep_runs(run, learning_rates=preset.learning_rates, seeds=[s])
                for s in range(preset.seeds)]
    return [vmap_sweep.sweep_runs(run, learning_rates=preset.learning_rates, seeds=range(preset.seeds))]


def saved_study(out: str | Path) -> tuple[lib.Study, Preset]:
    """The study written under ``out`` by a named preset, rebuilt (its family and preset from study.json; with
    or without ``zero_readout``, whichever has the saved grid fingerprint; its seeds from study.json, 1 in
    studies written before seeds), and that preset.

    Raises:
      ValueError: no study.json there, or no preset of this module rebuilds its grid.
    """
    path = Path(out) / "study.json"
    if not path.is_file():
        raise ValueError(f"{path}: no study.json (run python -m experiments.mup_transfer --out {out} first)")
    saved = json.loads(path.read_text())
    meta = saved.get("meta", {})
    name, family, seeds = meta.get("preset"), meta.get("family"), meta.get("seeds", 1)
    if name in PRESETS and family in FAMILIES and isinstance(seeds, int) and seeds >= 1:
        for zero in (False, True, None):  # True and None build the same untied models: True first
            preset = PRESETS[name].replace(zero_readout=zero, seeds=seeds)
            study = build_study(preset, family, name)[0]
            if study.fingerprint() == saved.get("fingerprint"):
                return study, preset
    raise ValueError(f"{path}: preset {name!r}, family {family!r}: no preset of experiments.mup_transfer "
                     "rebuilds this grid (fingerprint differs)")


def analyze(study: lib.Study, table: pd.DataFrame, out: str | Path, *, threshold: float,
            bootstrap: int = 200) -> dict:
    """optima.csv, compute.csv, transfer and prediction plots, report.md (``bootstrap``: resamples of the
    prediction interval)."""
    out = Path(out)
    lrs = sorted(study.meta["learning_rates"])
    opt = optima(table, threshold)
    opt.to_csv(out / "optima.csv", index=False)
    drift = drift_steps(opt, lrs)
    preds = {par: predict_widest(opt, par, n_bootstrap=bootstrap) for par in PARAMETRIZATIONS}
    cost = compute(table)
    cost.to_csv(out / "compute.csv", index=False)

    seeds = int(opt["seeds"].max())
    figures = lib.figures.plot_lr_transfer(seed_means(table), opt, drift, out, PARAMETRIZATIONS)
    figures += lib.figures.plot_loss_prediction(opt, preds, out)

    rows = [(r.parametrization, r.width, r.N, f"{r.lr_opt:.3g}", f"[{r.lr_lo:.3g}, {r.lr_hi:.3g}]",
             _loss_text(r.best_loss, r.best_loss_se), "yes" if r.on_edge else "") for r in opt.itertuples()]
    per_point = ("one run per point (seed 0)" if seeds == 1 else
                 f"{seeds} init seeds per point: losses are their mean, ± its standard error")
    lines = [f"# μP transfer ({study.meta.get('preset')} preset, {study.meta.get('family')})", "",
             f"Optimal learning rate per width (parabola vertex in log lr; interval: runs within "
             f"{100 * threshold:g}% of the best loss), drift of the optimum from the narrowest to the widest width "
             f"in grid steps (grid ratio {lrs[1] / lrs[0]:.3g}); {per_point}.", ""]
    lines += lib.markdown_table(["parametrization", "width", "N", "lr_opt", "near-optimal", "best loss",
                                       "on grid edge"], rows, align="lrrrrrl")
    lines += ["", *[f"- {par}: drift {drift[par]:+.2f} grid steps over "
                    f"{opt['width'].max() // opt['width'].min()}x width" for par in PARAMETRIZATIONS], "",
              "## Loss prediction", "",
              "L(N) = E + A N^-alpha fitted to every width but the widest (best loss over the lr grid), "
              f"predicted at the widest; interval: {preds['mup']['level']:.0%} percentile interval of "
              f"{bootstrap} bootstrap refits (widths resampled):", ""]
    for par in PARAMETRIZATIONS:
        p = preds[par]
        q = p["params"]
        lines.append(f"- {par}: E={q['E']:.3g} A={q['A']:.3g} alpha={q['alpha']:.3g} from {p['points']} widths "
                     f"({'over-determined' if p['points'] > 3 else 'NOT over-determined'}; largest in-sample "
                     f"residual {100 * p['max_residual']:.2f}%); predicted {p['predicted']:.4f} "
                     f"[{p['lower']:.4f}, {p['upper']:.4f}] vs actual {_loss_text(p['actual'], p['actual_se'])} "
                     f"at N={p['N']}: error "
                     f"{100 * p['rel_error']:+.2f}%, interval {'covers' if p['covered'] else 'MISSES'} the observation")
    lines += ["", "## Compute", "",
              "Both runs' cost, summed over their runs (compute.csv; wall and CPU seconds of the process that "
              "trained them, which include the machine's other load):", ""]
    lines += lib.markdown_table(
        ["parametrization", "runs", "FLOPs", "wall s", "CPU s", "compile s", "train s"],
        [(r["parametrization"], r["runs"], f"{r['flops']:.3g}" if np.isfinite(r["flops"]) else "n/a",
          *(f"{r[c]:.0f}" if np.isfinite(r[c]) else "n/a" for c in ("wall_s", "cpu_s", "compile_s", "train_s")))
         for r in cost.to_dict("records")], align="lrrrrrr")
    report = lib.write_report(out, lines, figures)
    summary = {"drift_steps": drift, "prediction": {k: {kk: v for kk, v in p.items() if kk != "fit"}
                                                    for k, p in preds.items()},
               "compute": cost.to_dict("records")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"optima": opt, "drift": drift, "prediction": preds, "compute": cost, "plots": figures, "report": report}


def _loss_text(loss: float, se: float) -> str:
    return f"{loss:.4f}" if not np.isfinite(se) else f"{loss:.4f} ± {se:.4f}"


# ------------------------------------------------------------------------------- CLI


def _add_args(parser) -> None:
    parser.add_argument("--family", default="transformer", choices=FAMILIES, help="the model family")
    readout = parser.add_mutually_exclusive_group()
    readout.add_argument("--zero-readout", action="store_const", const=True, default=None,
                        help="μP runs start from a zero readout (model.mup_zero_readout, Tensor Programs V); "
                             "untied heads only (the transformer)")
    readout.add_argument("--random-readout", dest="zero_readout", action="store_const", const=False,
                        help="μP runs start from a random readout (model.mup_zero_readout=false; SP's at the base "
                             "width); untied heads only (the transformer)")
    seeds = lib.command.integer_at_least(1, "the number of init seeds per width and learning rate")
    parser.add_argument("--seeds", type=seeds, default=None, metavar="K",
                        help="init seeds per width and learning rate (default: the preset's, 1); the analysis "
                             "reads their mean")


def _build(preset: Preset, args) -> tuple[lib.Study, tuple[tuple[str, ...], ...]]:
    """:func:`build_study` for the command line, which refuses ``--random-readout`` for a tied head (it would
    change nothing: the readout is the embedding; ``--zero-readout`` is refused by the model itself)."""
    if preset.zero_readout is False and family_model(args.family, preset.base_width, 1).tie_embeddings:
        raise ValueError(f"--random-readout: family {args.family!r} has a tied head (the embedding is its readout); "
                         "the readout options are for untied heads: --family transformer")
    return build_study(preset, args.family, args.preset)


def _summary(result: dict) -> str:
    lines = []
    for par in PARAMETRIZATIONS:
        pr = result["prediction"][par]
        lines.append(f"{par}: lr drift {result['drift'][par]:+.2f} grid steps; widest loss predicted "
                     f"{pr['predicted']:.4f} [{pr['lower']:.4f}, {pr['upper']:.4f}] vs {pr['actual']:.4f} "
                     f"({100 * pr['rel_error']:+.2f}%)")
    return "\n".join([*lines, result["optima"].to_string(index=False)])


COMMAND = lib.StudyCommand(
    name="mup_transfer", doc=__doc__, presets=PRESETS,
    build=lambda preset, args, out: _build(preset, args),
    analyze=lambda study, table, out, preset, args: analyze(study, table, out, threshold=preset.threshold,
                                                            bootstrap=preset.bootstrap),
    summary=_summary, add_args=_add_args, overrides=lambda args: {"zero_readout": args.zero_readout, "seeds": args.seeds},
    keep_diverged=True)  # high learning rates may diverge


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
