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

import importlib

# name -> submodule. Loaded on first use (PEP 562): ``experiments.lib.cli`` (the error path of
# every command, ``prepare_data`` included) is then importable without jax, flax and the runner.
_EXPORTS = {
    "figures": None, "StudyCommand": "command", "base_parser": "command", "out_dir": "command",
    "Preset": "preset", "markdown_table": "report", "write_report": "report", "Study": "study",
    "StudyError": "study", "cosine_run": "study", "run_dir": "study", "load_results": "sweep",
    "run_study": "sweep", "merge_tables": "table", "read_table": "table",
}
__all__ = ["Preset", "Study", "StudyCommand", "StudyError", "base_parser", "cosine_run", "figures", "load_results",
           "markdown_table", "merge_tables", "out_dir", "read_table", "run_dir", "run_study", "write_report"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experiments.lib' has no attribute {name!r}")
    module = importlib.import_module(f"experiments.lib.{_EXPORTS[name] or name}")
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
