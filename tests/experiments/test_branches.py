"""--method wsd (experiments.lib.branches): a grid as stable runs + cooldown branches; compute; flags."""

from __future__ import annotations

import dataclasses
import math

import pytest

from experiments import architectures, chinchilla
from experiments.lib import branches
from lm.model.counting import train_flops_per_token
from lm.train.schedules import lr_multiplier, warmup_steps


def _per_step(run) -> float:
    return train_flops_per_token(run.model, run.data.seq_len) * run.data.batch_size * run.data.seq_len


@pytest.mark.parametrize("shape", ["sqrt", "linear"])
def test_each_grid_run_becomes_a_branch_of_its_sizes_stable_run(tmp_path, shape):
    preset = chinchilla.PRESETS["smoke"]
    study = chinchilla.build_wsd_study(preset, tmp_path, preset_name="smoke", fraction=0.2, shape=shape)
    grid = chinchilla.build_study(preset.replace(budgets=chinchilla.wsd_budgets(preset)), "stdlib", "smoke")
    by_name = {r.name: r for r in study.runs}
    assert [r.name for r in study.runs if not r.name.startswith("stable_")] == sorted(
        (r.name for r in grid.runs), key=[r.name for r in study.runs].index)
    for g in grid.runs:
        b = by_name[g.name]
        size = grid.tags[g.name]["size"]
        stable = by_name[f"stable_{size}"]
        assert study.run_names.index(stable.name) < study.run_names.index(b.name)  # trained first
        # the same run but for its schedule and start: model, data, optimiser, length, evaluation
        assert dataclasses.replace(b, schedule=g.schedule, train=dataclasses.replace(b.train, init_from=None)) == g
        src, s = b.train.init_from
        assert src == str((tmp_path / "runs" / stable.name).resolve())
        assert study.tags[b.name] == {**study.tags[b.name], **grid.tags[g.name], "kind": "branch", "branch_point": s}
        # the cooldown is 20% of the run (to the step); the stable run saves at s
        assert abs((g.train.steps - s) - 0.2 * g.train.steps) <= 0.5
        assert s in stable.train.checkpoint_steps and s <= stable.train.steps
        assert stable.train.keep_checkpoints is None
        # stable phase identical to the stable run's, then the decay from s to the grid's floor
        w = warmup_steps(stable.schedule, stable.train.steps)
        assert w == warmup_steps(b.schedule, b.train.steps) < s
        for step in range(s):
            assert lr_multiplier(b.schedule, step, b.train.steps) == lr_multiplier(stable.schedule, step, s)
        assert lr_multiplier(b.schedule, s, b.train.steps) < 1.0
        assert lr_multiplier(b.schedule, b.train.steps - 1, b.train.steps) == pytest.approx(g.schedule.min_ratio)
        assert b.schedule.decay_shape == shape
    # one stable run per size, up to its largest branch point, saving at the branch points only
    for size in preset.sizes:
        points = [by_name[r.name].train.init_from[1] for r in grid.runs if grid.tags[r.name]["size"] == size]
        assert by_name[f"stable_{size}"].train.steps == max(points)
        assert by_name[f"stable_{size}"].train.checkpoint_steps == tuple(sorted(set(points)))
        assert by_name[f"stable_{size}"].train.checkpoint_every == max(points)
        assert by_name[f"stable_{size}"].schedule.kind == "constant"
        # the warmup of the size's longest grid run (not of its shortest): one warmup for every branch
        stable = by_name[f"stable_{size}"]
        longest = max((r for r in grid.runs if grid.tags[r.name]["size"] == size), key=lambda r: r.train.steps)
        assert warmup_steps(stable.schedule, stable.train.steps) == warmup_steps(longest.schedule, longest.train.steps)
        assert warmup_steps(stable.schedule, stable.train.steps) > min(
            warmup_steps(r.schedule, r.train.steps) for r in grid.runs if grid.tags[r.name]["size"] == size)


def test_wsd_budgets_hold_the_largest_out_and_split_each_interval():
    preset = chinchilla.PRESETS["default"]
    assert chinchilla.wsd_budgets(preset) == pytest.approx((2e10, 2e10 * 2 ** 0.5, 4e10, 4e10 * 2 ** 0.5, 8e10))
    assert chinchilla.wsd_budgets(preset.replace(wsd_splits=1)) == pytest.approx((2e10, 4e10, 8e10))
    with pytest.raises(ValueError, match="wsd_splits"):
        preset.replace(wsd_splits=0)


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_compute_is_the_steps_each_run_trains(tmp_path, name):
    """study_compute against a count of steps: stable runs to their last branch point, each branch from its own."""
    preset = chinchilla.PRESETS[name]
    study = chinchilla.build_wsd_study(preset, tmp_path, preset_name=name)
    grid = chinchilla.build_study(preset, "stdlib", name)
    by_name = {r.name: r for r in study.runs}
    wsd = 0.0
    for size in preset.sizes:
        mine = [r for r in study.runs
                if study.tags[r.name].get("size") == size and study.tags[r.name]["kind"] == "branch"]
        points = [r.schedule.decay_start for r in mine]
        steps = max(points) + sum(r.train.steps - s for r, s in zip(mine, points))
        wsd += steps * _per_step(by_name[f"stable_{size}"])
    acct, lines = branches.compute_lines(study, grid)
    assert acct["wsd"] == pytest.approx(wsd, rel=1e-12)
    assert acct["grid"] == pytest.approx(sum(r.train.steps * _per_step(r) for r in grid.runs), rel=1e-12)
    assert acct["ratio"] == pytest.approx(wsd / acct["grid"], rel=1e-12)
    assert f"{100 * acct['ratio']:.1f}%" in lines[0]
    assert acct["ratio"] <= 0.40  # the acceptance: at most 40% of the grid's compute


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_architectures_wsd_has_8_budgets_per_family_for_less_than_the_grid(tmp_path, name):
    preset = architectures.PRESETS[name]
    study = architectures.build_wsd_study(preset, tmp_path, name)
    grid = architectures.build_study(preset, name)
    for family in preset.families:
        budgets = {study.tags[r.name]["budget"] for r in study.runs
                   if study.tags[r.name]["kind"] == "branch" and study.tags[r.name]["family"] == family}
        assert len(budgets) >= 8 and max(budgets) == pytest.approx(max(preset.budgets))
    stables = [r for r in study.runs if study.tags[r.name]["kind"] == "stable"]
    assert len(stables) == len(preset.families) * len(preset.sizes)
    acct, _ = branches.compute_lines(study, grid)
    assert acct["ratio"] <= 1.0


def test_side_by_side_says_which_estimate_lies_in_which_interval():
    out, lines = branches.side_by_side({"alpha": (0.3, [0.2, 0.4], 0.45, [0.25, 0.6]),
                                        "beta": (0.3, [0.29, 0.31], 0.5, [0.4, 0.6]),
                                        "a": (math.nan, [math.nan, math.nan], 0.5, [0.4, 0.6])})
    assert (out["alpha"]["wsd_in_grid"], out["alpha"]["grid_in_wsd"]) == (True, False)
    assert (out["beta"]["wsd_in_grid"], out["beta"]["grid_in_wsd"]) == (False, False)
    assert out["a"]["wsd_in_grid"] is None
    unbounded, _ = branches.side_by_side({"moe": (1.5, [0.9, math.inf], 1.8, [1.0, 1.9])})
    assert unbounded["moe"]["grid_in_wsd"] is True and unbounded["moe"]["wsd_in_grid"] is True
    assert "[0.9, inf]" in _[-1]
    assert len(lines) == 5 and "| alpha | 0.3 | [0.2, 0.4] | 0.45 | [0.25, 0.6] | yes | **no** |" in lines


@pytest.mark.parametrize("module", [chinchilla, architectures])
@pytest.mark.parametrize("argv, message", [
    (["--cooldown-shape", "exp"], ("invalid choice: 'exp'", "linear", "cosine", "sqrt", "exponential")),
    (["--cooldown-fraction", "1.5"], "the cooldown fraction must be a number in (0, 1)"),
    (["--cooldown-fraction", "x"], "the cooldown fraction must be a number in (0, 1)"),
    (["--method", "both"], ("invalid choice: 'both'", "grid", "wsd")),
    (["--shard", "0/2"], "--shard: not available with --method wsd"),
])
def test_bad_wsd_flags_are_one_line_exit_2_and_create_nothing(tmp_path, capsys, module, argv, message):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as err:
        module.main(["--preset", "smoke", "--method", "wsd", "--out", str(out), "--no-progress", *argv])
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert all(m in text for m in ((message,) if isinstance(message, str) else message))
    assert text.count("\n") == 1 and text.startswith(f"python -m experiments.{module.__name__.split('.')[-1]}: error:")
    assert not out.exists()


def test_wsd_writes_beside_the_grid_it_is_compared_with():
    from argparse import Namespace
    from pathlib import Path

    grid_out = Path("runs/chinchilla/default")
    assert branches.locate(grid_out, Namespace(method="wsd")) == grid_out / "wsd"
    assert branches.locate(grid_out, Namespace(method="grid")) == grid_out


def test_wsd_study_flops_accounting_counts_the_steps_each_run_trains(tmp_path):
    """experiments.wsd's accounting is branches.trained_flops: stable to s_max, branch L - s, cosine L."""
    from experiments import wsd

    preset = wsd.PRESETS["smoke"]
    study = wsd.build_study(preset, tmp_path, "smoke")
    per_step = _per_step(study.runs[0])  # one model and batch shape for every run of the study
    points = [preset.branch_point(n) for n in preset.lengths]
    acct = wsd.flops_accounting(study)
    assert acct["stable_flops"] == pytest.approx(max(points) * per_step)
    assert acct["branch_flops"] == pytest.approx(sum(n - s for n, s in zip(preset.lengths, points)) * per_step)
    assert acct["cosine_flops"] == pytest.approx(sum(preset.lengths) * per_step)
    wsd_total = acct["stable_flops"] + acct["branch_flops"]
    assert acct["flops_saved"] == pytest.approx(1 - wsd_total / acct["cosine_flops"])
