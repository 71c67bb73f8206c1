"""The main job: grid construction, errors before training, kill-and-resume, the analysis outputs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import chinchilla, chinchilla_analysis, lib
from lm.model.counting import train_flops_per_token
from lm.train.schedules import lr_multiplier, warmup_steps

ROOT = Path(__file__).resolve().parents[2]
LOSSES = ["final_train_loss", "final_val_loss", "final_val_bpb"]


# ------------------------------------------------------------------------------ grid


@pytest.mark.parametrize("name", sorted(chinchilla.PRESETS))
def test_grid_spends_each_budget_exactly(name):
    preset = chinchilla.PRESETS[name]
    study = chinchilla.build_study(preset, preset_name=name)
    assert len({r.data for r in study.runs}) == 1  # one batch shape: one compiled step per size
    for run in study.runs:
        budget = study.tags[run.name]["budget"]
        tokens_per_step = run.data.batch_size * run.data.seq_len
        f = train_flops_per_token(run.model, run.data.seq_len)
        # D = C / f, rounded to whole steps: the spend is within half a step of the budget
        assert abs(run.train.steps * tokens_per_step * f - budget) <= 0.5 * tokens_per_step * f
        assert run.train.steps >= preset.min_steps
        # cosine matched to the run: warmup a fixed fraction, the floor reached at the last step
        assert warmup_steps(run.schedule, run.train.steps) == max(1, round(0.05 * run.train.steps))
        assert lr_multiplier(run.schedule, run.train.steps - 1, run.train.steps) == pytest.approx(0.1)
        assert lr_multiplier(run.schedule, run.train.steps // 2, run.train.steps) > 0.5
    by_budget = pd.Series([study.tags[r.name]["budget"] for r in study.runs]).value_counts()
    assert (by_budget >= 3).all()


def test_default_preset_is_at_least_3_budgets_by_5_sizes():
    study = chinchilla.build_study(chinchilla.PRESETS["default"])
    budgets = {t["budget"] for t in study.tags.values()}
    sizes = {t["size"] for t in study.tags.values()}
    assert len(budgets) >= 3 and len(sizes) >= 5 and len(study.runs) == len(budgets) * len(sizes)


def test_budget_too_small_is_an_error_before_training(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit):
        chinchilla.main(["--preset", "smoke", "--budgets", "1e6,3e8,1e9", "--out", str(out)])
    assert "too small for the smallest model d16L1" in capsys.readouterr().err
    assert not out.exists()


def test_other_study_in_out_is_an_error_before_training(tmp_path, capsys):
    out = tmp_path / "study"
    other = chinchilla.build_study(chinchilla.PRESETS["smoke"], data="synthetic")
    lib.sweep.prepare_out(other, out)
    with pytest.raises(SystemExit):
        chinchilla.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    assert "holds a different study" in capsys.readouterr().err
    assert list((out / "runs").iterdir()) == []


def test_duplicate_sizes_are_an_error_before_training(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit):
        chinchilla.main(["--preset", "smoke", "--sizes", "d16L1,d32L1,d16L1", "--out", str(out)])
    assert "duplicate sizes" in capsys.readouterr().err
    assert not out.exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        chinchilla.main(["--help"])
    text = capsys.readouterr().out
    for action in chinchilla.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help


# ------------------------------------------------------------- the smoke study, end to end


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the subprocess: the tests' matmul precision (and, inherited, the session's
    compilation cache: tests/conftest.py), so it loads the reference's compiled steps."""
    e = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return e


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted smoke study with its analysis (in this process)."""
    out = tmp_path_factory.mktemp("reference")
    result = chinchilla.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--skip-analysis"])
    return out, result


def _partial_runs(out: Path) -> dict[str, int]:
    """Runs with a finished checkpoint and no result.json: name -> latest checkpoint step."""
    found = {}
    for rd in (out / "runs").glob("*"):
        steps = [int(p.name) for p in (rd / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and not (rd / "result.json").exists():
            found[rd.name] = max(steps)
    return found


def test_killed_sweep_resumes_to_the_same_table(reference, env, tmp_path):
    ref_out, _ = reference
    ref = lib.read_table(ref_out / "results.csv")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "experiments.chinchilla", "--preset", "smoke", "--out", str(out),
           "--skip-analysis", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    partial: dict[str, int] = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = list((out / "runs").glob("*/result.json")) if (out / "runs").exists() else []
            partial = _partial_runs(out) if len(done) >= 1 else {}
            if partial:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)  # a run is partial from its first checkpoint, a quarter in, to its end
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    partial = _partial_runs(out)  # what the kill left (a save may have completed meanwhile)
    assert partial, "the sweep was not killed in the middle of a run"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    assert len(finished) >= 1

    trained = []
    table = lib.run_study(chinchilla.build_study(chinchilla.PRESETS["smoke"], preset_name="smoke"), out,
                             progress=False, compilation_cache=False, on_run_done=lambda r, res: trained.append(r.name))
    # no finished run trained again; the interrupted ones resumed from their checkpoints
    assert not set(trained) & set(finished)
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")
            if p.parent.name in finished} == finished
    for name, step in partial.items():
        assert json.loads((out / "runs" / name / "result.json").read_text())["resumed_from"] == step > 0
    # the same table as the uninterrupted sweep, losses bitwise
    loss_cols = LOSSES + [c for c in ref.columns if c.startswith("loss_at_")]
    assert list(table["run"]) == list(ref["run"])
    for col in loss_cols:
        np.testing.assert_array_equal(table[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    same = [c for c in ref.columns if c not in ("compile_s", "train_s", "wall_s", "cpu_s", "resumed_from")]
    pd.testing.assert_frame_equal(table[same], ref[same], check_dtype=False, check_exact=True)


# ------------------------------------------------------------------------------ analysis


def test_analysis_report_comes_from_the_table_beside_it(reference, tmp_path):
    from experiments import chinchilla_analysis as ca
    from scaling import fit_law

    out, _ = reference
    result = chinchilla.main(["--preset", "smoke", "--out", str(out), "--analysis-only", "--no-progress",
                              "--bootstrap", "8"])
    numbers = json.loads((out / "fit.json").read_text())
    report = (out / "report.md").read_text()
    for p in result["plots"]:
        assert p.exists() and p.stat().st_size > 0
    assert {p.suffix for p in result["plots"]} == {".png", ".svg"}
    # refit the table on disk with the public API: the report holds exactly these numbers
    table = lib.read_table(out / "results.csv")
    ft = ca.fit_table(table)
    refit = fit_law(ft, law="chinchilla", columns={"N": "N", "D": "D", "C": "budget", "loss": "loss"})
    for k, v in refit.params.items():
        assert numbers["approach3"]["params"][k] == pytest.approx(float(v), rel=1e-9)
        assert ca._fmt(float(v)) in report
    # extrapolation: the law fitted without the largest budget, evaluated on that budget's runs
    ex = numbers["extrapolation"]["approach3"]
    held = ft[ft["budget"] == ft["budget"].max()]
    p = ex["params"]
    pred = p["E"] + p["A"] / held["N"] ** p["alpha"] + p["B"] / held["D"] ** p["beta"]
    np.testing.assert_allclose(ex["rel_errors"], pred / held["loss"] - 1.0, rtol=1e-9, atol=1e-12)
    assert f"{ex['mean_abs_rel_error']:.2%}" in report
    # approach 2 against a NumPy parabola in log N per budget (Hoffmann Sec. 3.2)
    for row in numbers["approach2"]["optima"]:
        g = ft[np.isclose(ft["budget"], row["C"], rtol=1e-6)]
        c2, c1, _ = np.polyfit(np.log(g["N"]), g["loss"], 2)
        if c2 > 0:
            assert math.log(row["N_star"]) == pytest.approx(-c1 / (2 * c2), rel=1e-6)
        else:  # not convex: no minimum
            assert math.isnan(row["N_star"])
    # a synthetic study's report puts the fitted E next to the entropy rate
    assert "Known entropy rate" not in report
    syn = dict(numbers, synthetic={"E_fit": 1.234, "E_interval": [1.0, 1.5], "nats_per_byte": 1.077,
                                   "bits_per_byte": 1.554})
    text = ca.write_report(tmp_path, syn).read_text()
    assert "Fitted E = 1.234 [1, 1.5] nats/token" in text and "1.077 nats/byte (1.554 bits/byte)" in text


def test_synthetic_report_puts_fitted_e_next_to_the_entropy_rate(tmp_path):
    from experiments import chinchilla_analysis as ca
    from lm.data.pipeline import entropy_rate_bits

    study = chinchilla.build_study(chinchilla.PRESETS["smoke"], data="synthetic")
    truth = ca.entropy_floor(study)
    bits = entropy_rate_bits(study.runs[0].data)
    assert truth["nats_per_byte"] == pytest.approx(bits * math.log(2), rel=1e-12)
    assert ca.entropy_floor(chinchilla.build_study(chinchilla.PRESETS["smoke"])) is None


def test_held_out_prediction_and_its_interval_by_brute_force():
    """predict_optimum against a brute-force minimum over N of each law (the fit's and every resample's) at
    the held-out budget's exact FLOPs; the report lines say whether the interval covers, and never print NaN."""
    from types import SimpleNamespace

    table = pd.DataFrame({"N": [2e4, 6e4, 2e5], "flops_per_token": [1.5e5, 4.1e5, 1.3e6]})
    law = {"E": 1.2, "A": 400.0, "B": 2000.0, "alpha": 0.4, "beta": 0.35}
    budgets = [1e11, 2e11, 4e11, 8e11]
    f = chinchilla_analysis.flops_per_token_of_n(table)
    n = np.geomspace(1e2, 1e10, 400_001)

    def brute(p, c):
        return np.min(p["E"] + p["A"] / n ** p["alpha"] + p["B"] / (c / f(n)) ** p["beta"])

    rng = np.random.default_rng(0)
    samples = pd.DataFrame({k: v * np.exp(rng.normal(0, 0.05, 40)) for k, v in law.items()})
    fit = {"approach3": {"params": law}, "approach2": {"optima": [{"C": c, "L_star": brute(law, c)} for c in budgets]}}
    pred = chinchilla.predict_optimum(fit, table, 1.6e12, SimpleNamespace(samples=samples))
    assert pred["approach3"] == pytest.approx(brute(law, 1.6e12), rel=1e-7)
    want = np.percentile([brute(row, 1.6e12) for row in samples.to_dict("records")], [2.5, 97.5])
    np.testing.assert_allclose(pred["approach3_interval"], want, rtol=1e-6)
    assert pred["approach2"] == pytest.approx(brute(law, 1.6e12), rel=1e-3)  # the saturating law through L*(C)
    lines = chinchilla_analysis.held_out_lines(dict(pred), pred["approach3"])
    assert lines[0].endswith("which covers it") and "(+0.00%)" in lines[0]
    lines = chinchilla_analysis.held_out_lines(dict(pred), want[1] * 1.01)
    assert lines[0].endswith("which does NOT cover it")
    ran_off = chinchilla.predict_optimum({**fit, "approach3": {"params": {**law, "A": np.inf}}}, table, 1.6e12)
    lines = chinchilla_analysis.held_out_lines(ran_off, float("nan"))
    assert lines[0].startswith("- approach 3: no prediction") and "nan" not in " ".join(lines).lower()


# ------------------------------------------------------------------ --method wsd, end to end


def test_wsd_method_trains_each_step_once_and_reports_beside_the_grid(reference, monkeypatch):
    """--method wsd on the smoke preset beside the smoke grid: every step counted as it is trained
    (stable runs to their last branch point, each branch from its branch point), the compute ratio
    from that count, the side-by-side report; without the grid's fit, the report says how to get it."""
    from lm.train import compiled

    out, _ = reference
    if not (out / "fit.json").exists():
        chinchilla.main(["--preset", "smoke", "--out", str(out), "--analysis-only", "--no-progress",
                         "--bootstrap", "8"])
    counted: dict[str, int] = {}
    real = compiled.train_step

    def counting(run, *args, **kwargs):
        fn, seconds = real(run, *args, **kwargs)

        def step(*a):
            counted[run.name] = counted.get(run.name, 0) + 1
            return fn(*a)
        return step, seconds

    monkeypatch.setattr(compiled, "train_step", counting)
    argv = ["--preset", "smoke", "--out", str(out), "--method", "wsd", "--no-progress", "--bootstrap", "4"]
    result = chinchilla.main(argv)
    study, wsd_out = result["study"], out / "wsd"
    assert result["out"] == wsd_out and (wsd_out / "results.csv").exists()
    for run in study.runs:  # a branch trains only its cooldown: it restored the stable run at its branch point
        start = run.train.init_from[1] if run.train.init_from else 0
        assert counted[run.name] == run.train.steps - start > 0
    kinds = {study.tags[r.name]["kind"] for r in study.runs if r.train.init_from is None}
    assert kinds == {"stable"}

    def per_step(run):
        return train_flops_per_token(run.model, run.data.seq_len) * run.data.batch_size * run.data.seq_len

    grid_table = lib.read_table(out / "results.csv")
    grid_flops = sum(s * per_step(r) for r, s in zip(chinchilla.build_study(chinchilla.PRESETS["smoke"]).runs,
                                                     grid_table["train.steps"]))
    wsd_flops = sum(counted[r.name] * per_step(r) for r in study.runs)
    cmp = json.loads((wsd_out / "comparison.json").read_text())
    assert cmp["compute"]["ratio"] == pytest.approx(wsd_flops / grid_flops, rel=1e-12)
    # each branch is its grid run's point: same N, D, C
    table = lib.read_table(wsd_out / "results.csv").set_index("run")
    both = [n for n in grid_table["run"] if n in table.index]
    assert both and (table.loc[both, "kind"] == "branch").all()
    for col in ("N", "D", "C"):
        np.testing.assert_array_equal(table.loc[both, col].to_numpy(), grid_table.set_index("run").loc[both, col])
    report = (wsd_out / "report.md").read_text()
    grid_fit = json.loads((out / "fit.json").read_text())
    assert "## WSD vs the grid" in report and f"**WSD / grid = {100 * cmp['compute']['ratio']:.1f}%**" in report
    assert "| quantity | WSD | WSD 95% interval | grid | grid 95% interval |" in report
    assert f"| beta | {cmp['laws']['beta']['wsd']:.4g} |" in report
    assert cmp["laws"]["beta"]["grid"] == grid_fit["approach3"]["params"]["beta"]
    held = max(chinchilla.PRESETS["smoke"].budgets)
    assert cmp["held_out"]["C"] == held and f"Held-out budget C = {held:.4g} FLOPs" in report
    measured = next(o["L_star"] for o in grid_fit["approach2"]["optima"] if o["C"] == pytest.approx(held))
    assert cmp["held_out"]["measured_L_star"] == pytest.approx(measured, nan_ok=True)
    a3 = cmp["held_out"]["approach3"]  # its numbers: test_held_out_prediction_and_its_interval_by_brute_force
    assert (f"- approach 3: {a3:.4f} (" if np.isfinite(a3) else "- approach 3: no prediction (its fit ran off") in report
    # without the grid's results: the report says how to produce them
    (out / "fit.json").rename(out / "fit.json.aside")
    try:
        chinchilla.main([*argv, "--analysis-only"])
    finally:
        (out / "fit.json.aside").rename(out / "fit.json")
    report = (wsd_out / "report.md").read_text()
    assert f"python -m experiments.chinchilla --preset smoke --data stdlib --out {out} --loss val" in report
    assert "| quantity | WSD |" not in report
