"""experiments.mup_transfer: optimum / drift / prediction on known curves; a tiny grid end to end (shards, resume)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from experiments import lib, mup_transfer
from lm.train.sweep import train_vmapped

TINY = mup_transfer.Preset(base_width=8, learning_rates=(4e-3, 1.6e-2, 6.4e-2), steps=4, num_layers=1, seq_len=16,
                           batch_size=4, eval_batches=1)


def test_optimum_vertex_and_interval():
    lrs = 1e-3 * 2.0 ** np.arange(6)
    losses = 3.0 + 0.1 * (np.log2(lrs) - np.log2(4.5e-3)) ** 2
    o = mup_transfer.optimum(lrs, losses, threshold=0.03)
    assert o["lr_opt"] == pytest.approx(4.5e-3, rel=1e-6)  # the parabola is exact here
    assert o["best_lr"] == 4e-3 and not o["on_edge"]
    assert (o["lr_lo"], o["lr_hi"]) == (4e-3, 8e-3)  # 8e-3 is 2.2% above the best, 2e-3 4.5%
    diverged = mup_transfer.optimum(lrs, np.where(lrs > 1e-2, np.nan, losses), threshold=0.0)
    assert diverged["best_lr"] == 4e-3


def test_drift_and_prediction_from_a_known_table():
    lrs = [1e-3 * 2**i for i in range(5)]
    rows = []
    for par, shift in (("sp", -1.0), ("mup", 0.0)):  # SP's optimum halves per width doubling
        for k, width in enumerate((8, 16, 32, 64)):
            N = 1000 * 4**k
            best = np.log2(4e-3) + shift * k
            rows.append({"parametrization": par, "width": width, "N": N,
                         **mup_transfer.optimum(np.array(lrs), 2.0 + 50 * N**-0.5 + 0.05 * (np.log2(lrs) - best) ** 2,
                                                0.01)})
    opt = pd.DataFrame(rows)
    drift = mup_transfer.drift_steps(opt, lrs)
    assert drift["mup"] == pytest.approx(0.0, abs=1e-9)
    assert drift["sp"] < -1.5
    pred = mup_transfer.predict_widest(opt, "mup", n_bootstrap=0)
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
    pred = mup_transfer.predict_widest(opt, "mup", n_bootstrap=50)
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
    cost = mup_transfer.compute(table).set_index("parametrization")
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
    assert parse("--random-readout") == {"zero_readout": False} and parse("--zero-readout") == {"zero_readout": True}
    assert parse() == {"zero_readout": None}  # the model's default
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
