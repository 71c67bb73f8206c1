"""Reproduce numbers published with real scaling-law data (shared/data/published).

Porian et al. 2024 (arXiv:2406.19146): isoFLOP exponents; Muennighoff et al. 2023
(arXiv:2305.16264): R_D*, R_N* and the law's check values; Gadre et al. 2024
(arXiv:2403.08540): extrapolation of a 5-point fit. Each target comes from the sidecar .md
or the authors' JSON, never from this package. Skipped when the folder is absent.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import huber

from scaling import constants as K
from scaling import fit_isoflop, fit_law, laws
from scaling.isoflop import optimal_power_laws

# beside the checkout (../shared/data/published); SCALELAB_PUBLISHED overrides (e.g. a worktree)
PUBLISHED = Path(os.environ.get("SCALELAB_PUBLISHED",
                                Path(__file__).resolve().parents[2].parent / "shared/data/published"))
pytestmark = pytest.mark.skipif(not PUBLISHED.is_dir(), reason=f"{PUBLISHED} absent")


@pytest.fixture(scope="module")
def porian():
    points = pd.read_csv(PUBLISHED / "porian2024_isoflop_points.csv")
    optima = pd.read_csv(PUBLISHED / "porian2024_isoflop_optima.csv")
    fits = {d["config_id"]: d for d in json.loads(
        (PUBLISHED / "porian2024_published_fits.json").read_text())}
    return points, optima, fits


def test_porian_power_law_stage_matches_published_exponents(porian):
    """OLS of log N*, log D* on log C over the authors' own optima = their 'basic' fit."""
    _, optima, fits = porian
    for cid, o in optima.groupby("config_id"):
        e = optimal_power_laws(o.rename(columns={"flops": "C", "n_star": "N_star",
                                                 "t_star": "D_star"}))
        assert np.isclose(e["a"], fits[cid]["basic"]["n_exponent"], atol=1e-6), cid
        assert np.isclose(e["b"], fits[cid]["basic"]["t_exponent"], atol=1e-6), cid
        assert np.isclose(e["k_N"], fits[cid]["basic"]["n_coef"], rtol=1e-5), cid


def test_porian_exponents_from_raw_isoflop_points(porian):
    """Approach 2 from the raw points (parabola near each minimum, not the authors' Akima
    interpolation): every configuration's a within 0.04 of the published value, mean
    absolute difference under 0.02, and the Kaplan -> Chinchilla trend of the paper."""
    points, _, fits = porian
    ours = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cid, g in points.groupby("config_id"):
            iso = fit_isoflop(g, columns={"C": "flops", "N": "n", "D": "t"}, n_bootstrap=0,
                              window=3.0)
            ours[cid] = iso.a
            assert abs(iso.a + iso.b - 1.0) < 0.02, cid  # D* ~ C / 6N*
    diffs = np.array([ours[c] - fits[c]["basic"]["n_exponent"] for c in ours])
    assert np.all(np.abs(diffs) < 0.04), dict(zip(ours, diffs.round(4)))
    assert np.mean(np.abs(diffs)) < 0.02
    steps = [ours[f"summary_df:{i}"] for i in range(5)]
    assert steps[0] > 0.8 and steps[-1] < 0.52 and steps[0] > steps[2] > steps[4]


def test_porian_saturating_law_objective_no_worse_than_published(porian):
    """L*(C) = E + A C^-alpha on 1e16 < C < 5e17 (their recipe): our Huber optimum is at
    least as good as the published parameters under the same Huber objective."""
    _, optima, fits = porian
    for cid, o in optima.groupby("config_id"):
        o = o.dropna(subset=["loss_star"])
        o = o[(o["flops"] > 1e16) & (o["flops"] < 5e17)]
        res = fit_law(o, law="saturating", columns={"C": "flops", "loss": "loss_star"},
                      init_grid="porian")
        b = fits[cid]["basic"]
        pred = laws.saturating_power_law(o["flops"], b["E"], b["A"], b["alpha"])
        theirs = huber(1e-3, np.log(pred) - np.log(o["loss_star"])).sum()
        assert res.objective <= theirs * (1 + 1e-9), cid


@pytest.fixture(scope="module")
def muennighoff():
    df = pd.read_csv(PUBLISHED / "muennighoff2023_datablations_c4_runs.csv")
    cols = {"N": "N_params", "D": "D_tokens", "U": "U_unique_tokens", "loss": "val_loss"}
    fixed = dict(E=np.exp(K.MUENNIGHOFF_C4_LOG_E), A=np.exp(K.MUENNIGHOFF_C4_LOG_A),
                 B=np.exp(K.MUENNIGHOFF_C4_LOG_B), alpha=K.MUENNIGHOFF_C4_ALPHA,
                 beta=K.MUENNIGHOFF_C4_BETA)
    return df, cols, fixed


def test_muennighoff_check_values_and_objective(muennighoff):
    df, cols, fixed = muennighoff
    p = dict(fixed, R_D_star=K.MUENNIGHOFF_R_D_STAR, R_N_star=K.MUENNIGHOFF_R_N_STAR)
    # README check values of the datablations repository.
    assert np.isclose(laws.data_constrained(6.34e9, 242e9, 25e9, **p), 2.2256440889984477,
                      rtol=1e-12)
    assert np.isclose(laws.data_constrained(8.67e9, 178e9, 25e9, **p), 2.2269634075087867,
                      rtol=1e-12)
    pred = laws.data_constrained(df["N_params"], df["D_tokens"], df["U_unique_tokens"], **p)
    objective = huber(1e-3, np.log(pred) - np.log(df["val_loss"])).sum()
    assert np.isclose(objective, 0.0158259, rtol=1e-5)  # notebook cell 29


def test_muennighoff_decay_constants(muennighoff):
    """From a start near the paper's values the fit stays at the published local optimum
    (R_D* = 15.39, R_N* = 5.31); the sidecar's lower optimum (R_D* ~ 47, R_N* ~ 2.33,
    objective ~0.1 % lower) is a local optimum too; the grid finds a third, lower one."""
    df, cols, fixed = muennighoff
    local = fit_law(df, law="data_constrained", columns=cols, fixed=fixed,
                    init_grid=np.log([[15.0, 5.0]]))
    assert abs(local.params["R_D_star"] / K.MUENNIGHOFF_R_D_STAR - 1) < 0.01
    assert abs(local.params["R_N_star"] / K.MUENNIGHOFF_R_N_STAR - 1) < 0.01
    assert np.isclose(local.objective, 0.0158259, rtol=1e-4)
    best = fit_law(df, law="data_constrained", columns=cols, fixed=fixed)
    assert best.objective < local.objective * (1 - 5e-4)
    # The sidecar's lower optimum (R_D* ~ 47, R_N* ~ 2.33) is a local optimum here too ...
    sidecar = fit_law(df, law="data_constrained", columns=cols, fixed=fixed, init_grid=np.log([[47.0, 2.33]]))
    assert 40 < sidecar.params["R_D_star"] < 55 and 2.0 < sidecar.params["R_N_star"] < 2.7
    # ... and the grid's best (R_D* ~ 95, R_N* ~ 1.7, reached again from R_D* = 300 and 1000) is lower still.
    assert best.objective <= sidecar.objective * (1 - 1e-4)
    assert 85 < best.params["R_D_star"] < 105 and 1.5 < best.params["R_N_star"] < 1.9
    again = fit_law(df, law="data_constrained", columns=cols, fixed=fixed, init_grid=np.log([[300.0, 1.7], [1e3, 1.5]]))
    assert np.isclose(again.objective, best.objective, rtol=1e-9)


def test_gadre_extrapolation(tmp_path):
    g = pd.read_csv(PUBLISHED / "gadre2024_overtraining_losses.csv")
    g = g[(g["dataset"] == "rpj") & g["eval_set"].str.contains("c4_val")]
    sizes = sorted(g["params"].unique())
    cols = {"N": "params", "D": "tokens", "loss": "loss"}
    mult = g["chinchilla_multiplier"]
    train = g[(g["params"].isin(sizes[:4]) & (mult == 1))
              | ((g["params"] == sizes[0]) & (mult == 16))]
    assert len(train) == 5
    # A 3^4 grid reaches the same optimum as the 900-start grid (checked once; kept small
    # for the test budget).
    grid = {"a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0),
            "alpha": (0.0, 0.5, 1.0)}
    res = fit_law(train, law="chinchilla_tied", columns=cols, init_grid=grid)
    big_1b = g[(g["params"] == sizes[4]) & (mult == 32)]
    big_7b = g[(g["params"] == sizes[5]) & (mult == 1)]
    err_1b = abs(res.predict(big_1b)[0] / big_1b["loss"].iloc[0] - 1)
    err_7b = abs(res.predict(big_7b)[0] / big_7b["loss"].iloc[0] - 1)
    # Published (their least-squares fit of the same 4-parameter law): 0.71 %, 0.73 %.
    assert err_1b < 0.01 and err_7b < 0.01
    # Sidecar: an approach-3 fit on all small-model points under-predicts 6.9B by 3-8 %.
    full = fit_law(g[g["params"].isin(sizes[:4])], law="chinchilla", columns=cols,
                   init_grid="small")
    under = 1 - full.predict(big_7b)[0] / big_7b["loss"].iloc[0]
    assert 0.025 < under < 0.08


GADRE_WHERE = ("dataset == 'rpj' and eval_set.str.contains('c4_val') and ("
               "(params < 1e9 and chinchilla_multiplier == 1) or (params < 2e7 and chinchilla_multiplier == 16)"
               " or (params > 1e9 and params < 2e9 and chinchilla_multiplier == 32)"
               " or (params > 6e9 and chinchilla_multiplier == 1))")


def test_gadre_fit_small_predict_big_is_one_command(tmp_path, capsys):
    """Gadre et al. 2024: fit the 5 small runs, predict the held-out 1.4B (M=640) and 6.9B
    (M=20) runs from one command; published relative errors 0.71 %, 0.73 %."""
    from scaling import cli

    out = tmp_path / "gadre"
    assert cli.main([str(PUBLISHED / "gadre2024_overtraining_losses.csv"), "--law", "chinchilla_tied",
                     "--column", "N=params", "--column", "D=tokens", "--where", GADRE_WHERE,
                     "--holdout", "params > 1e9", "--bootstrap", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 rows" in printed
    pred = pd.read_csv(out / "predictions.csv")
    assert sorted(pred["params"]) == [1439795200, 6889410560]
    assert (pred["rel_error"].abs() < 0.01).all(), pred["rel_error"]
    assert (pred["lower"] <= pred["predicted_loss"]).all() and (pred["predicted_loss"] <= pred["upper"]).all()
    # 5 points for 4 parameters: the warning says the resamples are too small to trust
    assert "of bootstrap resamples have no more distinct points" in printed


def test_porian_weighted_power_law_matches_published():
    """Porian et al. 2024 'weighted' fit: N* = k C^a by least squares in log space with weights
    1/SD(log N*)^2. A Huber delta far above the residuals makes the weighted Huber sum a weighted
    least-squares objective; the power law is kaplan_c (log N* = alpha_C (log C_c - log C), a = -alpha_C)."""
    optima = pd.read_csv(PUBLISHED / "porian2024_isoflop_optima.csv").dropna(subset=["n_star"])
    fits = {d["config_id"]: d for d in json.loads(
        (PUBLISHED / "porian2024_published_fits.json").read_text())}
    grid = {"log_C_c": (10.0, 25.0, 40.0), "alpha_C": (-1.0, -0.5)}
    for cid, o in optima.groupby("config_id"):
        res = fit_law(o.assign(w=1.0 / o["n_star_std"] ** 2), law="kaplan_c", weights="w", huber_delta=10.0,
                      columns={"C": "flops", "loss": "n_star"}, init_grid=grid)
        assert np.isclose(-res.params["alpha_C"], fits[cid]["weighted"]["n_exponent"], atol=1e-6), cid
        plain = fit_law(o, law="kaplan_c", huber_delta=10.0, columns={"C": "flops", "loss": "n_star"},
                        init_grid=grid)
        assert np.isclose(-plain.params["alpha_C"], fits[cid]["basic"]["n_exponent"], atol=1e-6), cid


def test_muennighoff_warnings_fire_when_they_should(muennighoff):
    """Issue 24: with E, A, B, alpha, beta fixed (alpha = beta) the exponent ratios are 0.5 by
    construction (no 'collapsed' warning); R_D*'s interval reaches ~1e13 (a 'running off'
    warning); 1 of the 9 starts reaches the best (a start-grid warning at this grid size)."""
    from scaling.diagnostics import fit_warnings

    df, cols, fixed = muennighoff
    res = fit_law(df, law="data_constrained", columns=cols, fixed=fixed)
    boot = res.bootstrap(n=100, seed=0)
    w = fit_warnings(res, boot)
    assert not any("collapsed" in x for x in w), w
    assert boot.interval("R_D_star")[1] > 1e12
    assert any(x.startswith("R_D_star: its 95% interval") and "running off" in x for x in w), w
    assert res.n_starts == 9 and any(f"only {res.n_at_best} of 9 starts reach" in x for x in w), w


EPOCH = "besiroglu2024_chinchilla_svg_extracted.csv"
# Besiroglu et al. 2024 (arXiv:2404.10102), their data_analysis.ipynb, cell 25: bootstrap SEs
# of the Huber-likelihood fit (4,000 resamples of the 240 runs).
EPOCH_SE = {"E": 0.02566, "A": 124.52232, "alpha": 0.01540, "beta": 0.02060}
# Not yet among shared/data/published: Epoch's data/svg_extracted_data.csv (epoch-research/
# analyzing-chinchilla) under this name, with its sidecar. Until it is added these two tests
# cannot run; SCALELAB_PUBLISHED may point at a folder that holds it.
needs_epoch = pytest.mark.skipif(not (PUBLISHED / EPOCH).is_file(), reason=f"{EPOCH} not in {PUBLISHED}")


def _epoch_table() -> pd.DataFrame:
    """Epoch's 240 runs: D = C / (6 N), less the 5 of highest loss (their notebook, cell 15)."""
    df = pd.read_csv(PUBLISHED / EPOCH)
    df = pd.DataFrame({"N": df["Model Size"], "D": df["Training FLOP"] / (6.0 * df["Model Size"]),
                       "loss": df["loss"]}).dropna()
    df = df[df["loss"] < np.sort(df["loss"].to_numpy())[-5]]
    assert len(df) == 240
    return df


@needs_epoch
def test_epoch_huber_likelihood_bootstrap_sds_match_published():
    """Epoch's 240 runs (the 245 points extracted from Hoffmann et al.'s Fig. 4 less the 5 of
    highest loss), Huber likelihood with delta = 1e-3: the MLE reproduces their estimates and
    the bootstrap SDs are within 15 % of their published SEs.

    400 resamples: the relative sampling error of an SD from n resamples is ~1/sqrt(2n) = 3.5 %
    (normal case), so a 15 % band is > 3 such errors away from the measured 2-7 % differences
    (1,000 resamples: E +1.8 %, A +3.2 %, alpha +4.7 %, beta +3.3 %). B is not checked: its
    SD comes from the far right tail of B = e^b (1,000 resamples: +16 %; a brute-force refit of
    each resample from 243 grid starts gives the same SD as ours, so the difference is their
    single-start refits' tail, not ours)."""
    df = _epoch_table()
    res = fit_law(df, objective="huber_ml", huber_delta=1e-3)
    assert abs(res.params["alpha"] - 0.34781) < 1e-4 and abs(res.params["beta"] - 0.36585) < 1e-4
    boot = res.bootstrap(n=400, seed=0)
    assert boot.failed_fraction <= 0.02, boot.failed_reasons
    for k, se in EPOCH_SE.items():
        sd = boot.intervals.loc[k, "std"]
        assert abs(sd / se - 1) < 0.15, (k, sd, se)


@needs_epoch
def test_epoch_screened_fit_equals_the_full_grid():
    """Screen-then-refine (every start of the 4,500-start grid on 120 of the 240 runs, the 32
    best distinct optima on all of them) reaches the full grid's optimum on Epoch's table."""
    df = _epoch_table()
    full = fit_law(df)
    screened = fit_law(df, screen_rows=120)
    assert screened.screened == 120 and full.screened == 0
    assert abs(screened.objective / full.objective - 1) < 1e-9
    for k, v in full.params.items():
        assert np.isclose(screened.params[k], v, rtol=1e-6), k
