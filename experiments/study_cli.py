"""The command line and report plumbing shared by the study modules.

``experiments.architectures``, ``data_constrained``, ``lr_scaling`` and ``wsd`` share one
shape of ``main``:

  parser = study_parser("wsd", __doc__, PRESETS)       # --preset --out --analysis-only ...
  args = parser.parse_args(argv)
  out = out_dir("wsd", args)                           # default runs/<study>/<preset>
  with cli_errors(parser):                             # a bad grid or --out: usage error
      study = build_study(...)
      table = train_and_load(study, out, args)         # runner.run_study unless --analysis-only
  if not analysis_ready(table): return ...
  figures = save_figure(fig, out, "loss_curves")       # PNG and SVG
  write_report(out, lines, figures)                    # report.md with the figures linked

``experiments.chinchilla`` keeps its own richer command line (shard tables, overrides).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from experiments import data_budget, runner
from lm.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data import DataConfig


def study_parser(study: str, doc: str | None, presets: Mapping[str, object], *, shard: bool = False,
                 bootstrap: bool = False, max_epochs: float = data_budget.DEFAULT_MAX_EPOCHS) -> argparse.ArgumentParser:
    """``python -m experiments.<study>``'s parser with the shared flags.

    Always: ``--preset`` (one of ``presets``, default "default"), ``--out``,
    ``--analysis-only``, ``--no-progress``, ``--data`` and ``--max-epochs`` (default
    ``max_epochs``; :mod:`experiments.data_budget`); ``--shard I/N`` and ``--bootstrap N`` where asked.
    The study adds its own flags to the returned parser.
    """
    p = argparse.ArgumentParser(prog=f"python -m experiments.{study}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets), default="default")
    p.add_argument("--out", default=None, help=f"study directory (default runs/{study}/<preset>)")
    if shard:
        p.add_argument("--shard", default=None, metavar="I/N", help="train only grid[I::N]")
    if bootstrap:
        p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: the preset's)")
    p.add_argument("--analysis-only", action="store_true", help="analyse the existing table; train nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    data_budget.add_args(p, max_epochs)
    return p


def out_dir(study: str, args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/<study>/<preset>[-<data dir name>]``."""
    return Path(args.out) if args.out else Path("runs") / study / (args.preset + data_budget.label(args.data))


@contextlib.contextmanager
def cli_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a ValueError (a bad preset, grid, group or output directory: raised before any
    training, :class:`experiments.runner.StudyError` included) into a usage error."""
    try:
        yield
    except ValueError as err:
        parser.error(str(err))


def train_and_load(study: runner.Study, out: str | Path, args: argparse.Namespace,
                   groups: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """Train the study (its ``--shard`` if the parser has one; refused over ``--max-epochs``)
    unless ``--analysis-only``, then the study's whole table (:func:`experiments.runner.load_results`)."""
    if not args.analysis_only:
        data_budget.check_epochs(study.runs, args.max_epochs)
        shard = runner.parse_shard(getattr(args, "shard", None))
        runner.run_study(study, out, shard=shard, progress=not args.no_progress, groups=groups)
    return runner.load_results(study, out)


def cosine_run(name: str, model: ModelConfig, data: DataConfig, *, steps: int, learning_rate: float,
               eval_batches: int) -> RunConfig:
    """One grid point trained with the Chinchilla recipe (Hoffmann et al. 2022, Sec. 3):
    AdamW, cosine decay matched to the run's ``steps`` (5% warmup, floor 0.1 of the peak),
    one evaluation and one checkpoint at the end, 8 log records."""
    return RunConfig(
        model=model, data=data, optimizer=OptimizerConfig(learning_rate=learning_rate),
        schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.05, min_ratio=0.1),
        train=TrainConfig(steps=steps, eval_every=steps, eval_batches=eval_batches, log_every=max(1, steps // 8),
                          checkpoint_every=steps, keep_checkpoints=1, progress=False),
        name=name)


def analysis_ready(table: pd.DataFrame, *, allow_diverged: bool = False) -> bool:
    """True when every run is finished ("complete", or also "diverged" if allowed); else say
    why the analysis is skipped."""
    if allow_diverged:
        if (table["status"] == "pending").any():
            print("some runs are pending (other shards?); analysis skipped")
            return False
    elif (table["status"] != "complete").any():
        print("some runs are not complete; analysis skipped")
        return False
    return True


def save_figure(fig, out: str | Path, name: str) -> list[Path]:
    """Save a matplotlib figure as ``out/<name>.png`` and ``out/<name>.svg``; their paths."""
    paths = [Path(out) / f"{name}.png", Path(out) / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    return paths


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """Lines of a markdown table; ``align`` has one letter per column, "l" or "r"."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align={align!r}: one of 'l'/'r' per column of {list(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def write_report(out: str | Path, lines: Sequence[str], figures: Sequence[Path] = ()) -> Path:
    """Write ``out/report.md``: the lines, then a link to every PNG of ``figures``."""
    path = Path(out) / "report.md"
    body = [*lines, "", *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], ""]
    path.write_text("\n".join(body))
    return path
