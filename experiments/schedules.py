"""The loss-curve study: schedule-aware laws fitted on three curves, predicting the others.

``python -m experiments.schedules [--preset smoke|default|full] [--out DIR]``

At one model size, trains the learning-rate schedules of Luo et al. 2025 ("A Multi-Power Law
for Loss Curve Prediction Across Learning Rate Schedules", arXiv:2503.12811, Sec. 4) and
Tissue et al. 2024 (arXiv:2408.11029), all with the same warmup, peak and data:

  constant             warmup then the peak for ``steps`` steps; also the STABLE run every
                       branch below restores from (a checkpoint at every branch point);
  cosine-L<L>          cosine to ``min_ratio`` over L steps, at the long and the short length
                       (separate runs: a cosine's shape depends on its length);
  wsd-exp-L<L>,        WSD branches (Hu et al. 2024): restore the constant run at
  wsd-lin-L<L>         s = L - round(decay_fraction L) (TrainConfig.init_from) and cool down
                       exponentially / linearly to ``min_ratio`` at step L;
  two-stage-<s>        branches that drop the LR to ``ratio`` of the peak at step s (decay shape
                       "step") and train on at that LR to ``steps``.

Shorter runs share their prefix with the longer ones: a branch trains only its steps after
the branch point, so no step is trained twice. The loss curve of a run is its metrics.jsonl
``train_loss`` at every ``log_every`` steps (``scaling.run_curves.read_runs``; a branch's curve
is the steps it trained).

The analysis (:mod:`experiments.schedules_analysis`) fits both laws (``scaling.fit_curves``:
multi_power, lr_annealing) on three curves (constant, the long cosine, the long exponential
WSD) and predicts the others: PredE and WorstE per law and per curve, the fitted parameters
with run-bootstrap intervals, the observed vs predicted curves. It then optimises the schedule
of the long length under the fitted multi-power law (``scaling.optimize_schedule``, Luo et al.
Sec. 5), compresses it to ``knots`` knots (ScheduleConfig kind "table", linear between knots),
TRAINS it (under ``<out>/optimised-<fingerprint>``, unless ``--analysis-only``) and compares its
observed final loss with the prediction and with the cosine and WSD runs.

Outputs under ``--out`` (default ``runs/schedules/<preset>``): run directories, results.csv,
curve_errors.csv, params.csv, predictions.csv, optimised.csv, report.md, curves.png/svg and
optimal_schedule.png/svg.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from experiments import lib, schedules_analysis
from experiments.lib import data_budget
from lm.model.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.model.presets import LADDER, ladder_model

STABLE = schedules_analysis.STABLE


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """One loss-curve study.

    Attributes:
      size: ladder model name (lm.model.presets.LADDER).
      steps: the long length L; short_steps: the short length (cosine and exponential WSD).
      seq_len, batch_size, eval_batches: shared by every run.
      log_every: steps per curve point (every branch point must be a multiple of it).
      warmup_steps, learning_rate, min_ratio: warmup, peak and final ratio of every schedule.
      decay_fraction: WSD cooldown length as a fraction of the run.
      two_stage: (switch step, LR ratio after it) of each two-stage schedule of length L.
      bootstrap: run-bootstrap resamples of the parameter intervals.
      knots: knots of the trained optimised schedule.
    """

    size: str
    steps: int
    short_steps: int
    seq_len: int
    batch_size: int
    log_every: int
    warmup_steps: int
    two_stage: tuple[tuple[int, float], ...]
    learning_rate: float = 1e-2
    min_ratio: float = 0.1
    decay_fraction: float = 0.2
    eval_batches: int = 4
    bootstrap: int = 100
    knots: int = 32
    dtype: str = "float32"

    def __post_init__(self):
        if self.size not in LADDER:
            raise ValueError(f"Preset.size={self.size!r}: allowed sizes are {list(LADDER)}")
        if not 0 < self.short_steps < self.steps:
            raise ValueError(f"Preset.short_steps={self.short_steps}: must be in (0, steps={self.steps})")
        if not 0.0 < self.decay_fraction < 1.0:
            raise ValueError(f"Preset.decay_fraction={self.decay_fraction}: must be in (0, 1)")
        if self.knots < 2:
            raise ValueError(f"Preset.knots={self.knots}: need >= 2")
        for s in self.branch_points():
            if not self.warmup_steps < s < self.steps or s % self.log_every:
                raise ValueError(f"Preset: branch point {s} must lie after the warmup ({self.warmup_steps} steps), "
                                 f"before step {self.steps}, and be a multiple of log_every={self.log_every}")

    def wsd_start(self, length: int) -> int:
        """The step at which the WSD cooldown of a ``length``-step run leaves the constant run."""
        return length - round(self.decay_fraction * length)

    def branch_points(self) -> list[int]:
        return [self.wsd_start(self.steps), self.wsd_start(self.short_steps), *(s for s, _ in self.two_stage)]


PRESETS: dict[str, Preset] = {
    # seconds: a 16-wide 1-layer model, 200 steps, a curve point every 2 steps (100 per long run)
    "smoke": Preset(size="d16L1", steps=200, short_steps=100, seq_len=64, batch_size=32, log_every=4,
                    warmup_steps=10, two_stage=((80, 0.3), (120, 0.1)), learning_rate=2e-2, eval_batches=2,
                    bootstrap=16),
    # minutes on a 2-core CPU: a 64-wide 2-layer model, 1000 steps, 100 points per long run
    "default": Preset(size="d64L2", steps=1000, short_steps=500, seq_len=128, batch_size=8, log_every=10,
                      warmup_steps=50, two_stage=((400, 0.3), (600, 0.1)), learning_rate=1e-2, eval_batches=8),
    # GPU/TPU: a 4M-parameter model, 20k steps
    "full": Preset(size="d256L4", steps=20000, short_steps=10000, seq_len=1024, batch_size=64, log_every=100,
                   warmup_steps=500, two_stage=((8000, 0.3), (12000, 0.1)), learning_rate=3e-3,
                   eval_batches=32, dtype="bfloat16"),
}


def _gcd(values) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, int(v))
    return out


def _base(preset: Preset, data: str):
    data_cfg = data_budget.base_data(data, seq_len=preset.seq_len, batch_size=preset.batch_size)
    model = data_budget.replace_vocab(ladder_model(*LADDER[preset.size], dtype=preset.dtype), data_cfg)
    return model, data_cfg


def _train(preset: Preset, steps: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, eval_every=steps, eval_batches=preset.eval_batches, log_every=preset.log_every,
                       checkpoint_every=kw.pop("checkpoint_every", steps), keep_checkpoints=kw.pop("keep", 1),
                       progress=False, **kw)


def _schedule(preset: Preset, kind: str, **kw) -> ScheduleConfig:
    return ScheduleConfig(kind=kind, warmup_steps=preset.warmup_steps, min_ratio=kw.pop("min_ratio", preset.min_ratio),
                          **kw)


def build_study(preset: Preset, out: str | Path, preset_name: str = "custom", *, data: str = "stdlib") -> lib.Study:
    """The grid: the constant (stable) run, two cosine runs, WSD and two-stage branches of it.

    ``out`` is needed because each branch's ``train.init_from`` names the constant run's
    directory (``<out>/runs/constant``, absolute).
    """
    model, data_cfg = _base(preset, data)
    opt = OptimizerConfig(learning_rate=preset.learning_rate)
    L, short = preset.steps, preset.short_steps
    stable = RunConfig(model=model, data=data_cfg, optimizer=opt, schedule=_schedule(preset, "constant"),
                       train=_train(preset, L, checkpoint_every=_gcd(preset.branch_points()), keep=None),
                       name=STABLE)
    stable_dir = str(lib.run_dir(Path(out).resolve(), stable))
    runs = [stable]
    tags = {STABLE: {"kind": "constant", "length": L, "branch_point": 0, "fitted": True}}

    def add(name, kind, length, schedule, branch_point=0, fitted=False):
        init = (stable_dir, branch_point) if branch_point else None
        runs.append(RunConfig(model=model, data=data_cfg, optimizer=opt, schedule=schedule,
                              train=_train(preset, length, init_from=init), name=name))
        tags[name] = {"kind": kind, "length": length, "branch_point": branch_point, "fitted": fitted}

    for length in (L, short):
        add(f"cosine-L{length}", "cosine", length, _schedule(preset, "cosine"), fitted=length == L)
    for shape, lengths in (("exponential", (L, short)), ("linear", (L,))):
        for length in lengths:
            s = preset.wsd_start(length)
            add(f"wsd-{shape[:3]}-L{length}", f"wsd-{shape[:3]}", length,
                _schedule(preset, "wsd", decay_start=s, decay_shape=shape), s,
                fitted=shape == "exponential" and length == L)
    for s, ratio in preset.two_stage:
        add(f"two-stage-{s}", "two-stage", L,
            _schedule(preset, "wsd", decay_start=s, decay_shape="step", min_ratio=ratio), s)
    meta = {"preset": preset_name, **dataclasses.asdict(preset)}
    meta["two_stage"] = [list(t) for t in preset.two_stage]
    return lib.Study(name="schedules", runs=tuple(runs), tags=data_budget.with_epoch_tags(runs, tags), meta=meta)


# ------------------------------------------------------------------------------- CLI


def _analyze(study, table, out, preset, args):
    return schedules_analysis.analyze(study, table, out, preset, bootstrap=preset.bootstrap,
                                      train=not args.analysis_only, progress=not args.no_progress)


def _summary(result: dict) -> str:
    return schedules_analysis.summary(result)


COMMAND = lib.StudyCommand(
    name="schedules", doc=__doc__, presets=PRESETS,
    build=lambda preset, args, out: build_study(preset, out, args.preset, data=args.data),
    analyze=_analyze, summary=_summary,
    shard=False,  # the branches need the constant run's checkpoints: one process trains the grid in order
    require_all=True)  # the fit and the predictions need every curve


def build_parser():
    return COMMAND.parser()


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
