"""Learning-rate schedules: warmup, cosine, constant, WSD decay shapes."""

import json
import math

import pytest

from lm.model.config import ScheduleConfig
from lm.train.schedules import lr_multiplier


def test_cosine_warmup_then_decays_to_min_ratio():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, min_ratio=0.1)
    assert lr_multiplier(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_multiplier(cfg, 9, 110) == pytest.approx(1.0)
    mid = lr_multiplier(cfg, 59, 110)  # half-way through the cosine
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(cfg, 109, 110) == pytest.approx(0.1)


def test_wsd_is_flat_until_decay_then_reaches_floor():
    cfg = ScheduleConfig(kind="wsd", warmup_steps=5, decay_fraction=0.2, min_ratio=0.0, decay_shape="linear")
    values = [lr_multiplier(cfg, s, 100) for s in range(100)]
    assert all(v == 1.0 for v in values[5:80])
    assert values[80] == pytest.approx(1 - 1 / 20)
    assert values[-1] == pytest.approx(0.0)
    # the stable phase does not depend on the run length: a branch can start anywhere in it
    branch = ScheduleConfig(kind="wsd", warmup_steps=5, decay_start=40, min_ratio=0.0)
    assert [lr_multiplier(branch, s, 50) for s in range(40)] == [lr_multiplier(cfg, s, 100) for s in range(40)]


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt", "exponential"])
def test_wsd_decay_shapes_are_monotone(shape):
    cfg = ScheduleConfig(kind="wsd", warmup_steps=0, decay_start=10, min_ratio=0.05, decay_shape=shape)
    values = [lr_multiplier(cfg, s, 30) for s in range(10, 30)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.05)


def test_step_decay_is_a_two_stage_schedule():
    cfg = ScheduleConfig(kind="wsd", warmup_steps=4, decay_start=20, min_ratio=0.3, decay_shape="step")
    values = [lr_multiplier(cfg, s, 40) for s in range(40)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4:20] == [1.0] * 16 and values[20:] == [0.3] * 20


def test_table_interpolates_its_knots_after_the_warmup():
    cfg = ScheduleConfig(kind="table", warmup_steps=2, knots=((10, 1.0), (20, 0.5), (30, 0.1)))
    assert [lr_multiplier(cfg, s, 40) for s in (0, 1)] == [0.5, 1.0]
    assert lr_multiplier(cfg, 5, 40) == 1.0  # flat before the first knot
    assert lr_multiplier(cfg, 15, 40) == pytest.approx(0.75)
    assert lr_multiplier(cfg, 27, 40) == pytest.approx(0.5 - 0.4 * 0.7)
    assert lr_multiplier(cfg, 39, 40) == pytest.approx(0.1)  # flat after the last


@pytest.mark.parametrize("kind, knots", [("table", None), ("cosine", ((0, 1.0),)), ("table", ()),
                                         ("table", ((5, 1.0), (5, 0.5))), ("table", ((0, 0.0),)),
                                         ("table", ((0.5, 1.0),)), ("table", ((0, float("nan")),))])
def test_bad_knots_are_refused(kind, knots):
    with pytest.raises(ValueError, match="knots"):
        ScheduleConfig(kind=kind, knots=knots)


def test_table_config_round_trips_through_json():
    from lm.model.config import RunConfig

    run = RunConfig(schedule=ScheduleConfig(kind="table", knots=((0, 1.0), (50, 0.2))))
    assert RunConfig.from_dict(json.loads(run.to_json())) == run
