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
