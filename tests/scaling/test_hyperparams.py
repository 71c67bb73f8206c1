"""Hyperparameter laws: OLS on near-optimal runs recovers eta(N, D) and B(D)."""

import numpy as np
import pandas as pd
import pytest

from scaling.hyperparams import fit_bs_law, fit_lr_law, near_optimal


def sweep(c=1.79, a=-0.713, b=0.307, d=0.58, g=0.571):
    """Each (N, D) cell sweeps lr and batch size on grids symmetric (in log) around the
    optimum; loss is quadratic in log lr and log batch size."""
    rows = []
    for N in (1e8, 4e8, 1.6e9):
        for D in (2e9, 2e10, 2e11):
            lr_star, bs_star = c * N**a * D**b, d * D**g
            for i in range(-3, 4):
                for j in range(-2, 3):
                    lr, bs = lr_star * 2.0 ** (i / 2), bs_star * 2.0 ** (j / 2)
                    loss = 2.0 + 0.01 * np.log(lr / lr_star) ** 2 + 0.004 * np.log(bs / bs_star) ** 2
                    rows.append(dict(N=N, D=D, lr=lr, batch_size=bs, loss=loss))
    return pd.DataFrame(rows)


def test_near_optimal_threshold():
    df = pd.DataFrame({"N": [1, 1, 1, 2, 2], "D": [1] * 5, "loss": [1.0, 1.001, 1.01, 2.0, 2.1]})
    sel = near_optimal(df, ["N", "D"], "loss", threshold=0.0025)
    assert list(sel.index) == [0, 1, 3]


def test_recovers_lr_and_batch_size_laws():
    df = sweep()
    lr = fit_lr_law(df, threshold=1e-4)
    assert np.isclose(lr["a"], -0.713, atol=1e-9) and np.isclose(lr["b"], 0.307, atol=1e-9)
    assert np.isclose(lr["c"], 1.79, rtol=1e-8)
    # A wider threshold keeps runs symmetric around the optimum: still unbiased.
    lr_wide = fit_lr_law(df, threshold=0.01)
    assert lr_wide["n_runs"] > lr["n_runs"] and np.isclose(lr_wide["a"], -0.713, atol=1e-9)
    bs = fit_bs_law(df, threshold=1e-4)
    assert np.isclose(bs["g"], 0.571, atol=1e-9) and np.isclose(bs["d"], 0.58, rtol=1e-8)


def test_bad_table_raises():
    df = sweep().drop(columns=["lr"])
    with pytest.raises(ValueError, match="missing column 'lr'"):
        fit_lr_law(df)
    df = sweep()
    df.loc[4, "loss"] = np.nan
    with pytest.raises(ValueError, match=r"bad rows \[4\]"):
        fit_bs_law(df)


def test_bootstrap_filters_once_then_resamples_kept_runs():
    """The authors' scheme: the near-optimal filter is applied once; resamples draw from the
    kept runs only (every sample equals the OLS of some multiset of them)."""
    from scaling.hyperparams import fit_hyper_law

    rng = np.random.default_rng(0)
    df = sweep()
    df["loss"] *= np.exp(rng.normal(0, 2e-4, len(df)))
    fit = fit_hyper_law(df, "lr_opt", threshold=0.003, n_bootstrap=200, seed=1)
    kept = near_optimal(df, ["N", "D"], "loss", 0.003)
    pd.testing.assert_frame_equal(fit.kept[["N", "D", "lr"]], kept[["N", "D", "lr"]])
    iv = fit.boot.intervals
    assert set(iv.columns) >= {"estimate", "mean", "std", "lower", "upper"}
    assert iv.loc["a", "lower"] <= fit.params["a"] <= iv.loc["a", "upper"]
    assert iv.loc["a", "std"] > 0 and len(fit.boot.samples) == 200 - fit.boot.n_failed
    with pytest.raises(ValueError, match="n_bootstrap=-3"):
        fit_hyper_law(df, "lr_opt", n_bootstrap=-3)


@pytest.mark.parametrize("law, truth", [
    ("bs_opt_nd", {"d": 0.58, "h": 0.0, "g": 0.571}),
    ("lr_opt_c", None),
    ("bs_opt_c", None),
])
def test_other_forms(law, truth):
    from scaling.hyperparams import fit_hyper_law

    if truth is not None:
        fit = fit_hyper_law(sweep(), law, threshold=1e-4)
        for k, v in truth.items():
            assert np.isclose(fit.params[k], v, atol=1e-9, rtol=1e-8), k
        return
    # DeepSeek: eta(C) = c C^a and B(C) = d C^g on cells of compute budgets C
    rows = []
    for C in (1e18, 1e19, 1e20, 1e21):
        lr_star, bs_star = 0.3118 * C ** -0.125, 0.292 * C ** 0.3271
        for i in range(-2, 3):
            rows.append(dict(C=C, lr=lr_star * 2.0 ** i, batch_size=bs_star * 2.0 ** -i,
                             loss=2.0 + 0.01 * i * i))
    fit = fit_hyper_law(pd.DataFrame(rows), law, threshold=1e-4)
    expect = {"lr_opt_c": {"c": 0.3118, "a": -0.125}, "bs_opt_c": {"d": 0.292, "g": 0.3271}}[law]
    for k, v in expect.items():
        assert np.isclose(fit.params[k], v, rtol=1e-8, atol=1e-10), k


def test_single_value_and_cli(tmp_path, capsys):
    from scaling import cli
    from scaling.hyperparams import fit_hyper_law

    one_n = sweep()
    one_n = one_n[one_n["N"] == 1e8]
    fit = fit_hyper_law(one_n, "lr_opt", threshold=1e-4)
    assert any("all N equal" in w for w in fit.warnings)
    csv = tmp_path / "sweep.csv"
    sweep().rename(columns={"batch_size": "B_tokens"}).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert cli.main([str(csv), "--law", "bs_opt", "--column", "batch_size=B_tokens", "--threshold", "1e-4",
                     "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| g | 0.571 |" in printed and "bootstrap SD" in printed
    assert len(pd.read_csv(out / "samples.csv")) == 50 and (out / "report.md").exists()


def test_bootstrap_mean_is_taken_in_log_space_and_cli_says_so(tmp_path, capsys):
    """Step Law averages the log-space OLS coefficients: the prefactor's bootstrap mean is
    exp(mean log c), not the plain mean (which a few large intercepts pull up)."""
    from scaling import cli
    from scaling.outputs import read_fit_json

    rng = np.random.default_rng(3)
    df = sweep()
    df["loss"] *= np.exp(rng.normal(0, 3e-3, len(df)))
    csv, out = tmp_path / "sweep.csv", tmp_path / "out"
    df.to_csv(csv, index=False)
    assert cli.main([str(csv), "--law", "lr_opt", "--threshold", "0.01", "--bootstrap", "200",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    c = pd.read_csv(out / "samples.csv")["c"].to_numpy()
    log_mean, plain = np.exp(np.mean(np.log(c))), np.mean(c)
    assert plain > log_mean * 1.01  # the two differ on this sweep: the test can tell them apart
    assert "| c | " in printed and f"| {log_mean:.6g} |" in printed
    assert (f"for c, exp(mean log c) = {log_mean:.6g}; the plain average of c is {plain:.6g}") in printed
    doc = read_fit_json(out / "fit.json")
    assert np.isclose(doc["extra"]["bootstrap_mean"]["c"], log_mean, rtol=1e-12)
    a = pd.read_csv(out / "samples.csv")["a"]
    assert np.isclose(doc["extra"]["bootstrap_mean"]["a"], a.mean(), rtol=1e-12)
    assert doc["objective"]["kind"] == "ols_log" and doc["bootstrap"]["n"] == 200 and doc["extra"]["n_table"] == len(df)
    kept = near_optimal(df, ["N", "D"], "loss", 0.01)
    design = np.column_stack([np.ones(len(kept)), np.log(kept["N"]), np.log(kept["D"])])
    _, rss, *_ = np.linalg.lstsq(design, np.log(kept["lr"]), rcond=None)
    assert doc["n"] == len(kept) and np.isclose(doc["objective"]["value"], rss[0], rtol=1e-8)
    assert "mean of the log-space OLS coefficients (Step Law)" in (out / "report.md").read_text()


def test_batch_sizes_in_sequences(tmp_path, capsys):
    """--batch-unit sequences --seq-len L fits a table counting sequences as the same table in
    tokens: B_tokens = L * B_sequences."""
    from scaling import cli
    from scaling.hyperparams import fit_hyper_law

    df = sweep()
    in_tokens = fit_hyper_law(df, "bs_opt", threshold=1e-4)
    seqs = df.assign(batch_size=df["batch_size"] / 512)
    in_seqs = fit_hyper_law(seqs, "bs_opt", threshold=1e-4, seq_len=512)
    for k in ("d", "g"):
        assert np.isclose(in_seqs.params[k], in_tokens.params[k], rtol=1e-10), k
    assert not np.isclose(fit_hyper_law(seqs, "bs_opt", threshold=1e-4).params["d"], in_tokens.params["d"])
    with pytest.raises(ValueError, match="seq_len=0: must be an integer >= 1"):
        fit_hyper_law(seqs, "bs_opt", seq_len=0)
    csv = tmp_path / "seqs.csv"
    seqs.to_csv(csv, index=False)
    assert cli.main([str(csv), "--law", "bs_opt", "--threshold", "1e-4", "--batch-unit", "sequences",
                     "--seq-len", "512"]) == 0
    printed = capsys.readouterr().out
    assert "batch sizes read in sequences of 512 tokens" in printed
    assert f"| d | {in_tokens.params['d']:.6g} |" in printed and "| g | 0.571 |" in printed
