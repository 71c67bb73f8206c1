"""``python -m scaling.fit``: the command line of :mod:`scaling.cli`; the API of :mod:`scaling.fitting`.

This module only re-exports :func:`scaling.fitting.fit_law` and :class:`FitResult` (so that
``from scaling.fit import fit_law`` keeps working) and runs the command line, so that the
fitting code never imports the command line (no import cycle).
"""

from scaling.fitting import FitResult, fit_law

__all__ = ["FitResult", "fit_law"]

if __name__ == "__main__":
    import sys

    from lm.train import compile_cache
    from scaling.cli import main

    compile_cache.enable()  # a law's solver compiles once per table size, not once per run
    sys.exit(main())
