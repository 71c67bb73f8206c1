"""Configs saved by every earlier schema (flat family keys, nested ``model.rnn``) still load, resume and
keep their fingerprints (``lm/model/config_schema.py``)."""

import dataclasses
import hashlib
import json

import pytest

from experiments import lib
from experiments.lib import study as study_lib
from experiments.lib import sweep
from experiments import train as train_cli
from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.recurrent_block import RecurrentConfig
from lm.model.config import ModelConfig, RunConfig
from lm.model import mup_options
from lm.model.config_schema import SCHEMA_VERSION, fingerprint_form, migrate, migrate_model

RUN = RunConfig(
    model=ModelConfig(d_model=32, num_layers=2, pattern="RL", num_heads=2, d_ff=48,
                      families={"rnn": RecurrentConfig(width=48, heads=4, conv_width=3, impl="reference"),
                                "la": LinearAttentionConfig(variant="retnet", output_norm="group", chunk_size=8),
                                "mla": MLAConfig(kv_lora_rank=16, decode_path="naive")}),
    name="old",
)
# RUN's model as config.json held it before the families were nested (schema 0, before the model
# fields scan_layers, remat, parametrization, base_width, mup_zero_* existed), written out by hand
OLD_MODEL = {
    "vocab_size": 259, "d_model": 32, "num_layers": 2, "pattern": "RL", "num_heads": 2, "num_kv_heads": None,
    "head_dim": None, "d_ff": 48, "mlp_activation": "geglu", "window": 1024, "attention_window": None,
    "rope_fraction": 1.0, "rope_max_wavelength": 10000.0, "attn_softcap": None, "logit_softcap": None,
    "tie_embeddings": True, "dtype": "float32", "attention_impl": "auto",
    "rnn_width": 48, "rnn_heads": 4, "conv_width": 3, "scan_impl": "reference",
    "la_variant": "retnet", "la_feature_map": "identity", "la_output_norm": "group", "la_chunk_size": 8,
    "la_impl": "auto", "mla_q_lora_rank": 0, "mla_kv_lora_rank": 16, "mla_qk_nope_dim": 32,
    "mla_qk_rope_dim": 16, "mla_v_head_dim": 32, "mla_decode_path": "naive",
    "moe_every": 0, "moe_load_balance_weight": 0.01, "moe_router_z_weight": 0.001,
    "moe": {k: v for k, v in RUN.to_dict()["model"]["moe"].items() if k not in ("load_balance_weight", "router_z_weight")},
}


# the fields that did not exist yet when OLD_MODEL was written, outside the model
ABSENT_THEN = ("data.max_train_bytes", "data.path", "data.num_workers", "schedule.knots", "train.checkpoint_steps")
# RUN's model as config.json held it with the families nested (schema 1, no version written)
NESTED_MODEL = {k: v for k, v in OLD_MODEL.items() if not k.startswith(("rnn_", "la_", "mla_", "moe_l", "moe_r"))
                and k not in ("conv_width", "scan_impl")}
NESTED_MODEL.update(rnn={"width": 48, "heads": 4, "conv_width": 3, "impl": "reference"},
                    la={"variant": "retnet", "feature_map": "identity", "output_norm": "group", "chunk_size": 8,
                        "impl": "auto"},
                    mla={"q_lora_rank": 0, "kv_lora_rank": 16, "qk_nope_dim": 32, "qk_rope_dim": 16, "v_head_dim": 32,
                         "decode_path": "naive"},
                    moe={**OLD_MODEL["moe"], "load_balance_weight": 0.01, "router_z_weight": 0.001})


def old_config_dict() -> dict:
    """RUN as a config.json from before: OLD_MODEL, and none of the fields of ABSENT_THEN."""
    d = RUN.to_dict()
    d["model"] = json.loads(json.dumps(OLD_MODEL))
    for path in ABSENT_THEN:
        section, leaf = path.split(".")
        del d[section][leaf]
    return d


def test_old_flat_keys_load_into_the_nested_configs():
    old = json.loads(json.dumps(old_config_dict()))
    model = {**old["model"]}
    assert RunConfig.from_dict(old) == RUN
    assert migrate_model(model)["families"]["rnn"] == {"width": 48, "heads": 4, "conv_width": 3, "impl": "reference"}
    with pytest.raises(ValueError, match=r"former key la_chunk_size=8 contradicts families.la.chunk_size=4"):
        migrate_model({**model, "la": {"chunk_size": 4}})


def test_every_schema_loads_to_the_same_run_and_the_current_one_says_its_version():
    nested = {**old_config_dict(), "model": json.loads(json.dumps(NESTED_MODEL))}
    current = json.loads(RUN.to_json())
    assert current["schema_version"] == SCHEMA_VERSION == 2
    assert current["model"]["families"]["mla"]["decode_path"] == "naive"  # unused, but set: kept
    assert RunConfig.from_dict(nested) == RunConfig.from_dict(current) == RunConfig.from_dict(old_config_dict()) == RUN
    assert migrate(migrate(old_config_dict())) == migrate(old_config_dict())
    with pytest.raises(ValueError, match=r"config schema_version=3: this scalelab reads versions 0 to 2"):
        RunConfig.from_dict({**current, "schema_version": 3})


def test_the_grid_fingerprint_is_the_one_written_before():
    old = old_config_dict()
    before = hashlib.sha256(json.dumps([[old], []], sort_keys=True).encode()).hexdigest()[:16]
    assert lib.Study("s", (RUN,)).fingerprint() == before
    nested = {**old, "model": NESTED_MODEL}
    for written in (old, nested, json.loads(RUN.to_json()), RUN.to_dict()):  # a run directory of any schema
        assert study_lib.canonical_config(written) == old
    assert fingerprint_form(fingerprint_form(RUN.to_dict())) == fingerprint_form(RUN.to_dict())


def test_an_old_study_directory_and_run_directory_are_accepted(tmp_path):
    study = lib.Study("s", (RUN,))
    old = old_config_dict()
    before = hashlib.sha256(json.dumps([[old], []], sort_keys=True).encode()).hexdigest()[:16]
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "config.json").write_text(json.dumps(old))
    (tmp_path / "study.json").write_text(json.dumps({"study": "s", "fingerprint": before, "num_runs": 1,
                                                     "runs": ["old"], "meta": {}, "loss_at_flops": []}))
    sweep.check_out(study, tmp_path)  # raises StudyError if the old records are refused
    train_cli.check_run_dir(RUN, tmp_path / "runs" / "old", overwrite=False)
    other = RunConfig(model=ModelConfig(d_model=32, num_layers=2, pattern="RL", num_heads=2, d_ff=48), name="old")
    with pytest.raises(Exception, match="another config"):
        train_cli.check_run_dir(other, tmp_path / "runs" / "old", overwrite=False)


def test_old_and_nested_command_line_flags_set_the_same_field():
    parser = train_cli.build_parser()
    for flags in (["--model.families.rnn.width", "64", "--model.families.la.variant", "plain"],
                  ["--model.rnn.width", "64", "--model.la.variant", "plain"],
                  ["--model.rnn_width", "64", "--model.la_variant", "plain"]):
        run = train_cli.apply_overrides(RUN, parser.parse_args(["--out", "x", *flags]))
        assert run.model.families["rnn"].width == 64 and run.model.families["la"].variant == "plain"
        assert run.model.families["rnn"].conv_width == 3  # the other settings are RUN's
    for flags in (["--model.moe.load_balance_weight", "0.05"], ["--model.moe_load_balance_weight", "0.05"]):
        run = train_cli.apply_overrides(RUN, parser.parse_args(["--out", "x", *flags]))
        assert run.model.moe.load_balance_weight == 0.05


def test_old_flat_moe_loss_weights_load_into_the_moe_config():
    old = {**OLD_MODEL, "moe_load_balance_weight": 0.02, "moe_router_z_weight": 0.0}
    run = RunConfig.from_dict({**old_config_dict(), "model": old})
    assert (run.model.moe.load_balance_weight, run.model.moe.router_z_weight) == (0.02, 0.0)
    flat = fingerprint_form(run.to_dict())["model"]
    assert (flat["moe_load_balance_weight"], flat["moe_router_z_weight"]) == (0.02, 0.0)
    assert "load_balance_weight" not in flat["moe"]


def test_an_old_mup_config_keeps_its_random_readout_and_its_fingerprint_differs_from_the_default():
    """``model.mup_zero_readout`` (default None: a zero untied readout under μP): a μP config.json written
    without it or with False rebuilds a random readout, so the run directory check tells it from a grid
    built today; SP and tied configs compare as before."""
    mup = ModelConfig(d_model=32, num_layers=1, pattern="A", num_heads=2, tie_embeddings=False,
                      parametrization="mup", base_width=16)
    today = lib.study.canonical_config(RunConfig(model=mup).to_dict())
    assert "mup_zero_readout" not in today["model"]
    assert lib.study.canonical_config(RunConfig(model=dataclasses.replace(mup, mup_zero_readout=True)).to_dict()) \
        == today  # the same model
    for saved in (False, "absent"):
        d = RunConfig(model=mup).to_dict()
        if saved == "absent":
            del d["model"]["mup_zero_readout"]
        else:
            d["model"]["mup_zero_readout"] = saved
        assert RunConfig.from_dict(d).model.mup_zero_readout is False
        assert lib.study.canonical_config(d)["model"]["mup_zero_readout"] is False
    for model in (ModelConfig(), dataclasses.replace(mup, tie_embeddings=True)):  # SP, tied: nothing changed
        d = RunConfig(model=model).to_dict()
        d["model"]["mup_zero_readout"] = False
        assert lib.study.canonical_config(d) == lib.study.canonical_config(RunConfig(model=model).to_dict())
        assert RunConfig.from_dict(d).model == model


def test_an_old_tied_mup_config_keeps_its_embedding_constants(tmp_path):
    """``model.mup_embedding_init`` / ``_lr`` (default None: the tied head's constants for μP with a tied head,
    1 otherwise): a config.json written without them rebuilds the constants 1, so a tied μP run directory matches
    a run built today only while those constants are 1; SP and untied μP ones are today's runs."""
    tied = ModelConfig(d_model=32, num_layers=1, pattern="A", num_heads=2, parametrization="mup", base_width=16)
    neutral = (mup_options.TIED_EMBEDDING_INIT, mup_options.TIED_EMBEDDING_LR) == (1.0, 1.0)
    cases = ((tied, neutral), (dataclasses.replace(tied, tie_embeddings=False), True), (ModelConfig(), True))
    for i, (model, same) in enumerate(cases):
        run = RunConfig(model=model, name=f"r{i}")
        saved = run.to_dict()
        for name in ("mup_embedding_init", "mup_embedding_lr"):
            del saved["model"][name]
        loaded = RunConfig.from_dict(saved)
        assert (loaded == run) == same
        assert (study_lib.canonical_config(saved) == study_lib.canonical_config(run.to_dict())) == same
        (tmp_path / run.name).mkdir()
        (tmp_path / run.name / "config.json").write_text(json.dumps(saved))
        if same:
            train_cli.check_run_dir(run, tmp_path / run.name, overwrite=False)
            continue
        assert (loaded.model.mup_embedding_init, loaded.model.mup_embedding_lr) == (1.0, 1.0)
        assert study_lib.canonical_config(saved)["model"]["mup_embedding_lr"] == 1.0
        with pytest.raises(Exception, match="another config"):
            train_cli.check_run_dir(run, tmp_path / run.name, overwrite=False)
    spelled = RunConfig(model=tied).to_dict()
    spelled["model"].update(mup_embedding_init=mup_options.TIED_EMBEDDING_INIT, mup_embedding_lr=int(
        mup_options.TIED_EMBEDDING_LR))  # the default, written out
    assert study_lib.canonical_config(spelled) == study_lib.canonical_config(RunConfig(model=tied).to_dict())
    tuned = RunConfig(model=dataclasses.replace(tied, mup_embedding_init=0.25, mup_embedding_lr=4)).to_dict()
    assert study_lib.canonical_config(tuned)["model"]["mup_embedding_lr"] == 4.0  # another model: in the fingerprint
    assert RunConfig.from_dict(tuned).model.mup_embedding_init == 0.25
