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

from experiments import data_budget, outdir, runner
from experiments.cli import OneLineParser, fail
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
    p = OneLineParser(prog=f"python -m experiments.{study}", description=doc,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets), default="default")
    p.add_argument("--out", default=None, help=f"study directory (default runs/{study}/<preset>)")
    if shard:
        p.add_argument("--shard", default=None, metavar="I/N", help="train only grid[I::N]")
    if bootstrap:
        p.add_argument("--bootstrap", type=bootstrap_count, default=None,
                       help="bootstrap resamples, an integer >= 2 (default: the preset's)")
    p.add_argument("--analysis-only", action="store_true", help="analyse the existing table; train nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    data_budget.add_args(p, max_epochs)
    return p


def out_dir(study: str, args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/<study>/<preset>[-<data dir name>]``."""
    return Path(args.out) if args.out else Path("runs") / study / (args.preset + data_budget.label(args.data))


def bootstrap_count(text: str) -> int:
    """``--bootstrap``'s type: an integer >= 2 (percentile intervals need two resamples)."""
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of bootstrap resamples must be an integer >= 2")
    return n


def check_level(level: float) -> float:
    """An interval coverage in (0, 1), e.g. 0.95; ValueError otherwise."""
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:  # NaN fails the comparison
        raise ValueError(f"level={level!r}: an interval coverage must be in (0, 1), e.g. 0.95")
    return float(level)


@contextlib.contextmanager
def cli_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a ValueError (a bad preset, grid, group, output directory or damaged record, raised
    before any training, :class:`experiments.runner.StudyError` included) into one line on
    stderr and exit code 2."""
    try:
        yield
    except ValueError as err:
        fail(parser.prog, str(err))


def train_and_load(study: runner.Study, out: str | Path, args: argparse.Namespace,
                   groups: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """Train the study (its ``--shard`` if the parser has one; refused over ``--max-epochs``)
    unless ``--analysis-only``, then the study's whole table (:func:`experiments.runner.load_results`).
    ``out`` must be a writable directory (or creatable) either way: the analysis writes its report there."""
    outdir.check_writable_dir(out)
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


def _names(names: Sequence[str], limit: int = 10) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def analysis_table(table: pd.DataFrame, *, keep_diverged: bool = False,
                   require_all: bool = False) -> pd.DataFrame | None:
    """The rows the analysis reads, or None (analysis skipped); prints which runs are missing and why.

    Skipped while runs are "pending" (not trained yet: other shards, or an interrupted sweep)
    or "failed" (unreadable checkpoints: retried by the next call), when no run finished,
    and, with ``require_all``, when any run diverged. Otherwise the finished runs are
    analysed: "diverged" rows are left out (kept with ``keep_diverged``, for analyses that
    read divergence, e.g. the learning-rate landscape) and named.
    """
    status = table["status"] if len(table) else pd.Series([], dtype=str)
    by = {s: table.loc[status == s, "run"].tolist() for s in ("pending", "failed", "diverged", "complete")}
    n = len(table)
    if by["pending"] or by["failed"]:
        parts = []
        if by["pending"]:
            parts.append(f"{len(by['pending'])} of {n} runs pending (not trained yet; other shards or an interrupted "
                         f"sweep: rerun): {_names(by['pending'])}")
        if by["failed"]:
            parts.append(f"{len(by['failed'])} failed (unreadable checkpoints; rerun to retry): {_names(by['failed'])}")
        if by["diverged"]:
            parts.append(f"{len(by['diverged'])} diverged: {_names(by['diverged'])}")
        print("analysis skipped: " + "; ".join(parts))
        return None
    if not by["complete"]:
        print(f"analysis skipped: no run of the {n} finished without diverging")
        return None
    if by["diverged"] and require_all:
        print(f"analysis skipped: {len(by['diverged'])} of {n} runs diverged ({_names(by['diverged'])}) and this "
              "study's analysis needs every run; change the grid (e.g. a lower learning rate)")
        return None
    if by["diverged"]:
        how = "kept in the analysis" if keep_diverged else "left out of the analysis"
        print(f"analysing {len(by['complete'])} of {n} runs; {len(by['diverged'])} diverged ({how}): "
              f"{_names(by['diverged'])}")
        if not keep_diverged:
            return table[status == "complete"].reset_index(drop=True)
    return table


def note_left_out(report: str | Path | None, table: pd.DataFrame) -> None:
    """Append to ``report`` (report.md) a section naming the runs that diverged, if any."""
    if report is None or not len(table):
        return
    diverged = table.loc[table["status"] == "diverged", "run"].tolist()
    if not diverged:
        return
    lines = ["", "## Diverged runs", "",
             f"{len(diverged)} of {len(table)} runs diverged (non-finite loss) and have no final loss: "
             + ", ".join(f"`{r}`" for r in diverged) + ".", ""]
    with open(report, "a") as f:
        f.write("\n".join(lines))


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
