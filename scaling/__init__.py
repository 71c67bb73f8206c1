"""Scaling laws: power-law forms, robust fitting with uncertainty, isoFLOP analysis, plots.

Fits tables of numbers from any source (``scaling`` never imports ``lm``)::

    from scaling import fit_law, fit_isoflop, laws
    res = fit_law("runs.csv", law="chinchilla")   # res.params, res.bootstrap(1000)
    iso = fit_isoflop("runs.csv")                 # iso.optima, iso.a, iso.b
    cf = fit_curves("curves.csv", "lrs.csv", law="multi_power")  # whole loss curves
    doc = read_fit_json("out/fit.json")           # what python -m scaling.fit wrote

``fit_law`` and friends are loaded on first use (PEP 562), so that ``python -m scaling.fit``
runs its module once.
"""

from importlib import import_module

from scaling import laws

_LAZY = {
    "fit_law": "scaling.fitting", "FitResult": "scaling.fitting",
    "fit_isoflop": "scaling.isoflop", "IsoflopResult": "scaling.isoflop",
    "LAWS": "scaling.law_specs", "FitConvergenceError": "scaling.table",
    "read_fit_json": "scaling.fit_json",
    "fit_curves": "scaling.curve_fit", "CurveFit": "scaling.curve_fit",
    "CURVE_LAWS": "scaling.curve_laws",
}

__all__ = ["laws", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scaling' has no attribute {name!r}")
