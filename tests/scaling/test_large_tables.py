"""Fits of large tables: screen-then-refine reaches the full grid's optimum; progress lines."""

import numpy as np
import pytest

from scaling import fit_law
from scaling.progress import slow_notice
from tests.scaling.helpers import chinchilla_table


def test_screened_fit_reaches_the_full_grid_optimum():
    """3,000 rows (> 2 x 512: screened by default) on the 243-start grid: the same optimum as
    every start on every row, to 1e-9 of the objective."""
    table = chinchilla_table(m=3000, noise=0.02, seed=4)
    screened = fit_law(table, init_grid="small")
    full = fit_law(table, init_grid="small", screen_rows=0)
    assert screened.screened == 512 and full.screened == 0
    assert screened.n_starts == full.n_starts == 243 and len(screened.starts) < 243
    assert abs(screened.objective / full.objective - 1) < 1e-9
    for k, v in full.params.items():
        assert np.isclose(screened.params[k], v, rtol=1e-6), k
    with pytest.raises(ValueError, match="screen_rows=-1: must be an integer >= 0"):
        fit_law(table, init_grid="small", screen_rows=-1)


def test_progress_line_only_for_slow_steps(capsys):
    with slow_notice("quick"):
        pass
    assert capsys.readouterr().err == ""
    with slow_notice("slow step", after_s=0.0):
        import time
        time.sleep(0.2)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[fit] slow step ..." and err[1].startswith("[fit] slow step: done in ")
    with slow_notice("off", enabled=False, after_s=0.0):
        time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_progress_default_watches_only_large_work():
    """Small fits stay quiet even when compiling under load takes seconds; large ones are
    watched; an explicit choice wins."""
    from scaling.progress import MIN_WORK, wanted

    assert not wanted(None, 4500 * 240) and wanted(None, MIN_WORK)
    assert wanted(True, 1) and not wanted(False, 1e12)
