"""experiments.architectures: per-family FLOP budgets, multipliers recovered on known laws, a reduced grid."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from experiments import architectures as arch
from experiments import architectures_analysis as analysis
from experiments import lib
from lm.model.counting import param_count, train_flops_per_token


def test_every_family_spends_the_budget_and_moe_matches_active_params():
    preset = arch.PRESETS["default"]
    study = arch.build_study(preset)
    assert {study.tags[r.name]["family"] for r in study.runs} == set(arch.FAMILIES)
    for r in study.runs:
        per_step = train_flops_per_token(r.model, r.data.seq_len) * r.data.seq_len * r.data.batch_size
        assert abs(r.train.steps * per_step - study.tags[r.name]["budget"]) <= 0.5 * per_step
    for d, L in preset.sizes:
        dense = param_count(arch.family_model("transformer", d, L))
        moe = param_count(arch.family_model("moe", d, L))
        # active MoE params = dense params + the routers (d x experts per block)
        assert moe["active"] - dense["active"] == L * d * 8
        assert moe["total"] > 2 * dense["total"]


def _known_table(multiplier: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Family f's frontier is the transformer's at m_f x C: its multiplier is exactly 1 / m_f."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam, m in multiplier.items():
        for C in np.geomspace(1e12, 1e15, 6):
            for rel in (0.5, 1.0, 2.0):
                loss = (1.5 + 30.0 * (m * C) ** -0.15) * (1 + 0.03 * np.log(rel) ** 2)
                rows.append({"family": fam, "status": "complete", "budget": C, "C": C, "size": f"r{rel}",
                             "N_active": 1e6 * rel, "D": C / 6e6 / rel,
                             "final_val_loss": loss * np.exp(1e-4 * rng.standard_normal()),
                             "cache_bytes_per_token": 1.0})
    return pd.DataFrame(rows)


def test_multipliers_recover_known_compute_factors(tmp_path):
    truth = {"transformer": 1.0, "hawk": 0.5, "moe": 2.0}
    small_grid = {"alpha": (0.2, 0.5), "beta": (0.2, 0.5), "e": (0.0, 0.5), "a": (5.0, 10.0), "b": (5.0, 10.0)}
    res = arch.analyze(_known_table(truth), tmp_path, bootstrap=20, chinchilla_grid=small_grid)
    mult = res["multipliers"]
    for fam, m in truth.items():
        assert mult.loc[fam, "multiplier"] == pytest.approx(1.0 / m, rel=0.03)
        assert mult.loc[fam, "lower"] <= mult.loc[fam, "multiplier"] * 1.001
    assert (tmp_path / "frontiers.png").exists() and "compute multiplier" in (tmp_path / "report.md").read_text()
    # >= 8 runs of >= 2 sizes per family: a Chinchilla fit per family
    assert set(res["chinchilla"]) == set(truth)


def test_a_multiplier_interval_reaching_an_unreachable_loss_is_unbounded_not_nan():
    x = np.array([1.0, 2.0, 3.0, np.inf, np.inf])
    assert arch.percentile_inf(x, 97.5) == np.inf and arch.percentile_inf(x, 2.5) == pytest.approx(1.1)
    assert arch.percentile_inf(np.array([1.0, 2.0, 3.0]), 50) == 2.0


def test_an_unbounded_multiplier_interval_is_explained_in_the_report():
    """A family whose floor E lies above the target in some resamples: upper bound inf, their share, and a note."""
    from types import SimpleNamespace

    def fit(E, A, alpha, Es):
        samples = pd.DataFrame({"E": Es, "A": [A] * len(Es), "alpha": [alpha] * len(Es)})
        return SimpleNamespace(params={"E": E, "A": A, "alpha": alpha}), SimpleNamespace(samples=samples)

    c_max = 1e10
    fits = {"transformer": fit(2.0, 50.0, 0.2, [2.0] * 10),  # target 2.0 + 50 * 1e10^-0.2 = 2.5
            "moe": fit(2.1, 50.0, 0.2, [2.1] * 8 + [2.6, 2.7])}  # 2 of 10 resamples never reach 2.5
    mult = arch.compute_multipliers(fits, c_max)
    assert math.isinf(mult.loc["moe", "upper"]) and mult.loc["moe", "unreached"] == pytest.approx(0.2)
    assert mult.loc["transformer", "unreached"] == 0.0
    note = " ".join(analysis.unbounded_note(mult))
    assert "`inf`" in note and "(the resamples never reaching it: moe 20.0%)" in note
    assert analysis.unbounded_note(mult.drop("moe")) == []


def test_a_chinchilla_fit_at_e_zero_says_whether_it_is_the_datas_optimum():
    """Losses with no floor (E = 0): the fit lands on E -> 0 and the profile (E held at 0.5, 1) is worse;
    with a floor (E = 1.5) no profile is taken."""
    grid = {"alpha": (0.2, 0.5), "beta": (0.2, 0.5), "e": (-1.0, 0.5), "a": (3.0, 6.0), "b": (3.0, 6.0)}
    rows = []
    for E, fam in ((0.0, "hawk"), (1.5, "gla")):
        for N in (1e4, 3e4, 1e5):
            for D in np.geomspace(1e5, 1e7, 4):
                rows.append({"family": fam, "status": "complete", "size": f"n{N:g}", "N_active": N, "D": D,
                             "final_val_loss": E + 40.0 * N ** -0.3 + 60.0 * D ** -0.25})
    chin = arch.fit_chinchilla_per_family(pd.DataFrame(rows), n_bootstrap=4, init_grid=grid)
    assert chin["hawk"].loc["E", "estimate"] < 1e-3 and set(chin["hawk"].attrs["E_profile"]) == set(arch.E_PROFILE)
    assert all(r > 1.0 for r in chin["hawk"].attrs["E_profile"].values())
    lines = analysis.e_profile_lines("hawk", chin["hawk"].attrs["E_profile"])
    assert "the data's optimum, not a failed fit" in " ".join(lines)
    assert chin["gla"].loc["E", "estimate"] == pytest.approx(1.5, rel=0.02) and "E_profile" not in chin["gla"].attrs
    assert "missed its optimum" in " ".join(analysis.e_profile_lines("moe", {0.5: 0.9, 1.0: 1.2}))


def test_compute_for_loss_inverts_the_law():
    C = np.array([1e10, 3e12])
    loss = 2.0 + 50.0 * C ** -0.2
    np.testing.assert_allclose(arch.compute_for_loss(loss, 2.0, 50.0, 0.2), C, rtol=1e-10)
    assert np.isinf(arch.compute_for_loss(1.9, 2.0, 50.0, 0.2))


@pytest.fixture(scope="module")
def reduced_grid(tmp_path_factory):
    """The smoke grid of 3 families x 1 size (16 wide, 1 layer), trained once: its study, directory and table."""
    preset = dataclasses.replace(arch.PRESETS["smoke"], families=("transformer", "hawk", "moe"), sizes=((16, 1),))
    study = arch.build_study(preset, "test")
    out = tmp_path_factory.mktemp("reduced") / "study"
    return study, out, lib.run_study(study, out, progress=False)


def test_reduced_grid_end_to_end(reduced_grid):
    study, out, table = reduced_grid
    assert (table["status"] == "complete").all() and len(table) == 9
    res = arch.analyze(table, out, bootstrap=10, preset_name="test")
    assert res["multipliers"].loc["transformer", "multiplier"] == pytest.approx(1.0)
    assert set(res["multipliers"].index) == {"transformer", "hawk", "moe"}
    # the cache column: the recurrent family's decode state is far smaller than the transformer's KV cache
    cache = res["multipliers"]["cache_bytes_per_token"]
    assert cache["hawk"] < cache["transformer"] / 100


def test_wsd_method_end_to_end_beside_a_reduced_grid(reduced_grid, tmp_path):
    """--method wsd's study and report on 2 families x 1 size: more frontier points than the grid
    from one stable run per family, the compute of both, the grid's multipliers beside these."""
    import argparse
    import json

    from experiments.lib import branches, sweep
    from scaling.diagnostics import fit_warnings

    preset = dataclasses.replace(arch.PRESETS["smoke"], families=("transformer", "hawk"), sizes=((16, 1),),
                                 wsd_budgets=4)
    grid, out = arch.build_study(preset, "test"), tmp_path / "study"
    # the grid's runs are the reduced grid's runs of these two families (the same configs): its finished run
    # directories, copied in, are finished runs the runner does not train again
    trained = {r.name: r for r in reduced_grid[0].runs}
    sweep.prepare_out(grid, out)
    for run in grid.runs:
        assert trained[run.name] == run
        shutil.copytree(lib.run_dir(reduced_grid[1], run), lib.run_dir(out, run))
    retrained = []
    grid_table = lib.run_study(grid, out, progress=False, on_run_done=lambda r, res: retrained.append(r.name))
    assert retrained == [] and (grid_table["status"] == "complete").all() and len(grid_table) == 6
    arch.analyze(grid_table, out, bootstrap=10, preset_name="test")
    study = arch.build_wsd_study(preset, out / "wsd", "test")
    table = lib.run_study(study, out / "wsd", progress=False)
    assert (table["status"] == "complete").all() and len(table) == 2 + 2 * 4
    result = arch.analyze(table[table["kind"] == "branch"], out / "wsd", bootstrap=10, preset_name="test")
    cmp = arch.compare_wsd(study, result, grid, out / "wsd", argparse.Namespace(preset="test", data="stdlib"))
    cmp = cmp["comparison"]
    assert cmp["frontier_points"] == {"hawk": 4, "transformer": 4}
    assert cmp["compute"] == pytest.approx(branches.compute_lines(study, grid)[0], rel=1e-12)
    assert cmp["warnings"] == {f: fit_warnings(fit, boot) for f, (fit, boot) in result["fits"].items()}
    assert cmp["too_few_points"] == [f for f, w in cmp["warnings"].items() if any("distinct points" in x for x in w)]
    theirs = pd.read_csv(out / "multipliers.csv").set_index("family")
    assert cmp["multipliers"]["hawk"]["grid"] == pytest.approx(theirs.loc["hawk", "multiplier"])
    assert cmp["multipliers"]["hawk"]["wsd"] == pytest.approx(result["multipliers"].loc["hawk", "multiplier"])
    assert cmp["multipliers"]["transformer"]["wsd_in_grid"] is True  # 1 in [1, 1]
    report = (out / "wsd" / "report.md").read_text()
    assert "## WSD vs the grid" in report and "| hawk |" in report and "Frontier points per family" in report
    assert json.loads((out / "wsd" / "comparison.json").read_text())["frontier_points"]["hawk"] == 4
