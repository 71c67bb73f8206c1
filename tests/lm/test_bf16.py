"""bfloat16 compute: float32 parameters and optimiser state, a training curve close to float32's.

Transformer and Griffin (tiny: d_model 32, 2-3 blocks) train 100 steps on the same
synthetic stream from the same initial parameters, once with ``dtype="float32"`` and once
with ``dtype="bfloat16"``; the final loss is the mean of the last 10 steps.

Bound: |final_bf16 - final_f32| <= 0.01 * (initial_f32 - final_f32), i.e. bf16 loses at
most 1% of what float32 training gains. Measured on the 2-core CPU (XLA:CPU): transformer
initial 6.136, final f32 5.5574, bf16 5.5574, gap/gain 1e-4; griffin initial 6.147, final
5.5546 both, gap/gain < 1e-4 (the per-step curves do differ, by > 1e-4). The bound leaves
two orders of magnitude for other hardware (a GPU's bf16 matmuls accumulate in another
order) while staying far below what a broken mixed precision costs. Why this is right:
bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.2%), applied to activations
and matmul inputs only; parameters, Adam moments, the residual of each update, the
softmax statistics, the recurrence state and the logits stay float32 (``lm.train.step``,
``layers``), so the rounding acts as a small zero-mean noise on the gradient, far below
the minibatch noise. A gap of a few tenths of a percent of the loss is what that predicts;
an error that breaks mixed precision (bf16 parameters or moments: updates below 2^-9 of
a weight vanish; a bf16 softmax or recurrence: errors compound over the sequence) shows
as a gap of several percent of the gain, and fails the test.
"""

import contextlib
import dataclasses

import jax
import numpy as np
import pytest

from lm.train import loop, multihost, sharding
from lm.model.config import (
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from lm.data.config import DataConfig

STEPS = 100
TAIL = 10
BOUND = 0.01  # of the float32 gain (module docstring)

MODELS = {
    "transformer": ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
    "griffin": ModelConfig(d_model=32, num_layers=3, pattern="RRW", num_heads=2, num_kv_heads=1, window=16,
                           d_ff=64, logit_softcap=30.0),
}


def _run(model: ModelConfig, dtype: str) -> RunConfig:
    return RunConfig(
        model=dataclasses.replace(model, dtype=dtype),
        data=DataConfig(source="synthetic", seq_len=32, batch_size=8, synthetic_doc_len=200),
        optimizer=OptimizerConfig(learning_rate=1e-2),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=10),
        train=TrainConfig(steps=STEPS, progress=False),
        name=f"bf16-{dtype}",
    )


def _losses(run: RunConfig, mesh) -> np.ndarray:
    """float32 [s]: the per-step training losses of ``run`` trained alone by the one loop (no directory)."""
    with contextlib.closing(multihost.make_host_iterator(run, mesh, "train")) as it:
        return loop.train_loop([run], sharding.init_sharded_state(run, mesh), it, mesh, evaluate_runs=False).losses[0]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_bf16_training_tracks_float32(family):
    f32, bf16 = _run(MODELS[family], "float32"), _run(MODELS[family], "bfloat16")
    # the same initial state, float32 in both (parameters and Adam moments)
    mesh = sharding.single_device_mesh()
    init_f32, init_bf16 = sharding.init_sharded_state(f32, mesh), sharding.init_sharded_state(bf16, mesh)
    for a, b in zip(jax.tree.leaves(init_f32), jax.tree.leaves(init_bf16)):
        assert b.dtype == a.dtype and a.dtype in (np.float32, np.int32)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    losses_f32, losses_bf16 = _losses(f32, mesh), _losses(bf16, mesh)
    assert np.isfinite(losses_bf16).all()
    final_f32, final_bf16 = losses_f32[-TAIL:].mean(), losses_bf16[-TAIL:].mean()
    gain = losses_f32[0] - final_f32
    gap = abs(final_bf16 - final_f32) / gain
    print(f"{family}: initial {losses_f32[0]:.4f}, final f32 {final_f32:.4f}, bf16 {final_bf16:.4f}, gap/gain {gap:.4f}")
    assert gain > 0.3, "float32 training must learn for the comparison to mean anything"
    assert gap <= BOUND
    # bf16 really ran in bf16: its curve is not the float32 one
    assert np.abs(losses_bf16 - losses_f32).max() > 1e-4


def test_full_study_presets_compute_in_bf16(tmp_path):
    """Every study's "full" preset (GPU/TPU scale) trains in bfloat16; the others stay float32 (CPU)."""
    import importlib

    for name in ("architectures", "chinchilla", "data_constrained", "lr_scaling", "wsd"):
        study = importlib.import_module(f"experiments.{name}")
        assert study.PRESETS["full"].dtype == "bfloat16", name
        assert study.PRESETS["smoke"].dtype == "float32", name
        smoke = dataclasses.replace(study.PRESETS["smoke"], dtype="bfloat16")
        built = study.build_study(smoke, tmp_path / name) if name == "wsd" else study.build_study(smoke)
        runs = (built[0] if isinstance(built, tuple) else built).runs
        assert runs and {r.model.dtype for r in runs} == {"bfloat16"}, name
