"""A two-run study trained by the runner in a subprocess (``python -m tests.experiments.sweep_worker OUT``),
for the tests that stop a sweep with a signal: run "short" finishes quickly, run "long" is
still training when the signal comes."""

from __future__ import annotations

import sys

from experiments import lib
from experiments.lib.cli import training
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig


def run(name: str, steps: int) -> RunConfig:
    return RunConfig(
        model=ModelConfig(d_model=16, num_layers=1, num_heads=1, d_ff=32),
        data=DataConfig(source="synthetic", seq_len=16, batch_size=2, synthetic_doc_len=64),
        train=TrainConfig(steps=steps, eval_every=steps, eval_batches=1, log_every=1, checkpoint_every=steps,
                          progress=False),
        name=name,
    )


def study() -> lib.Study:
    return lib.Study(name="stops", runs=(run("short", 4), run("long", 400)))


if __name__ == "__main__":
    with training("sweep_worker"):
        lib.run_study(study(), sys.argv[1], progress=False, compilation_cache=False)
