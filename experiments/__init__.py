"""Studies and benchmarks, each run as ``python -m experiments.<name>``.

Layout:
  experiments/<name>.py        one study or benchmark each: a ``main(argv)`` and the
                               ``python -m`` entry point (chinchilla, architectures,
                               lr_scaling, data_constrained, wsd, schedules, coord_check,
                               mup_transfer; the tools train, prepare_data,
                               accelerator_check and the bench_* benchmarks). A study may keep its analysis
                               in ``<name>_analysis.py`` (chinchilla and schedules do).
  experiments/lib/             what the studies share: grid, sweep runner, results table,
                               command line (:class:`experiments.lib.StudyCommand`), the
                               :class:`experiments.lib.Preset` base, reports, figures.

Studies do not import each other: what two studies share lives in ``experiments.lib``, in
``lm`` (model sizes: ``lm.model.presets.LADDER``, ``lm.model.presets.mup_family_model``) or in
``scaling``; ``experiments.lib`` imports no study.

Public (what notebooks and code outside ``experiments`` may use):
  * the command line of every module (``python -m experiments.<name> --help``) and its
    ``main(argv)``;
  * a study module's names without a leading underscore (``PRESETS``, ``Preset``,
    ``build_study``, ``analyze``, the analysis functions it documents);
  * the names ``experiments.lib`` exports (its ``__all__``: ``Study``, ``run_study``,
    ``load_results``, ``StudyCommand``, ``Preset``, ``figures``, ...).
Internal: the submodules of ``experiments.lib`` (``experiments.lib.sweep``, ``.table``,
``.cli``, ...) and every ``_name``. ``tests/experiments/test_structure.py`` checks the
notebooks against this.
"""
