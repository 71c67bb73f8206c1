"""Plots, report and command line produce their files from a fit."""

import numpy as np
import pytest

from scaling import cli, fit_isoflop, fit_law, laws, plots
from scaling.law_specs import LAWS
from scaling.report import write_report
from tests.scaling.helpers import chinchilla_table
from tests.scaling.test_isoflop import isoflop_table


@pytest.fixture(scope="module")
def fitted():
    table = chinchilla_table(m=60, noise=3e-3, seed=11)
    res = fit_law(table, init_grid="small")
    return table, res, res.bootstrap(n=30, seed=0, budgets=[1e21])


def test_plots_and_report(fitted, tmp_path):
    table, res, boot = fitted
    iso = fit_isoflop(isoflop_table(noise=1e-3), n_bootstrap=20)
    paths = []
    paths += plots.plot_loss_vs_compute(res, table, tmp_path, boot=boot)
    paths += plots.plot_isoflop(iso, tmp_path)
    paths += plots.plot_optimal_allocation(tmp_path, iso=iso, result=res, boot=boot)
    paths += plots.plot_residuals(res, tmp_path)
    paths += plots.plot_contours(res, tmp_path)
    assert len(paths) == 10
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<?xml" in head
    report = write_report(res, tmp_path, boot=boot, iso=iso, figures=paths).read_text()
    for name in ("alpha", "beta", "N_opt(C=1e+21)", "95% interval", "approach 2",
                 "![residuals](residuals.png)"):
        assert name in report
    lo, hi = boot.interval("alpha")
    assert f"[{lo:.6g}, {hi:.6g}]" in report


def test_plots_under_exact_flops_per_token(fitted, tmp_path, monkeypatch):
    # C = f(N) D instead of 6ND: the drawn frontier is the constrained optimum under f, and the
    # 20-tokens-per-parameter reference solves f(N) * 20 N = C.
    table, res, boot = fitted
    f = lambda n: 6.0 * n * (1.0 + 3e4 / np.sqrt(n))  # attention-like overhead, larger for small N
    paths = plots.plot_loss_vs_compute(res, table, tmp_path, boot=boot, flops_per_token=f)
    paths += plots.plot_optimal_allocation(tmp_path, result=res, boot=boot, C_range=(1e18, 1e23), flops_per_token=f)
    paths += plots.plot_contours(res, tmp_path, flops_per_token=f)
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    # the drawn reference line (with isoFLOP power laws on the same axes) solves f(N) 20 N = C
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out_dir, name: figs.append(fig) or [])
    plots.plot_optimal_allocation(tmp_path, iso=fit_isoflop(isoflop_table(noise=1e-3), n_bootstrap=0), result=res,
                                  C_range=(1e18, 1e23), flops_per_token=f)
    (line,) = [ln for ln in figs[0].axes[0].get_lines() if ln.get_label() == "20 tokens/param"]
    c, n = line.get_data()
    np.testing.assert_allclose(f(n) * 20.0 * n, c, rtol=1e-5)
    C = np.geomspace(1e18, 1e23, 7)
    n20 = plots._n_at_tokens_per_param(C, f, 20.0)
    np.testing.assert_allclose(f(n20) * 20.0 * n20, C, rtol=1e-5)
    p = res.params
    loss_f = plots._frontier(p, res.law.name, C, f)
    loss_6 = plots._frontier(p, res.law.name, C)
    n_ref, d_ref = laws.compute_optimal_allocation(C, lambda n, d: laws.chinchilla(n, d, **p), flops_per_token=f)
    np.testing.assert_allclose(loss_f, laws.chinchilla(n_ref, d_ref, **p), rtol=1e-7)
    assert np.all(loss_f > loss_6)  # more FLOPs per token: fewer tokens at each budget


def test_cli_help_lists_laws(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for law in LAWS:
        assert law in out
    for opt in ("--law", "--bootstrap", "--out", "--column", "--fix"):
        assert opt in out


def test_cli_fit_writes_outputs(fitted, tmp_path, capsys):
    table, res, _ = fitted
    csv = tmp_path / "runs.csv"
    table.rename(columns={"loss": "val"}).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert cli.main([str(csv), "--init-grid", "small", "--column", "loss=val", "--bootstrap",
                     "20", "--budget", "1e21", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| alpha |" in printed and f"{res.params['alpha']:.6g}" in printed
    assert (out / "report.md").exists() and (out / "contours.svg").exists()
    assert np.isfinite(res.objective)


@pytest.fixture
def no_rendering(monkeypatch):
    """Figures are built (every plotting function runs) but not rendered to files: rendering
    takes seconds per figure and is covered above; returns the names of the figures."""
    names = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out_dir, name: names.append(name) or [])
    return names


def test_fit_json_matches_the_fit_and_its_samples(fitted, tmp_path, capsys, no_rendering):
    """fit.json carries the law, objective, n, parameters, SDs, percentile intervals with their
    level, warnings and the bootstrap's counts; checked against samples.csv and the fit."""
    import re

    import pandas as pd

    from scaling.outputs import read_fit_json

    table, res, _ = fitted
    csv = tmp_path / "runs.csv"
    pd.concat([table, table.iloc[:2]]).to_csv(csv, index=False)  # 2 duplicate rows: a warning
    out = tmp_path / "out"
    assert cli.main([str(csv), "--init-grid", "small", "--bootstrap", "20", "--level", "0.9",
                     "--budget", "1e21", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = read_fit_json(out / "fit.json")
    assert doc["law"] == "chinchilla" and doc["n"] == len(table) + 2
    # the printed objective has >= 8 significant digits and equals the record's
    shown = re.search(r"objective (\S+) \(huber\)", printed).group(1)
    assert len(shown.split("e")[0].replace(".", "").lstrip("0-")) >= 8
    assert doc["objective"]["kind"] == "huber" and doc["objective"]["huber_delta"] == 1e-3
    assert np.isclose(float(shown), doc["objective"]["value"], rtol=1e-9)
    samples = pd.read_csv(out / "samples.csv", index_col="resample")
    assert doc["bootstrap"]["n"] == 20 and doc["bootstrap"]["n_failed"] == 20 - len(samples)
    assert doc["bootstrap"]["seed"] == 0 and doc["intervals"]["level"] == 0.9
    for k in ("E", "alpha", "beta", "N_opt(C=1e+21)"):
        lo, hi = np.percentile(samples[k], [5, 95])
        assert np.allclose(doc["intervals"]["bounds"][k], (lo, hi), rtol=1e-12), k
        assert np.isclose(doc["sd"][k], samples[k].std(ddof=1), rtol=1e-10), k
    assert set(doc["parameters"]) == {"E", "A", "B", "alpha", "beta"}
    assert "N_opt(C=1e+21)" in doc["derived"] and doc["fixed_by_construction"] == []
    warned = [line[len("warning: "):] for line in printed.splitlines() if line.startswith("warning: ")]
    assert doc["warnings"] == warned
    assert any("2 rows duplicate another row" in w for w in warned)
    assert "2 rows duplicate another row" in (out / "report.md").read_text()


def test_fit_json_without_bootstrap_and_fixed(tmp_path):
    import json

    from scaling.fit_json import fit_record, write_fit_json
    from scaling.outputs import read_fit_json
    from tests.scaling.helpers import TRUE, theta_of

    res = fit_law(chinchilla_table(m=20, seed=4), init_grid=theta_of(TRUE)[None, :4], fixed={"beta": 0.37})
    rec = fit_record(res, None, ["w1"], table="t.csv", where="N > 1", budgets=[1e20])
    path = write_fit_json(tmp_path / "fit.json", rec)
    doc = read_fit_json(path)
    assert doc["sd"] is None and doc["intervals"] is None and doc["bootstrap"] is None
    assert doc["fixed"] == {"beta": 0.37} and doc["where"] == "N > 1" and doc["warnings"] == ["w1"]
    p = res.params
    assert np.isclose(doc["derived"]["a=beta/(alpha+beta)"], p["beta"] / (p["alpha"] + p["beta"]))
    assert "N_opt(C=1e+20)" in doc["derived"]
    import scaling

    assert scaling.read_fit_json(path) == doc
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not a fit.json"):
        read_fit_json(tmp_path / "other.json")
    (tmp_path / "new.json").write_text(json.dumps({**rec, "version": 99}))
    with pytest.raises(ValueError, match="version 99; this code reads versions 1 to 1"):
        read_fit_json(tmp_path / "new.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable fit.json"):
        read_fit_json(tmp_path / "bad.json")


def test_fit_json_records_every_scalar_bootstrap_field(fitted):
    """Fields added to BootstrapResult later (e.g. a degenerate fraction) appear in fit.json."""
    import dataclasses

    from scaling.bootstrap import BootstrapResult
    from scaling.fit_json import bootstrap_record

    @dataclasses.dataclass(frozen=True)
    class Richer(BootstrapResult):
        degenerate_fraction: float = 0.25
        n_degenerate: int = 5

    _, _, boot = fitted
    rich = Richer(**{f.name: getattr(boot, f.name) for f in dataclasses.fields(BootstrapResult)})
    rec = bootstrap_record(rich, seed=3)
    assert rec == {"seed": 3, "level": 0.95, "n": 30, "n_failed": boot.n_failed,
                   "starts": boot.starts, "degenerate_fraction": 0.25, "n_degenerate": 5}


@pytest.mark.parametrize("objective", sorted(__import__("scaling.fitting").fitting.OBJECTIVES))
def test_every_objective_writes_its_outputs(fitted, tmp_path, capsys, objective, no_rendering):
    """Smoke: each objective with --out (huber_ml's sigma once crashed the contour plot)."""
    from scaling.outputs import read_fit_json

    table, _, _ = fitted
    csv = tmp_path / "runs.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "out"
    # the shapes of the fits above (60 rows, the small grid, 20 resamples): compiled once
    assert cli.main([str(csv), "--objective", objective, "--init-grid", "small", "--bootstrap", "20",
                     "--out", str(out)]) == 0
    doc = read_fit_json(out / "fit.json")
    assert doc["objective"]["kind"] == objective and doc["starts"]["n"] == 243
    assert ("sigma" in doc["parameters"]) == (objective == "huber_ml")
    assert no_rendering == ["loss_vs_compute", "residuals", "contours", "optimal_allocation"]
    for name in ("report.md", "samples.csv", "fit.json"):
        assert (out / name).stat().st_size > 0, name
