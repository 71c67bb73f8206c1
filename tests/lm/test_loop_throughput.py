"""A record's ``tokens_per_s`` is its window's tokens over its window's seconds (lm.train.loop)."""

import dataclasses
import itertools
import types

import pytest

from lm.train import loop, records, solo
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig

RUN = RunConfig(
    model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
    data=DataConfig(source="synthetic", seq_len=32, batch_size=4, synthetic_doc_len=100),
    train=TrainConfig(steps=6, eval_every=6, eval_batches=1, log_every=2, checkpoint_every=6, progress=False),
    name="tiny",
)


def test_every_record_reports_its_own_windows_throughput(tmp_path, monkeypatch):
    # a clock that advances by STEP_S from the start of each step to its end: every window of two
    # steps lasts 2 * STEP_S seconds, so every record reads tokens_per_step / STEP_S (the former
    # formula divided the window's tokens by all the seconds since the start: 1/2, 1/3 of that)
    step_s, ticks = 0.25, itertools.count()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * step_s))
    solo.train(RUN, tmp_path / "run")
    rates = [r["tokens_per_s"] for r in records.read_metrics(tmp_path / "run")]
    tokens_per_step = RUN.data.seq_len * RUN.data.batch_size
    assert rates == pytest.approx([tokens_per_step / step_s] * 3)
