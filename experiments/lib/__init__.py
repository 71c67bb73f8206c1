"""The library of the studies: grid -> runs -> table, the command line, presets, reports, figures.

Public API (the names below; use them as ``from experiments import lib`` then ``lib.Study``):

  grid      :class:`Study`, :class:`StudyError`, :func:`cosine_run`, :func:`run_dir`
            (:mod:`experiments.lib.study`)
  sweep     :func:`run_study` (train a grid or a shard of it, resumable), :func:`load_results`
            (the whole table, merged over shards) (:mod:`experiments.lib.sweep`)
  table     :func:`read_table`, :func:`merge_tables` (:mod:`experiments.lib.table`)
  presets   :class:`Preset`, the base of every study's presets (:mod:`experiments.lib.preset`)
  command   :class:`StudyCommand`, the ``main`` of every study trained by the runner;
            :func:`base_parser`, :func:`out_dir` (:mod:`experiments.lib.command`)
  report    :func:`markdown_table`, :func:`write_report` (:mod:`experiments.lib.report`)
  figures   the studies' figures (:mod:`experiments.lib.figures`)

The submodules (their other names, and anything named ``_x``) are internals: the studies and
the tests use them; notebooks and other code outside ``experiments`` use only the names
exported here and the studies' own public functions (``tests/experiments/test_structure.py``).
"""

from experiments.lib import figures
from experiments.lib.command import StudyCommand, base_parser, out_dir
from experiments.lib.preset import Preset
from experiments.lib.report import markdown_table, write_report
from experiments.lib.study import Study, StudyError, cosine_run, run_dir
from experiments.lib.sweep import load_results, run_study
from experiments.lib.table import merge_tables, read_table

__all__ = ["Preset", "Study", "StudyCommand", "StudyError", "base_parser", "cosine_run", "figures", "load_results",
           "markdown_table", "merge_tables", "out_dir", "read_table", "run_dir", "run_study", "write_report"]
