"""experiments.coord_check at smoke size, every family: μP flat in width, SP logits' update growing."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from experiments import coord_check
from lm.train import compiled
from lm.model import parametrization
from lm.model.presets import FAMILIES, mup_family_model

PRESET = coord_check.PRESETS["smoke"]
# One xdist unit (tests/conftest.py): the tests run in one process, in this order, so the transformer's
# programs compiled for test_smoke_coord_check serve test_random_readout_makes_the_logits_update_fall,
# the test after it (before the other families' programs push them out of coord_check's bounded caches)
ONE_WORK_UNIT = True


def _acceptance(sl: pd.DataFrame, tied: bool) -> None:
    """Issue 26's acceptance on a slopes table indexed by (parametrization, module), μP defaults."""
    mup = sl.loc["mup"]
    hidden = [m for m in mup.index if not m.startswith("logits")]
    assert len(hidden) == 1 + 3 * PRESET.num_layers  # embedding + (mixer, ff, residual) per block
    off = {m: round(float(mup.loc[m, "rms_slope"]), 3) for m in hidden if abs(mup.loc[m, "rms_slope"]) > 0.1}
    assert not off, (off, mup["rms_slope"].round(3).to_dict())
    # untied: the zero readout makes the logits' whole update flat; tied (the embedding, random at init):
    # the readout's own update is flat, the rest is the init seen through the features' change (README, μP)
    assert abs(mup.loc["logits/readout" if tied else "logits", "update_rms_slope"]) <= 0.1, mup.round(3).to_dict()
    assert mup.loc["logits", "rms_slope"] <= 0.1  # the logits do not blow up
    assert sl.loc[("sp", "logits"), "update_rms_slope"] >= 0.2  # under SP their update grows with width


def test_smoke_coord_check(tmp_path):
    result = coord_check.main(["--preset", "smoke", "--family", "transformer", "--out", str(tmp_path), "--no-progress"])
    table = pd.read_csv(tmp_path / "coord_check.csv")
    assert list(table.columns) == ["parametrization", "family", "width", "step", "module", "rms", "update_rms"]
    assert sorted(table["width"].unique()) == [m * PRESET.base_width for m in PRESET.multipliers]
    assert (tmp_path / "coord_check_transformer.png").exists() and (tmp_path / "report.md").exists()
    # μP's untied readout starts at zero (its logits are 0 at step 0), SP's does not; at the base width
    # the rest of the model is SP's, so every other module's step-0 output is the same
    first = table[table["step"] == 0].set_index(["parametrization", "width", "module"])
    assert (first.loc["mup"].xs("logits", level="module")["rms"] == 0).all()
    assert (first.loc["sp"].xs("logits", level="module")["rms"] > 0).all()
    base = first.xs(PRESET.base_width, level="width").drop(["logits", "logits/readout"], level="module")
    np.testing.assert_allclose(base.loc["mup"]["rms"], base.loc["sp"]["rms"], rtol=1e-6)
    _acceptance(result["slopes"].set_index(["parametrization", "module"]), tied=False)


def test_random_readout_makes_the_logits_update_fall():
    """``model.mup_zero_readout=False`` (the former default): the random readout init, seen through the
    features' change, shrinks the logits' update with width while the readout's own update stays flat."""
    # PRESET's shapes: the programs of test_smoke_coord_check (SP's, the multipliers their inputs), which
    # this process has compiled already (ONE_WORK_UNIT)
    table = coord_check.coord_check(PRESET, ("transformer",), progress=False,
                                    parametrizations=("mup",), mup_zero_readout=False)
    sl = coord_check.slopes(table).set_index("module")
    assert sl.loc["logits", "update_rms_slope"] < -0.2, sl.round(3).to_dict()
    assert abs(sl.loc["logits/readout", "update_rms_slope"]) <= 0.1, sl.round(3).to_dict()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "transformer"])
def test_coord_check_every_family(family):
    table = coord_check.coord_check(PRESET, (family,), progress=False)
    _acceptance(coord_check.slopes(table).set_index(["parametrization", "module"]), tied=True)


def test_readout_part_is_the_whole_update_with_a_zero_readout():
    """With W_0 = 0 the logits are h W / m: ``logits/readout`` equals them at every step (an independent check)."""
    preset = dataclasses.replace(PRESET, seeds=2, steps=2)
    base = dataclasses.replace(mup_family_model("transformer", 16, 1), mup_zero_readout=True)
    cfg = parametrization.at_width(base, 32)
    cached = set(compiled.CACHE)
    rows = pd.DataFrame(coord_check.measure(cfg, preset)).set_index(["seed", "step", "module"])
    # one train step compiled through the compile cache for both seeds, at the fast-compile level
    (key,) = set(compiled.CACHE) - cached  # SP's program, μP's multipliers its inputs
    assert key[0] == "train" and key[1][0] == parametrization.sp_config(cfg) and "multipliers" in key
    assert ("xla_backend_optimization_level", 0) in key
    logits, readout = rows.xs("logits", level="module"), rows.xs("logits/readout", level="module")
    np.testing.assert_allclose(readout["rms"], logits["rms"], rtol=1e-5)
    np.testing.assert_allclose(readout["update_rms"], logits["update_rms"], rtol=1e-5)
    assert (logits.xs(0, level="step")["rms"] == 0).all() and (logits.xs(2, level="step")["rms"] > 0).all()


def _static_rows(cfg, preset) -> pd.DataFrame:
    """The reference: ``cfg``'s rows from its own programs (μP's multipliers static floats), seeds stacked."""
    from lm.model.config import OptimizerConfig, RunConfig
    from lm.data.config import DataConfig
    from lm.train import sharding, step as lm_step

    run = RunConfig(model=cfg, data=DataConfig(seq_len=preset.seq_len, batch_size=preset.batch_size),
                    optimizer=OptimizerConfig(learning_rate=preset.learning_rate, weight_decay=0.0))
    mesh, batches = sharding.single_device_mesh(), coord_check.seed_batches(preset)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(preset.seeds))
    fast = coord_check.FAST_COMPILE  # short-lived programs, as the check's own (a compile option, not the math)
    state = jax.jit(jax.vmap(lambda r: lm_step.init_state(run, r)), compiler_options=fast)(keys)
    feed = [{k: batches[k][:, t] for k in sharding.BATCH_KEYS} for t in range(preset.steps)]
    step, _ = compiled.train_step(run, mesh, state, feed[0], donate=False, runs=preset.seeds, compiler_options=fast)
    lr, zero = (jnp.full((preset.seeds,), v, jnp.float32) for v in (preset.learning_rate, 0.0))
    snapshots = [state["params"]]
    for batch in feed:
        state, _ = step(state, batch, lr, zero)
        snapshots.append(state["params"])
    rows, forward = [], jax.jit(lambda p, tokens, head0: coord_check.activations(cfg, p, tokens, head0),
                                compiler_options=fast)
    for seed in range(preset.seeds):
        params = [jax.tree.map(lambda x: x[seed], p) for p in snapshots]
        out = [forward(p, batches["tokens"][seed, 0], coord_check._head(cfg, params[0])) for p in params]
        rows += [{"seed": seed, "step": t, "module": m, "rms": float(coord_check._rms(out[t][m])),
                  "update_rms": float(coord_check._rms(out[t][m] - out[0][m]))}
                 for t in range(len(out)) for m in out[t]]
    return pd.DataFrame(rows).set_index(["seed", "step", "module"]).sort_index()


def test_one_program_serves_sp_and_mup():
    """SP and μP of one width: one train step compiled (SP's config, the multipliers its inputs), and
    each model's rows equal those of its own static program (an independent reference) to round-off."""
    # 3 seeds: not the shapes of another test here, whose program would be this one's
    preset = dataclasses.replace(PRESET, seeds=3, steps=2)
    mup = parametrization.at_width(dataclasses.replace(mup_family_model("transformer", 16, 1), mup_zero_query=True), 32)
    sp = parametrization.sp_config(mup)
    cached = set(compiled.CACHE)
    got = [coord_check.measure(cfg, preset) for cfg in (sp, mup)]
    (key,) = set(compiled.CACHE) - cached  # one train step for both
    assert key[1][0] == sp and "multipliers" in key
    for cfg, rows in zip([sp, mup], got, strict=True):
        rows = pd.DataFrame(rows).set_index(["seed", "step", "module"]).sort_index()
        want = _static_rows(cfg, preset)
        assert rows.index.equals(want.index)
        np.testing.assert_allclose(rows.to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(pd.DataFrame(got[0])["update_rms"], pd.DataFrame(got[1])["update_rms"])


@pytest.mark.parametrize("options", [{"mup_zero_query": True}, {"mup_zero_query": True, "mup_embedding_init": 0.25}])
def test_mup_init_is_sps_program_times_the_init_multipliers(options):
    """The init program of a width is shared by the SP/μP pair: μP's states are ``lm.train.step.init_state``'s, bitwise."""
    from lm.model.config import RunConfig
    from lm.train import sharding
    from lm.train import step as lm_step

    cfg = parametrization.at_width(dataclasses.replace(mup_family_model("transformer", 16, 1), **options), 32)
    run, keys = RunConfig(model=cfg), jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    got = coord_check._init_states(run, sharding.single_device_mesh(), keys)
    want = jax.jit(jax.vmap(lambda r: lm_step.init_state(run, r)), compiler_options=coord_check.FAST_COMPILE)(keys)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.asarray(got["params"]["head"]).any() and np.asarray(got["params"]["embed"]).any()


def test_family_model_rejects_unknown_family():
    with pytest.raises(ValueError, match="allowed families"):
        coord_check.family_model("rwkv", 16, 1)


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan", "fast"])
def test_learning_rate_must_be_positive(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        coord_check.main(["--preset", "smoke", "--learning-rate", value, "--out", str(tmp_path / "cc")])
    assert exit_.value.code == 2
    assert "--learning-rate" in capsys.readouterr().err
    assert not (tmp_path / "cc").exists()


@pytest.mark.parametrize("args, error", [
    (["--family", "gla", "--zero-readout"], "--zero-readout: needs an untied head"),
    (["--head", "tied", "--zero-readout"], "--zero-readout: needs an untied head"),
    (["--zero-readout", "--random-readout"], "--zero-readout, --random-readout: give one of them")])
def test_readout_options_are_checked(args, error, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        coord_check.main(["--preset", "smoke", *args, "--out", str(tmp_path / "cc")])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "cc").exists()
