"""Sparse upcycling: an MoE model initialised from a dense checkpoint.

Komatsuzaki et al. 2023, "Sparse Upcycling" (arXiv 2212.05055), and He et al. 2024,
"Upcycling Large Language Models into Mixture of Experts" (arXiv 2410.07524): every
expert of an MoE block starts as a copy of that block's dense MLP, the router is
initialised fresh, and everything else (embeddings, norms, mixers, dense blocks) is
copied unchanged. With combine weights that sum to one (softmax-then-top-k with
renormalisation) the upcycled model computes exactly the dense model's function as long
as the experts are identical, whatever the router; we set the router to zero (uniform
routing) only so that the top-k choice is deterministic in the equality test.

Shapes: dense MLP w_gate, w_up [d, f], w_down [f, d] -> experts [e, d, f], [e, f, d].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from lm.model import network as lm_model
from lm.train import run_writer, sharding
from lm.train import step as lm_step
from lm.train import solo as lm_train
from lm.train.checkpoint import Checkpointer, decode_bytes
from lm.model.config import ModelConfig, RunConfig


def check_compatible(dense: ModelConfig, moe: ModelConfig) -> None:
    """The MoE config must equal the dense one except for its MoE fields, with f_expert = f_dense."""
    if dense.moe_every:
        raise ValueError(f"upcycling: the source model already has MoE blocks (moe_every={dense.moe_every})")
    if moe.moe_every <= 0:
        raise ValueError(f"upcycling: the target ModelConfig.moe_every={moe.moe_every} must be positive")
    if moe.moe.d_ff != dense.ff_dim or moe.moe.activation != dense.mlp_activation:
        raise ValueError(
            f"upcycling: experts must copy the dense MLP: moe.d_ff={moe.moe.d_ff} / activation={moe.moe.activation!r} "
            f"must equal the dense ff width {dense.ff_dim} / activation {dense.mlp_activation!r}"
        )
    if moe.moe.num_shared_experts:
        raise ValueError("upcycling: shared experts have no dense counterpart; set moe.num_shared_experts=0")
    same = dataclasses.replace(moe, moe_every=0, moe=dense.moe)
    if same != dense:
        diff = [f.name for f in dataclasses.fields(dense) if getattr(same, f.name) != getattr(dense, f.name)]
        raise ValueError(f"upcycling: the MoE config differs from the dense one in {diff}; only MoE fields may change")


def upcycle_params(dense_cfg: ModelConfig, dense_params: dict, moe_cfg: ModelConfig, rng: jax.Array,
                   router: str = "fresh") -> dict:
    """MoE parameters from dense ones.

    Args:
      router: "fresh" (a new random router, as in the papers) or "zero" (uniform routing).
    """
    check_compatible(dense_cfg, moe_cfg)
    # one compiled init (op by op, a small MoE model's init took 7.8 s of CPU here, jitted 2.4 s)
    template = jax.jit(lambda r: lm_model.init_params(moe_cfg, r))(rng)
    e = moe_cfg.moe.num_experts
    params = dict(dense_params)
    for index in range(moe_cfg.num_layers):
        name = f"block_{index}"
        if not moe_cfg.is_moe_block(index):
            continue
        block = dict(dense_params[name])
        mlp = block.pop("mlp")
        moe = dict(template[name]["moe"])
        for w in ("w_gate", "w_up", "w_down"):
            moe[w] = jnp.broadcast_to(mlp[w], (e, *mlp[w].shape)).astype(template[name]["moe"][w].dtype)
        if router == "zero":
            moe["w_router"] = jnp.zeros_like(moe["w_router"])
        elif router != "fresh":
            raise ValueError(f"router={router!r}: allowed values are 'fresh', 'zero'")
        block["moe"] = moe
        params[name] = block
    return params


def upcycle_run(dense_run_dir: str | Path, moe_run: RunConfig, out_dir: str | Path, step: int | None = None) -> Path:
    """Write an MoE run directory whose step-0 checkpoint is the upcycled dense checkpoint.

    The optimiser state starts fresh; the data iterator continues where the dense run
    stopped. ``lm.train.solo.train(moe_run, out_dir)`` then continues training from it.
    """
    dense_run, dense_params = lm_train.load_params(dense_run_dir, step)
    src = Checkpointer(dense_run_dir, max_to_keep=None, read_only=True)
    mesh = sharding.single_device_mesh()
    # the restore needs the state's structure only, not a fresh (op by op: slow) init
    _, data_state, meta = src.restore(step, sharding.abstract_state(dense_run, mesh))
    src.close()
    params = upcycle_params(dense_run.model, dense_params, moe_run.model, jax.random.PRNGKey(moe_run.train.seed))
    state = jax.jit(lambda p: lm_step.state_from_params(moe_run, p))(params)
    out_dir = Path(out_dir)
    run_writer.RunWriter(out_dir, moe_run).begin(None)  # train() records the corpus when it starts
    ckpt = Checkpointer(out_dir, max_to_keep=moe_run.train.keep_checkpoints)
    ckpt.save(0, state, decode_bytes(data_state), {"step": 0, "upcycled_from": str(dense_run_dir),
                                                     "source_step": meta["step"], "config": moe_run.to_dict()})
    ckpt.close()
    return out_dir
