"""Reading the architectures study's fits: what an unbounded multiplier interval and a fit's E -> 0 mean.

The report lines of :mod:`experiments.architectures` that explain two outcomes of its fits:
a multiplier interval bounded by ``inf`` (the family's fitted floor never reaches the
transformer's target loss in some bootstrap resamples) and a Chinchilla fit whose E went to 0
(checked by refitting with E held fixed, Hoffmann et al. 2022, eq. 2).
"""

from __future__ import annotations

import math

import pandas as pd


def unbounded_note(mult: pd.DataFrame) -> list[str]:
    """The report's line explaining an ``inf`` bound of a multiplier's interval (none if no bound is inf)."""
    fams = [f for f, r in mult.iterrows() if math.isinf(r["upper"]) or math.isinf(r["lower"])]
    if not fams:
        return []
    share = ", ".join(f"{f} {100 * mult.loc[f, 'unreached']:.1f}%" for f in fams)
    return ["", f"An interval bound `inf` is not a number: in at least {100 * (1 - 0.95) / 2:g}% of the bootstrap "
                f"resamples the family's fitted floor E lies at or above the transformer's target loss, so no "
                f"compute reaches it (the resamples never reaching it: {share}); the data cannot exclude that the "
                f"family never matches the transformer, and the interval is unbounded above."]


def e_profile_lines(family: str, profile: dict[float, float]) -> list[str]:
    """What a Chinchilla fit's E -> 0 means, from the objective with E held at :data:`experiments.architectures.E_PROFILE`."""
    ratios = " / ".join(f"{100 * (r - 1):+.1f}%" for r in profile.values())
    held = " / ".join(f"{e:g}" for e in profile)
    if all(r >= 1.0 for r in profile.values()):
        return ["", f"E -> 0 in the {family} fit is the data's optimum, not a failed fit: holding E at {held} "
                    f"changes the objective by {ratios}. Over these budgets the losses bend toward no floor "
                    "(they are far above the irreducible loss), so E is not identified at this scale; A and "
                    "alpha absorb it."]
    return ["", f"**The {family} fit missed its optimum**: holding E at {held} changes the objective by {ratios} "
                "(a lower objective than the free fit's)."]
