"""experiments.schedules: the loss-curve study end to end at smoke size; prefix sharing; knots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from experiments import lib, schedules, schedules_analysis
from lm.train.records import read_metrics
from lm.train.schedules import lr_multiplier

PRESET = schedules.PRESETS["smoke"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("schedules") / "study"
    result = schedules.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, result


def test_grid_branches_restore_the_constant_run_where_their_schedules_agree(tmp_path):
    study = schedules.build_study(PRESET, tmp_path)
    stable = study.runs[0]
    assert stable.name == "constant" and stable.train.keep_checkpoints is None
    assert {r.name for r in study.runs if study.tags[r.name]["fitted"]} == {"constant", "cosine-L200", "wsd-exp-L200"}
    branches = [r for r in study.runs if r.train.init_from]
    assert {r.name for r in branches} == {"wsd-exp-L200", "wsd-exp-L100", "wsd-lin-L200", "two-stage-80",
                                          "two-stage-120"}
    for r in branches:
        src, s = r.train.init_from
        assert src == str(lib.run_dir(tmp_path.resolve(), stable)) and s % stable.train.checkpoint_every == 0
        assert s == r.schedule.decay_start == study.tags[r.name]["branch_point"]
        # restoring is exact only if the branch's LRs before s are the constant run's
        assert ([lr_multiplier(r.schedule, t, r.train.steps) for t in range(s)]
                == [lr_multiplier(stable.schedule, t, stable.train.steps) for t in range(s)])
        assert lr_multiplier(r.schedule, s, r.train.steps) < 1.0


def test_no_step_is_trained_twice(smoke):
    out, result = smoke
    study = result["study"]
    L, short = PRESET.steps, PRESET.short_steps
    cooldown = lambda n: round(PRESET.decay_fraction * n)  # noqa: E731
    expected = (L + L + short + cooldown(L) + cooldown(short) + cooldown(L)
                + sum(L - s for s, _ in PRESET.two_stage))
    trained = 0
    for run in study.runs:
        steps = [r["step"] for r in read_metrics(lib.run_dir(out, run)) if "train_loss" in r]
        start = run.train.init_from[1] if run.train.init_from else 0
        assert steps == list(range(start + PRESET.log_every, run.train.steps + 1, PRESET.log_every)), run.name
        trained += steps[-1] - start
        if start:
            assert (lib.run_dir(out, study.runs[0]) / "checkpoints" / str(start)).is_dir()
    assert trained == expected == result["steps_trained"] == 800
    assert f"Steps trained: {expected}" in (out / "report.md").read_text()


def test_outputs_and_finite_errors_of_both_laws(smoke):
    out, result = smoke
    for name in ("results.csv", "curve_errors.csv", "params.csv", "predictions.csv", "optimised.csv", "report.md",
                 "curves.png", "curves.svg", "optimal_schedule.png", "optimal_schedule.svg"):
        assert (out / name).is_file(), name
    errors = pd.read_csv(out / "curve_errors.csv")
    assert set(errors["law"]) == {"multi_power", "lr_annealing"}
    assert len(errors) == 2 * len(result["study"].runs)
    assert np.isfinite(errors[["PredE", "WorstE"]].to_numpy()).all()
    assert (errors["WorstE"] >= errors["PredE"]).all()
    params = pd.read_csv(out / "params.csv")
    assert set(params[params["law"] == "multi_power"]["param"]) == {"L0", "A", "alpha", "B", "C", "beta", "gamma"}
    assert np.isfinite(params[["value", "lower", "upper"]].to_numpy()).all()
    report = (out / "report.md").read_text()
    assert "mean of predicted" in report and "![curves](curves.png)" in report


def test_errors_are_recomputed_from_the_predictions(smoke):
    out, _ = smoke
    pred = pd.read_csv(out / "predictions.csv")
    errors = pd.read_csv(out / "curve_errors.csv").set_index(["law", "run"])
    for (law, run), g in pred.groupby(["law", "run"]):
        rel = np.abs(g["loss"] - g["predicted_loss"]) / g["loss"]
        assert errors.loc[(law, run), "PredE"] == pytest.approx(rel.mean(), rel=1e-9)
        assert errors.loc[(law, run), "WorstE"] == pytest.approx(rel.max(), rel=1e-9)
    # a branch's curve is the steps it trained: wsd-exp-L100's points start after its branch point
    g = pred[(pred["law"] == "multi_power") & (pred["run"] == "wsd-exp-L100")]
    assert g["step"].min() == PRESET.wsd_start(PRESET.short_steps) + PRESET.log_every - 1


def test_optimised_schedule_is_trained_and_compared(smoke):
    out, result = smoke
    check = result["optimised"]
    assert check["trained"]
    table = pd.read_csv(out / "optimised.csv").set_index("schedule")
    assert list(table.index) == ["optimised", "cosine-L200", "wsd-exp-L200", "wsd-lin-L200"]
    assert np.isfinite(table.to_numpy()).all()
    run_dir = check["out"] / "runs" / "optimised"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["schedule"]["kind"] == "table"
    assert [tuple(k) for k in config["schedule"]["knots"]] == list(check["knots"])
    last = read_metrics(run_dir)[-1]
    assert last["step"] == PRESET.steps and table.loc["optimised", "observed_final_loss"] == pytest.approx(
        last["train_loss"])
    res = json.loads((run_dir / "result.json").read_text())
    assert table.loc["optimised", "final_val_loss"] == pytest.approx(res["final_val_loss"])
    for ref in ("cosine-L200", "wsd-exp-L200"):
        assert result["gain"][ref]["val"] == pytest.approx(table.loc[ref, "final_val_loss"] - res["final_val_loss"])
        assert result["gain"][ref]["observed"] == pytest.approx(
            table.loc[ref, "observed_final_loss"] - last["train_loss"])
    # rerunning the analysis finds the trained run (same fit, same knots): nothing is retrained
    again = schedules.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--analysis-only"])
    assert again["optimised"]["out"] == check["out"] and again["optimised"]["trained"]


def test_compress_keeps_the_plateau_and_the_cooldown():
    peak, W, T = 2.0, 5, 300
    eta = np.concatenate([np.linspace(0, peak, W), np.full(200, peak),
                          peak * 0.1 ** (np.arange(T - W - 200) / (T - W - 201))])
    knots = schedules_analysis.compress(eta, peak, W, 16)
    steps, values = np.array(knots).T
    assert steps[0] == W and steps[-1] == T - 1 and len(knots) <= 17 and W + 200 in steps
    assert np.all(np.diff(values) <= 0) and values[0] == 1.0 and values[-1] == pytest.approx(0.1)
    assert (steps > 205).sum() >= 6  # the cooldown (a third of the steps) gets about half the knots
    err = np.abs(np.interp(np.arange(W, T), steps, values) - eta[W:] / peak).max()
    assert err < 0.03
    flat = schedules_analysis.compress(np.full(50, peak), peak, 0, 8)
    assert [v for _, v in flat] == [1.0] * len(flat)


def test_optimised_run_restores_the_constant_prefix_only_where_it_is_at_the_peak(tmp_path):
    study = schedules.build_study(PRESET, tmp_path)
    unit = study.runs[0].train.checkpoint_every
    assert unit == 40
    run = schedules_analysis.optimised_study(study, ((10, 1.0), (130, 1.0), (199, 0.1))).runs[0]
    assert run.train.init_from == (str(lib.run_dir(tmp_path.resolve(), study.runs[0])), 120)
    assert run.schedule.kind == "table" and run.train.steps == PRESET.steps
    assert schedules_analysis.optimised_study(study, ((10, 0.99), (199, 0.1))).runs[0].train.init_from is None
    end = schedules_analysis.optimised_study(study, ((10, 1.0), (199, 1.0))).runs[0]
    assert end.train.init_from[1] == 160  # never the last step: something is left to train


@pytest.mark.parametrize("change, message", [({"two_stage": ((5, 0.1),)}, "after the warmup"),
                                             ({"two_stage": ((82, 0.1),)}, "multiple of log_every"),
                                             ({"short_steps": 300}, "short_steps"), ({"size": "d1L1"}, "size")])
def test_bad_presets_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        PRESET.replace(**change)


def test_a_failed_multi_power_fit_is_refused_with_its_reason_not_a_crash(smoke, monkeypatch, tmp_path):
    import dataclasses

    import scaling
    from scaling.run_curves import read_runs
    from scaling.table import FitConvergenceError

    out, _ = smoke
    real = scaling.fit_curves

    def fake(curves, lrs, law, method=None, **kw):
        if law == "multi_power" and method == "bfgs":
            raise FitConvergenceError("none of the 16 starts converged")
        fit = real(curves, lrs, law, method=method, **kw)
        if law != "multi_power":
            return fit
        return dataclasses.replace(fit, params={k: np.nan for k in fit.params}, theta=np.full_like(fit.theta, np.nan))

    monkeypatch.setattr(scaling, "fit_curves", fake)
    curves, etas = read_runs(out / "runs")
    fitted = ["constant", "cosine-L200", "wsd-exp-L200"]
    fits, notes = schedules_analysis.fit_laws(curves, etas, fitted, None, first_step=PRESET.warmup_steps)
    assert "ended with non-finite parameters" in notes[0] and "REFUSED" in notes[1] and len(notes) == 2
    assert fits["multi_power"][0] is None and (fits["multi_power"][3]["status"] == "refused").all()
    assert fits["multi_power"][2].empty  # no predictions at all, rather than NaN ones
    assert np.isfinite(fits["lr_annealing"][3]["PredE"]).all()

    def never(curves, lrs, law, method=None, **kw):
        if law == "multi_power":
            raise FitConvergenceError("none of the 1 starts converged")
        return real(curves, lrs, law, method=method, **kw)

    monkeypatch.setattr(scaling, "fit_curves", never)
    fits, notes = schedules_analysis.fit_laws(curves, etas, fitted, None, first_step=PRESET.warmup_steps)
    assert fits["multi_power"][0] is None and (fits["multi_power"][3]["status"] == "refused").all()
    assert "did not converge" in notes[0] and "REFUSED: multistart BFGS found no minimum" in notes[1]
    # the whole analysis (on a copy): the report and the summary say "refused" and why; no optimised schedule
    import shutil

    study = schedules.build_study(PRESET, out, "smoke")
    table = lib.load_results(study, out)
    out = shutil.copytree(out, tmp_path / "study")
    result = schedules_analysis.analyze(study, table, out, PRESET, train=False)
    report = (out / "report.md").read_text()
    assert "| refused | refused |" in report and "multi_power: REFUSED" in report
    assert "None: the multi-power law was refused" in report and result["optimised"] is None
    assert "multi_power: REFUSED" in schedules_analysis.summary(result)
    errors = pd.read_csv(out / "curve_errors.csv")
    assert (errors.loc[errors["law"] == "multi_power", "status"] == "refused").all()
    assert set(pd.read_csv(out / "predictions.csv")["law"]) == {"lr_annealing"}


def test_every_curve_is_fitted_and_scored_after_the_warmup(smoke):
    out, result = smoke
    pred = pd.read_csv(out / "predictions.csv")
    assert pred["step"].min() >= PRESET.warmup_steps
    for law in schedules_analysis.LAWS:
        assert result["fits"][law][0].table["step"].min() >= PRESET.warmup_steps
    assert f"from step {PRESET.warmup_steps}, the end of the warmup" in (out / "report.md").read_text()
