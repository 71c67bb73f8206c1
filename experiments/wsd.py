"""Warmup-Stable-Decay: a whole data-scaling curve from one run, vs cosine runs of each length.

``python -m experiments.wsd [--preset smoke|default|full] [--out DIR]``

Hu et al. 2024, "MiniCPM" (arXiv:2404.06395), Sec. 4: with a WSD schedule the stable phase
(constant learning rate after warmup) does not depend on the run length, so ONE stable run
with checkpoints at several token counts, each continued by a short decay branch (here the
last ``decay_fraction`` of the branch's length, linear to ``min_ratio`` of the peak, MiniCPM's
~10-20%), gives the final losses of runs of every length. The study trains:

  stable           constant lr after ``warmup_steps``, up to the last branch point, with a
                   checkpoint at every branch point s_i = L_i - round(decay_fraction * L_i);
  wsd-L<L_i>       decay branch: restores the stable run at s_i (TrainConfig.init_from: params,
                   optimiser and data-iterator state) and decays over steps s_i .. L_i;
  cosine-L<L_i>    a separately trained cosine run of L_i steps (same warmup, same floor),
                   the Chinchilla recipe (cosine length matched to the run).

All runs share model, data and batch shape (one compiled step). The analysis reports, per
length, the loss gap wsd - cosine (final validation loss), and the FLOPs of the WSD curve
(stable + all decay branches) against the FLOPs of all cosine runs; a saturating law
L(D) = E + A D^-alpha (``scaling.fit_law``) is fitted to both curves when there are >= 4 lengths.

Outputs under ``--out`` (default ``runs/wsd/<preset>``): run directories, results.csv,
curves.csv, report.md, loss_curves.png/svg and data_scaling.png/svg.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pandas as pd

from experiments import lib
from experiments.lib import branches, data_budget
from experiments.lib.study import CURVES
from lm.model.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.model.presets import LADDER, ladder_model


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """One WSD-vs-cosine study.

    Attributes:
      size: ladder model name (lm.model.presets.LADDER).
      lengths: run lengths L_i in steps (ascending); each branch point s_i must be a multiple
        of ``checkpoint_unit`` so the stable run saves there.
      decay_fraction: decay length of a branch as a fraction of its run length.
      warmup_steps: absolute warmup of every run (identical, so the phases line up).
      learning_rate, min_ratio: peak and floor (fraction of peak) of both schedules.
      seq_len, batch_size, eval_batches: shared by every run.
    """

    size: str
    lengths: tuple[int, ...]
    seq_len: int
    batch_size: int
    decay_fraction: float = 0.2
    warmup_steps: int = 4
    learning_rate: float = 1e-2
    min_ratio: float = 0.1
    eval_batches: int = 4
    dtype: str = "float32"  # compute dtype (parameters stay float32)

    def __post_init__(self):
        if self.size not in LADDER:
            raise ValueError(f"Preset.size={self.size!r}: allowed sizes are {list(LADDER)}")
        if len(self.lengths) < 2 or list(self.lengths) != sorted(set(self.lengths)):
            raise ValueError(f"Preset.lengths={self.lengths}: need >= 2 distinct lengths in ascending order")
        if not 0.0 < self.decay_fraction < 1.0:
            raise ValueError(f"Preset.decay_fraction={self.decay_fraction}: must be in (0, 1)")
        for length in self.lengths:
            if self.branch_point(length) <= self.warmup_steps:
                raise ValueError(f"Preset.lengths: length {length} decays from step {self.branch_point(length)}, "
                                 f"not after the warmup of {self.warmup_steps} steps; use longer runs")

    def branch_point(self, length: int) -> int:
        """s_i: the step at which the decay branch of a length-``length`` run leaves the stable run."""
        return length - round(self.decay_fraction * length)


PRESETS: dict[str, Preset] = {
    # seconds: 3 lengths of a 16-wide 1-layer model
    "smoke": Preset(size="d16L1", lengths=(15, 30, 45), seq_len=32, batch_size=4, decay_fraction=0.2,
                    warmup_steps=2, learning_rate=2e-2, eval_batches=2),
    # minutes on a 2-core CPU: 5 lengths (100 to 500 steps) of a 64-wide 2-layer model
    "default": Preset(size="d64L2", lengths=(100, 200, 300, 400, 500), seq_len=128, batch_size=8,
                      decay_fraction=0.2, warmup_steps=10, learning_rate=1e-2, eval_batches=8),
    # GPU/TPU: a 4M-parameter model from 2k to 32k steps
    "full": Preset(size="d256L4", lengths=(2000, 4000, 8000, 16000, 32000), seq_len=1024, batch_size=64,
                   decay_fraction=0.1, warmup_steps=500, learning_rate=3e-3, eval_batches=32,
                   dtype="bfloat16"),
}


def _gcd(values) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, int(v))
    return out


def build_study(preset: Preset, out: str | Path, preset_name: str = "custom", *, data: str = "stdlib") -> lib.Study:
    """The grid: the stable run, one decay branch per length, one cosine run per length.

    ``out`` is needed because each branch's ``train.init_from`` names the stable run's
    directory (``<out>/runs/stable``; resolved to an absolute path).
    """
    data = data_budget.base_data(data, seq_len=preset.seq_len, batch_size=preset.batch_size)
    model = data_budget.replace_vocab(ladder_model(*LADDER[preset.size], dtype=preset.dtype), data)
    opt = OptimizerConfig(learning_rate=preset.learning_rate)
    points = [preset.branch_point(n) for n in preset.lengths]
    s_max = max(points)

    def train_cfg(steps: int, **kw) -> TrainConfig:
        log_every = max(1, min(steps, preset.lengths[0]) // 10)
        return TrainConfig(steps=steps, eval_every=steps, eval_batches=preset.eval_batches, log_every=log_every,
                           checkpoint_every=kw.pop("checkpoint_every", steps), keep_checkpoints=kw.pop("keep", 1),
                           progress=False, **kw)

    stable = RunConfig(model=model, data=data, optimizer=opt,
                       schedule=ScheduleConfig(kind="constant", warmup_steps=preset.warmup_steps),
                       train=train_cfg(s_max, checkpoint_every=_gcd(points), keep=None), name="stable")
    stable_dir = str(lib.run_dir(Path(out).resolve(), stable))
    runs, tags = [stable], {"stable": {"kind": "stable", "length": s_max, "branch_point": 0}}
    for length, s in zip(preset.lengths, points):
        name = f"wsd-L{length}"
        runs.append(RunConfig(
            model=model, data=data, optimizer=opt,
            schedule=ScheduleConfig(kind="wsd", warmup_steps=preset.warmup_steps, decay_start=s,
                                    decay_shape="linear", min_ratio=preset.min_ratio),
            train=train_cfg(length, init_from=(stable_dir, s)), name=name))
        tags[name] = {"kind": "wsd", "length": length, "branch_point": s}
    for length in preset.lengths:
        name = f"cosine-L{length}"
        runs.append(RunConfig(
            model=model, data=data, optimizer=opt,
            schedule=ScheduleConfig(kind="cosine", warmup_steps=preset.warmup_steps, min_ratio=preset.min_ratio),
            train=train_cfg(length), name=name))
        tags[name] = {"kind": "cosine", "length": length, "branch_point": 0}
    meta = {"preset": preset_name, **{k: v for k, v in dataclasses.asdict(preset).items()}}
    meta["lengths"] = list(preset.lengths)
    return lib.Study(name="wsd", runs=tuple(runs), tags=data_budget.with_epoch_tags(runs, tags), meta=meta)


# --------------------------------------------------------------------------- analysis


def flops_accounting(study: lib.Study) -> dict[str, float]:
    """FLOPs of the WSD curve (stable run + decay branches) vs all cosine runs.

    Each run counts the steps it trains (:func:`experiments.lib.branches.trained_flops`, the
    accounting of ``--method wsd``): a branch restored at step s_i of an L_i-step run only
    its L_i - s_i steps.
    """
    by_kind = {"stable": 0.0, "wsd": 0.0, "cosine": 0.0}
    for run in study.runs:
        by_kind[study.tags[run.name]["kind"]] += branches.trained_flops(run)
    stable, wsd, cosine = by_kind["stable"], by_kind["wsd"], by_kind["cosine"]
    return {"wsd_flops": stable + wsd, "cosine_flops": cosine,
            "flops_saved": 1.0 - (stable + wsd) / cosine, "stable_flops": stable, "branch_flops": wsd}


def loss_gaps(table: pd.DataFrame, loss: str = "final_val_loss") -> pd.DataFrame:
    """Per length: D (tokens), the wsd and cosine losses, gap = wsd - cosine and gap / cosine."""
    w = table[table["kind"] == "wsd"].set_index("length")
    c = table[table["kind"] == "cosine"].set_index("length")
    out = pd.DataFrame({"D": c["D"], "wsd": w[loss], "cosine": c[loss]})
    out["gap"] = out["wsd"] - out["cosine"]
    out["relative_gap"] = out["gap"] / out["cosine"]
    return out.sort_index()


def analyze(study: lib.Study, table: pd.DataFrame, out: str | Path, loss: str = "final_val_loss") -> dict:
    """Loss gaps, FLOPs saved, optional L(D) fits; plots and report.md under ``out``."""
    out = Path(out)
    table = table[table["status"] == "complete"]
    gaps = loss_gaps(table, loss)
    acct = flops_accounting(study)
    fits = {}
    if len(gaps) >= 4:
        from scaling import fit_law

        from scaling.diagnostics import fit_warnings

        warned = {}
        for kind in ("wsd", "cosine"):
            df = pd.DataFrame({"D": gaps["D"].to_numpy(float), "loss": gaps[kind].to_numpy(float)})
            fit = fit_law(df, law="offset_d")  # L(D) = E + A D^-alpha
            fits[kind], warned[kind] = fit.params, fit_warnings(fit)
    curves = pd.read_csv(out / CURVES) if (out / CURVES).exists() else pd.DataFrame()

    figures = lib.figures.plot_wsd_curves(curves, int(gaps.index[-1]), out)
    figures += lib.figures.plot_wsd_data_scaling(gaps, fits, out, loss)

    lines = [
        f"# WSD vs cosine ({study.meta.get('preset')} preset)", "",
        "Hu et al. 2024 (MiniCPM, arXiv:2404.06395) Sec. 4: decay branches from one stable run vs "
        "separately trained cosine runs of the same lengths. Loss: " + loss + ".", "",
    ]
    lines += lib.markdown_table(
        ["steps", "tokens D", "WSD", "cosine", "gap (WSD - cosine)", "relative gap"],
        [(length, f"{r['D']:.3g}", f"{r['wsd']:.4f}", f"{r['cosine']:.4f}", f"{r['gap']:+.4f}",
          f"{100 * r['relative_gap']:+.2f}%") for length, r in gaps.iterrows()], align="rrrrrr")
    lines += [
        "",
        f"FLOPs of the whole WSD curve (stable {acct['stable_flops']:.3g} + branches {acct['branch_flops']:.3g}): "
        f"{acct['wsd_flops']:.3g}; of the {len(gaps)} cosine runs: {acct['cosine_flops']:.3g}; "
        f"**saved: {100 * acct['flops_saved']:.1f}%**.", "",
    ]
    for kind, p in fits.items():
        lines.append(f"- {kind}: L(D) = {p['E']:.3f} + {p['A']:.3g} D^-{p['alpha']:.3f}")
    if fits:
        from scaling.diagnostics import markdown

        for kind in fits:
            lines += ["", *markdown(warned[kind], f"Warnings, L(D) fit of {kind}")]
    report = lib.write_report(out, lines, figures)
    return {"gaps": gaps, "flops": acct, "fits": fits, "plots": figures, "report": report}


# ------------------------------------------------------------------------------- CLI


def _add_args(parser) -> None:
    parser.add_argument("--loss", choices=("val", "train"), default="val",
                        help="compare the final validation loss (default) or the final training loss")


def _summary(result: dict) -> str:
    return (result["gaps"].to_string()
            + f"\nFLOPs saved by the WSD curve: {100 * result['flops']['flops_saved']:.1f}%")


COMMAND = lib.StudyCommand(
    name="wsd", doc=__doc__, presets=PRESETS,
    build=lambda preset, args, out: build_study(preset, out, args.preset, data=args.data),
    analyze=lambda study, table, out, preset, args: analyze(study, table, out, loss=f"final_{args.loss}_loss"),
    summary=_summary, add_args=_add_args, shard=False, bootstrap=False,
    require_all=True)  # the gaps need every branch


def build_parser():
    return COMMAND.parser()


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
