"""experiments.mup_transfer: optimum / drift / prediction / seeds on known tables (``mup_transfer_analysis``); a tiny
grid end to end (shards, resume)."""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd
import pytest

from experiments import lib, mup_transfer
from experiments import mup_transfer_analysis as analysis
from lm.train.sweep import train_vmapped

TINY = mup_transfer.Preset(base_width=8, learning_rates=(4e-3, 1.6e-2, 6.4e-2), steps=4, num_layers=1, seq_len=16,
                           batch_size=4, eval_batches=1)


def test_optimum_vertex_and_interval():
    lrs = 1e-3 * 2.0 ** np.arange(6)
    losses = 3.0 + 0.1 * (np.log2(lrs) - np.log2(4.5e-3)) ** 2
    o = analysis.optimum(lrs, losses, threshold=0.03)
    assert o["lr_opt"] == pytest.approx(4.5e-3, rel=1e-6)  # the parabola is exact here
    assert o["best_lr"] == 4e-3 and not o["on_edge"]
    assert (o["lr_lo"], o["lr_hi"]) == (4e-3, 8e-3)  # 8e-3 is 2.2% above the best, 2e-3 4.5%
    diverged = analysis.optimum(lrs, np.where(lrs > 1e-2, np.nan, losses), threshold=0.0)
    assert diverged["best_lr"] == 4e-3


def test_drift_and_prediction_from_a_known_table():
    lrs = [1e-3 * 2**i for i in range(5)]
    rows = []
    for par, shift in (("sp", -1.0), ("mup", 0.0)):  # SP's optimum halves per width doubling
        for k, width in enumerate((8, 16, 32, 64)):
            N = 1000 * 4**k
            best = np.log2(4e-3) + shift * k
            rows.append({"parametrization": par, "width": width, "N": N,
                         **analysis.optimum(np.array(lrs), 2.0 + 50 * N**-0.5 + 0.05 * (np.log2(lrs) - best) ** 2,
                                                0.01)})
    opt = pd.DataFrame(rows)
    drift = analysis.drift_steps(opt, lrs)
    assert drift["mup"] == pytest.approx(0.0, abs=1e-9)
    assert drift["sp"] < -1.5
    pred = analysis.predict_widest(opt, "mup", n_bootstrap=0)
    assert abs(pred["rel_error"]) < 1e-3  # L(N) = 2 + 50 N^-1/2 exactly
    assert pred["points"] == 3 and np.isnan(pred["lower"])  # no bootstrap: no interval


def test_prediction_interval_of_seven_noisy_widths():
    """Half-octave widths: 6 points over-determine L(N); noise of 0.2% gives a finite interval around the truth."""
    rng = np.random.default_rng(1)
    widths = [round(16 * m) for m in (1, 1.5, 2, 3, 4, 6, 8)]
    N = np.array([24 * w**2 for w in widths], float)
    truth = 1.5 + 30 * N**-0.4
    opt = pd.DataFrame({"parametrization": "mup", "width": widths, "N": N.astype(int),
                        "best_loss": truth * (1 + 0.002 * rng.standard_normal(len(N)))})
    pred = analysis.predict_widest(opt, "mup", n_bootstrap=50)
    assert pred["points"] == 6 and pred["N"] == int(N[-1])
    assert pred["lower"] < pred["predicted"] < pred["upper"]
    assert pred["lower"] < truth[-1] < pred["upper"]
    assert pred["rel_error"] == pytest.approx(pred["predicted"] / pred["actual"] - 1)
    assert pred["covered"] == (pred["lower"] <= pred["actual"] <= pred["upper"])
    assert abs(pred["predicted"] / truth[-1] - 1) < 0.01 and pred["max_residual"] < 0.01


def test_compute_sums_flops_and_seconds_per_parametrization():
    table = pd.DataFrame({"run": list("abcd"), "parametrization": ["sp", "sp", "mup", "mup"],
                          "C": [1e9, 2e9, 3e9, 4e9], "wall_s": [1.0, 2.0, 3.0, 4.0],
                          "cpu_s": [0.5, 0.5, np.nan, np.nan], "compile_s": 0.1, "train_s": 0.2})
    cost = analysis.compute(table).set_index("parametrization")
    assert cost.loc["sp", "runs"] == 2 and cost.loc["sp", "flops"] == 3e9 and cost.loc["mup", "flops"] == 7e9
    assert cost.loc["mup", "wall_s"] == 7.0 and cost.loc["sp", "cpu_s"] == 1.0
    assert np.isnan(cost.loc["mup", "cpu_s"])  # records older than cpu_s: unknown, not 0


def test_default_preset_widths_and_zero_readout():
    preset = mup_transfer.PRESETS["default"]
    assert preset.widths == (16, 24, 32, 48, 64, 96, 128) and preset.widths[-1] == 8 * preset.widths[0]
    ratios = np.diff(np.log2(preset.learning_rates))
    assert np.allclose(ratios, 1.0, atol=0.01)  # octave steps
    with pytest.raises(ValueError, match="not an integer width"):
        mup_transfer.Preset(base_width=16, learning_rates=(1e-3, 2e-3, 4e-3), steps=4, multipliers=(1, 1.3, 2))
    study, _ = mup_transfer.build_study(TINY.replace(zero_readout=True), "transformer")
    zero = {study.tags[r.name]["parametrization"] for r in study.runs if r.model.mup_zero_readout}
    assert zero == {"mup"}


def test_zero_readout_of_a_tied_family_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exc:
        mup_transfer.main(["--preset", "smoke", "--family", "griffin", "--zero-readout", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "mup_zero_readout" in err
    assert not out.exists()


def test_tiny_grid_end_to_end_with_shards(tmp_path):
    study, groups = mup_transfer.build_study(TINY, "transformer")
    assert len(study.runs) == 2 * 4 * 3 and len(groups) == 8
    # Each group's 3 runs in one vmap (width 0): on a CPU the default loop width 2 leaves a remainder of 1,
    # traced and compiled as a second copy of the step in every one of the 8 programs (about a third of this
    # test's CPU). The grid's bookkeeping checked here (shards, resume, table, analysis) is the same either way;
    # tests/lm/test_vmap_sweep.py checks that every width trains the same numbers.
    train = functools.partial(train_vmapped, width=0)
    for shard in ((0, 2), (1, 2)):
        lib.run_study(study, tmp_path, shard=shard, groups=groups, train_group=train, progress=False,
                      compilation_cache=False)
    table = lib.run_study(study, tmp_path, groups=groups, train_group=train, progress=False,
                          compilation_cache=False)  # resumes: all done
    assert (table["status"] == "complete").all() and len(table) == 24
    result = mup_transfer.analyze(study, table, tmp_path, threshold=TINY.threshold, bootstrap=10)
    assert set(result["drift"]) == {"sp", "mup"} and len(result["optima"]) == 8
    assert np.isfinite(result["prediction"]["mup"]["predicted"])
    for name in ("transfer.png", "prediction.png", "report.md", "optima.csv", "summary.json", "compute.csv"):
        assert (tmp_path / name).exists()
    report = (tmp_path / "report.md").read_text()
    assert "Loss prediction" in report and "## Compute" in report
    cost = result["compute"].set_index("parametrization")
    assert cost.loc["mup", "flops"] == pytest.approx(table.loc[table["parametrization"] == "mup", "C"].sum())
    assert (cost["cpu_s"] > 0).all() and (cost["runs"] == 12).all()


def test_saved_study_is_rebuilt_with_its_zero_readout(tmp_path):
    import json

    for zero in (False, True):
        study, _ = mup_transfer.build_study(mup_transfer.PRESETS["smoke"].replace(zero_readout=zero), "transformer",
                                            "smoke")
        (tmp_path / "study.json").write_text(json.dumps(study.manifest()))
        again, preset = mup_transfer.saved_study(tmp_path)
        assert preset.zero_readout == zero and again.fingerprint() == study.fingerprint()
    (tmp_path / "study.json").write_text(json.dumps({**study.manifest(), "fingerprint": "0" * 16}))
    with pytest.raises(ValueError, match="fingerprint differs"):
        mup_transfer.saved_study(tmp_path)


def test_readout_flags(tmp_path, capsys):
    """``--random-readout`` sets the preset's zero_readout to False (μP runs with a random readout), ``--zero-readout``
    to True; both together are refused in one line, before anything is written."""
    parse = lambda *a: mup_transfer.COMMAND.overrides(mup_transfer.COMMAND.parser().parse_args(list(a)))  # noqa: E731
    assert parse("--random-readout") == {"zero_readout": False, "seeds": None}
    assert parse("--zero-readout") == {"zero_readout": True, "seeds": None}
    assert parse() == {"zero_readout": None, "seeds": None}  # the model's default, the preset's seeds
    from lm.model.parametrization import zero_readout

    for zero, expected in ((False, set()), (None, {"mup"})):  # None: the μP default for an untied head, zero
        study, _ = mup_transfer.build_study(TINY.replace(zero_readout=zero), "transformer")
        assert {study.tags[r.name]["parametrization"] for r in study.runs if zero_readout(r.model)} == expected
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exc:
        mup_transfer.main(["--preset", "smoke", "--zero-readout", "--random-readout", "--out", str(out)])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exc:  # a tied head has no readout of its own: the flag would change nothing
        mup_transfer.main(["--preset", "smoke", "--family", "griffin", "--random-readout", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "tied head" in err and not out.exists()


def _seed_table(seeds: int, noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """A known grid: loss 2 + 20 N^-0.3 + 0.05 (log2 lr - log2 8e-3)^2 per width, plus each seed's own offset."""
    rng = np.random.default_rng(seed)
    rows = []
    for par in ("sp", "mup"):
        for width in (8, 16, 32, 64):
            N = 12 * width**2
            offsets = noise * rng.standard_normal(seeds)  # one init seed's luck, the same at every lr
            for lr in (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2):
                for s in range(seeds):
                    loss = 2 + 20 * N**-0.3 + 0.05 * (np.log2(lr) - np.log2(8e-3)) ** 2 + offsets[s]
                    rows.append({"run": f"{par}-d{width}-lr{lr:.3g}-s{s}", "parametrization": par, "width": width,
                                 "lr": lr, "seed": s, "status": "complete", "final_val_loss": loss,
                                 "N_non_embedding": N, "C": 1e9, "wall_s": 1.0, "cpu_s": 1.0, "compile_s": 0.1,
                                 "train_s": 0.5})
    return pd.DataFrame(rows)


def test_seed_means_average_each_point_and_refuse_a_diverged_seed():
    table = _seed_table(seeds=3)
    means = analysis.seed_means(table).set_index(["parametrization", "width", "lr"])
    point = table[(table["parametrization"] == "mup") & (table["width"] == 16) & (table["lr"] == 8e-3)]
    assert means.loc[("mup", 16, 8e-3), "final_val_loss"] == pytest.approx(point["final_val_loss"].mean(), rel=1e-12)
    assert means.loc[("mup", 16, 8e-3), "loss_se"] == pytest.approx(point["final_val_loss"].std(ddof=1) / np.sqrt(3))
    assert (means["seeds"] == 3).all() and (means["status"] == "complete").all() and len(means) == 2 * 4 * 5
    # one seed diverging at the best lr makes that lr unusable for the width: the optimum moves to a neighbour
    bad = table.index[(table["parametrization"] == "mup") & (table["width"] == 16) & (table["lr"] == 8e-3)
                      & (table["seed"] == 1)]
    broken = table.copy()
    broken.loc[bad, ["status", "final_val_loss"]] = ["diverged", np.nan]
    row = analysis.seed_means(broken).set_index(["parametrization", "width", "lr"]).loc[("mup", 16, 8e-3)]
    assert row["status"] == "diverged" and np.isnan(row["final_val_loss"])
    opt = analysis.optima(broken, threshold=0.01).set_index(["parametrization", "width"])
    assert opt.loc[("mup", 16), "best_lr"] != 8e-3 and opt.loc[("mup", 32), "best_lr"] == 8e-3
    # a table written before seeds (no seed column): one seed per point, no standard error
    old = analysis.optima(_seed_table(seeds=1).drop(columns="seed"), threshold=0.01)
    assert (old["seeds"] == 1).all() and old["best_loss_se"].isna().all()


def test_seeds_average_out_the_noise_of_the_prediction():
    """The widest width's loss predicted from seed means: the error shrinks as seeds are added (same truth, same
    per-seed noise), and the report states the seeds and the standard errors."""
    truth = 2 + 20 * (12 * 64**2) ** -0.3

    def error(seeds):
        errs = [analysis.predict_widest(analysis.optima(_seed_table(seeds, seed=k), 0.01), "mup",
                                            n_bootstrap=0) for k in range(20)]
        return np.sqrt(np.mean([(e["actual"] / truth - 1) ** 2 for e in errs]))

    assert error(8) < 0.6 * error(1)  # the observed widest loss's noise falls as seeds^-1/2
    opt = analysis.optima(_seed_table(4), 0.01)
    pred = analysis.predict_widest(opt, "mup", n_bootstrap=0)
    assert pred["actual_se"] == pytest.approx(opt.set_index(["parametrization", "width"]).loc[("mup", 64),
                                                                                            "best_loss_se"])


def test_analysis_of_a_seeded_table_reports_means_and_standard_errors(tmp_path):
    study, _ = mup_transfer.build_study(TINY.replace(seeds=2), "transformer")
    result = mup_transfer.analyze(study, _seed_table(2), tmp_path, threshold=0.01, bootstrap=10)
    report = (tmp_path / "report.md").read_text()
    assert "2 init seeds per point" in report and " ± " in report
    assert (result["optima"]["seeds"] == 2).all() and result["optima"]["best_loss_se"].notna().all()
    assert (tmp_path / "transfer.png").exists()


def test_seeds_grid_names_groups_and_saved_study(tmp_path):
    import dataclasses
    import json

    one, groups1 = mup_transfer.build_study(TINY, "transformer")
    assert not any(re.search(r"-s\d+$", r.name) for r in one.runs) and {one.tags[r.name]["seed"] for r in one.runs} == {0}
    two, groups2 = mup_transfer.build_study(TINY.replace(seeds=2), "transformer")
    assert len(two.runs) == 2 * len(one.runs) and len(groups2) == len(groups1) == 8  # seeds share the lr group
    assert {r.train.seed for r in two.runs} == {0, 1} and all(r.name.endswith(("-s0", "-s1")) for r in two.runs)
    assert two.fingerprint() != one.fingerprint() and two.meta["seeds"] == 2
    # the step draws from the seed (MoE router jitter): one group per seed, as lm.train.sweep.check_sweep requires
    run = dataclasses.replace(two.runs[0], model=dataclasses.replace(
        two.runs[0].model, moe_every=1, moe=dataclasses.replace(two.runs[0].model.moe, router_jitter=0.1)))
    split = mup_transfer._groups(run, TINY.replace(seeds=3))
    assert len(split) == 3 and [{r.train.seed for r in g} for g in split] == [{0}, {1}, {2}]
    # a saved study rebuilds with its seeds; one written before seeds (no "seeds" in its meta) with one
    study, _ = mup_transfer.build_study(mup_transfer.PRESETS["smoke"].replace(seeds=2), "transformer", "smoke")
    (tmp_path / "study.json").write_text(json.dumps(study.manifest()))
    again, preset = mup_transfer.saved_study(tmp_path)
    assert preset.seeds == 2 and again.fingerprint() == study.fingerprint()
    study, _ = mup_transfer.build_study(mup_transfer.PRESETS["smoke"], "transformer", "smoke")
    manifest = study.manifest()
    del manifest["meta"]["seeds"]
    (tmp_path / "study.json").write_text(json.dumps(manifest))
    assert mup_transfer.saved_study(tmp_path)[1].seeds == 1


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_seeds_flag_is_checked(value, tmp_path, capsys):
    parse = lambda *a: mup_transfer.COMMAND.overrides(mup_transfer.COMMAND.parser().parse_args(list(a)))  # noqa: E731
    assert parse("--seeds", "3")["seeds"] == 3
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exc:
        mup_transfer.main(["--preset", "smoke", "--seeds", value, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--seeds" in err and "integer >= 1" in err and not out.exists()
    with pytest.raises(ValueError, match="Preset.seeds"):
        TINY.replace(seeds=0)
