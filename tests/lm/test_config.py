"""Config validation: bad values raise ValueError naming the field, the value and what is allowed."""

import dataclasses

import pytest

from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.model.presets import get_preset


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"d_model": 100, "num_heads": 3}, ["d_model=100", "num_heads=3"]),
        ({"num_heads": 4, "num_kv_heads": 3}, ["num_heads=4", "num_kv_heads=3", "divisors"]),
        ({"pattern": "AX"}, ["pattern", "'X'", "allowed"]),
        ({"d_model": 0}, ["d_model=0", "positive"]),
        ({"num_layers": -2}, ["num_layers=-2", "positive"]),
        ({"mlp_activation": "relu"}, ["mlp_activation='relu'", "geglu"]),
        ({"dtype": "float16"}, ["dtype='float16'", "bfloat16"]),
        ({"rope_fraction": 1.5}, ["rope_fraction=1.5"]),
    ],
)
def test_model_config_errors_name_field_and_allowed(kwargs, words):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_other_config_errors():
    with pytest.raises(ValueError, match="kind='step'.*cosine"):
        ScheduleConfig(kind="step")
    with pytest.raises(ValueError, match="b2=1.0"):
        OptimizerConfig(b2=1.0)
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="preset='nope'"):
        get_preset("nope")


def test_run_config_round_trips_through_json():
    run = RunConfig(model=ModelConfig(pattern="AW", attention_window=None, moe_every=2))
    again = RunConfig.from_dict(__import__("json").loads(run.to_json()))
    assert again == run
    assert dataclasses.replace(run.model, d_model=128).d_model == 128
    assert ModelConfig(pattern="AAW", num_layers=5).block_letters == "AAWAA"
