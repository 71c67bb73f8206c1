"""The command line of every study: one parser, one ``main``.

A study module is a grid, an analysis and a few lines of command line::

    COMMAND = lib.StudyCommand(name="wsd", doc=__doc__, presets=PRESETS, build=_build, analyze=_analyze)

    def main(argv=None) -> dict:
        return COMMAND.main(argv)

:meth:`StudyCommand.main` parses the shared flags (:func:`study_parser`), builds the study from the
chosen preset, trains it (or its ``--shard``) with :func:`experiments.lib.sweep.run_study`
unless ``--analysis-only``, loads the whole table (merging ``--tables`` from other hosts),
and, once every run is finished (:func:`experiments.lib.report.analysis_table`), writes the
merged ``results.csv``, runs the analysis and appends the data and diverged-run sections to
its report. Everything refused before training (a bad flag, preset, grid, group, output
directory or damaged record) is one line on stderr and exit code 2; so is a stop (SIGTERM,
Ctrl-C), a full disk or a run in use by another process, with the codes of
:data:`experiments.lib.cli.EXIT_CODES` (in ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.lib import data_budget, outdir, report, sweep
from experiments.lib.cli import EXIT_CODES, OneLineParser, fail, training
from experiments.lib.preset import Preset, presets_epilog
from experiments.lib.study import TABLE, Study, parse_shard, table_path
from experiments.lib.table import write_table

Build = Callable[[Preset, argparse.Namespace, Path], "Study | tuple[Study, Sequence[Sequence[str]]]"]
Analyze = Callable[[Study, pd.DataFrame, Path, Preset, argparse.Namespace], dict]


def base_parser(study: str, doc: str | None, presets: Mapping[str, object]) -> OneLineParser:
    """``python -m experiments.<study>``'s parser with ``--preset`` (default "default"), ``--out``
    and ``--no-progress``; the presets are listed in ``--help`` when they are :class:`Preset`\\ s."""
    epilog = presets_epilog(presets) if all(isinstance(p, Preset) for p in presets.values()) else None
    p = OneLineParser(prog=f"python -m experiments.{study}", description=doc, epilog=epilog,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets), default="default",
                   help="the grid's size: smoke (seconds; tests and CI), default (minutes on a 2-core CPU), full "
                        "(GPU/TPU), where the study has it (default: default)")
    p.add_argument("--out", default=None, help=f"study directory (default runs/{study}/<preset>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def study_parser(study: str, doc: str | None, presets: Mapping[str, object], *, shard: bool = False,
                 bootstrap: bool = False, max_epochs: float = data_budget.DEFAULT_MAX_EPOCHS,
                 extra_sources: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of a study trained by the runner: :func:`base_parser`'s flags, ``--analysis-only``,
    ``--skip-analysis``, ``--data`` and ``--max-epochs`` (default ``max_epochs``;
    :mod:`experiments.lib.data_budget`); ``--shard I/N`` with ``--tables`` and ``--bootstrap N``
    where asked. The study adds its own flags to the returned parser."""
    p = base_parser(study, doc, presets)
    p.epilog = f"{p.epilog}\n\n{EXIT_CODES}" if p.epilog else EXIT_CODES
    if shard:
        p.add_argument("--shard", default=None, metavar="I/N",
                       help="train only the I-th of N disjoint slices of the grid (0-based), e.g. for a job array; "
                            "the analysis runs once every run of the grid is found")
        p.add_argument("--tables", nargs="*", default=(), metavar="CSV",
                       help="shard tables from other hosts to merge before the analysis")
    if bootstrap:
        p.add_argument("--bootstrap", type=bootstrap_count, default=None,
                       help="bootstrap resamples, an integer >= 2 (default: the preset's)")
    p.add_argument("--analysis-only", action="store_true", help="analyse the existing table; train nothing")
    p.add_argument("--skip-analysis", action="store_true", help="train only")
    data_budget.add_args(p, max_epochs, extra_sources)
    return p


def out_dir(study: str, args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/<study>/<preset>[-<data dir name>]``."""
    data = getattr(args, "data", "stdlib")
    return Path(args.out) if args.out else Path("runs") / study / (args.preset + data_budget.label(data))


def integer_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``, refused with "'TEXT': WHAT must be an integer >= LOW"."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be an integer >= {low}")
        return n

    return parse


# ``--bootstrap``'s type: percentile intervals need two resamples
bootstrap_count = integer_at_least(2, "the number of bootstrap resamples")


@contextlib.contextmanager
def cli_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a ValueError (a bad preset, grid, group, output directory or damaged record, raised
    before any training, :class:`experiments.lib.study.StudyError` included) into one line on
    stderr and exit code 2."""
    try:
        yield
    except ValueError as err:
        fail(parser.prog, str(err))


def train_and_load(study: Study, out: str | Path, args: argparse.Namespace,
                   groups: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """Train the study (its ``--shard`` if the parser has one; refused over ``--max-epochs``)
    unless ``--analysis-only``, then the study's whole table (:func:`experiments.lib.sweep.load_results`,
    with ``--tables``). ``out`` must be a writable directory (or creatable) either way: the
    analysis writes its report there."""
    outdir.check_writable_dir(out)
    data_budget.check_reads(study.runs, getattr(args, "data", "stdlib"))
    if not args.analysis_only:
        data_budget.check_epochs(study.runs, args.max_epochs)
        shard = parse_shard(getattr(args, "shard", None))
        sweep.run_study(study, out, shard=shard, progress=not args.no_progress, groups=groups)
    return sweep.load_results(study, out, getattr(args, "tables", ()))


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """``python -m experiments.<name>`` of a study trained by the runner: parse, build, train, load, analyse.

    Attributes:
      name, doc: the study's name (``prog``, default ``--out``) and ``--help`` text.
      presets: the study's named presets (``--preset``).
      build: ``(preset, args, out) -> Study`` or ``(Study, groups)`` (groups: ``run_study``'s).
      analyze: ``(study, table, out, preset, args) -> dict`` with at least "report" (report.md's
        path); ``table`` holds the rows :func:`experiments.lib.report.analysis_table` keeps.
      summary: the lines printed at the end, from the result.
      add_args: adds the study's own flags; ``overrides``: the preset fields they set (None: keep).
      shard, bootstrap, max_epochs, extra_sources: :func:`study_parser`'s.
      keep_diverged, require_all: :func:`experiments.lib.report.analysis_table`'s.
      locate: ``(out, args) -> study directory`` (default ``out``: ``--out`` or its default), for
        a study with several methods writing beside each other (``--method wsd``).
    """

    name: str
    doc: str | None
    presets: Mapping[str, Preset]
    build: Build
    analyze: Analyze
    summary: Callable[[dict], str] | None = None
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    overrides: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    shard: bool = True
    bootstrap: bool = True
    max_epochs: float = data_budget.DEFAULT_MAX_EPOCHS
    extra_sources: Sequence[str] = ()
    keep_diverged: bool = False
    require_all: bool = False
    locate: Callable[[Path, argparse.Namespace], Path] | None = None

    def parser(self) -> argparse.ArgumentParser:
        p = study_parser(self.name, self.doc, self.presets, shard=self.shard, bootstrap=self.bootstrap,
                         max_epochs=self.max_epochs, extra_sources=self.extra_sources)
        if self.add_args is not None:
            self.add_args(p)
        return p

    def main(self, argv: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the command (module docstring).

        Returns:
          {"out": the study directory, "study", "table": the whole table, "report": None} updated
          with the analysis' result once it ran.
        """
        parser = self.parser()
        args = parser.parse_args(argv)
        out = out_dir(self.name, args)
        if self.locate is not None:
            out = self.locate(out, args)
        # refused: one line, exit 2 (nothing trained); stopped, locked, disk full: one line (cli.training)
        with training(parser.prog), cli_errors(parser):
            changes = dict(self.overrides(args) if self.overrides else {})
            if self.bootstrap:
                changes["bootstrap"] = args.bootstrap
            preset = self.presets[args.preset].replace(**changes)
            built = self.build(preset, args, out)
            study, groups = built if isinstance(built, tuple) else (built, ())
            table = train_and_load(study, out, args, groups)
        result: dict[str, Any] = {"out": out, "study": study, "table": table, "report": None}
        shard = getattr(args, "shard", None)
        if args.skip_analysis:
            done = int((table["status"] == "complete").sum()) if len(table) else 0
            print(f"{done}/{len(study.runs)} runs complete; table: {table_path(out, parse_shard(shard))}")
            return result
        ready = report.analysis_table(table, keep_diverged=self.keep_diverged, require_all=self.require_all)
        if ready is None:
            if shard and not args.analysis_only and (table["status"] == "pending").any():
                print(f"shard {shard} done; run with --analysis-only (and --tables for shard tables from other "
                      "hosts) once all shards finish")
            return result
        out.mkdir(parents=True, exist_ok=True)
        write_table(table, out / TABLE)  # the merged table the report is fitted from
        result.update(self.analyze(study, ready, out, preset, args))
        data_budget.append_report(result["report"], table)
        report.note_left_out(result["report"], table)
        if self.summary is not None:
            print(self.summary(result))
        print(f"report: {result['report']}")
        return result
