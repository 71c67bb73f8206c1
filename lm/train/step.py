"""The pure train step: loss, AdamW update, train / vmapped-train / eval steps, fresh state.

Nothing here knows about devices, meshes, files or compilation: every function maps
arrays to arrays. ``lm.train.compiled`` jits these with the shardings of ``lm.train.sharding`` and caches
the compiled programs, and the one loop (``lm.train.loop``) drives them.

The learning rate and weight decay are arguments of the step (computed on the host from
the schedule), so runs that differ only in them share one compiled program and can be
vmapped together.

The train state is ``{"step": int32 [], "params": float32 tree, "opt_state": the
clip + Adam state of :func:`make_optimizer`}``; its structure is the checkpoint format.

Axis letters: b batch, t time, v vocabulary, k stacked runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from lm.model import network as lm_model
from lm.model import parametrization
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig


# ----------------------------------------------------------------------------- loss


def cross_entropy(
    logits: Float[Array, "b t v"], targets, weights
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """Weighted mean token cross-entropy (nats), its weight sum, and mean logsumexp^2.

    The log-softmax statistics are taken in float32 whatever the logits' dtype.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    denom = jnp.maximum(weights.sum(), 1.0)
    nll = ((lse - target_logit) * weights).sum() / denom
    z = (jnp.square(lse) * weights).sum() / denom
    return nll, weights.sum(), z


def loss_fn(model_cfg: ModelConfig, z_loss: float, params, batch, rng=None, multipliers=None) -> tuple[Array, dict]:
    """Training objective and metrics.

    cross-entropy + z_loss * mean(logsumexp^2) of the output logits (PaLM, Chowdhery et
    al. 2022) + the MoE auxiliary losses summed over MoE blocks with their weights:
    Switch load balance (Fedus et al. 2022) and router z-loss (Zoph et al. 2022, ST-MoE).
    ``multipliers``: ``lm.model.parametrization.Multipliers`` replacing the config's μP ones (traced).
    """
    logits, moe_aux = lm_model.forward_with_aux(
        model_cfg, params, batch["tokens"], batch["segment_ids"], batch["positions"], rng, multipliers
    )
    nll, count, z = cross_entropy(logits, batch["targets"], batch["weights"])
    total = nll + z_loss * z
    metrics = {"loss": nll, "z_loss": z, "tokens": count}
    if moe_aux:
        lb = sum(a["load_balance_loss"] for a in moe_aux.values())
        rz = sum(a["router_z_loss"] for a in moe_aux.values())
        total = total + model_cfg.moe.load_balance_weight * lb + model_cfg.moe.router_z_weight * rz
        metrics["moe"] = {
            "load_balance_loss": lb,
            "router_z_loss": rz,
            "layers": {str(i): {k: a[k] for k in ("dropped_fraction", "tokens_per_expert", "router_entropy")}
                       for i, a in moe_aux.items()},
        }
    return total, metrics


# ------------------------------------------------------------------------ optimiser


def weight_decay_mask(params, opt: OptimizerConfig):
    """True for parameters that get weight decay: matrices, not norms/biases/embeddings.

    Blocks under "blocks" (``ModelConfig.scan_layers``) carry a leading layer axis, not counted.
    """

    def decide(path, leaf):
        if opt.decay_all:
            return True
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        if "embed" in names and not opt.decay_embeddings:
            return False
        return leaf.ndim - ("blocks" in names) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(opt: OptimizerConfig, *, model: ModelConfig | None = None,
                   lr_mults=None) -> optax.GradientTransformation:
    """The Adam direction with gradient clipping (its state is the checkpoint's "opt_state").

    The learning rate and the decoupled weight decay are applied by
    :func:`optimizer_update`, which with it is ``optax.adamw`` (Loshchilov & Hutter 2019).
    A μP ``model`` (``parametrization="mup"``) multiplies each parameter's Adam update by
    its learning-rate multiplier; the decay term stays lr * wd * p (see lm/model/parametrization.py).
    ``lr_mults`` (``Multipliers.lr``, arrays shaped like the params, traced) replace the model's.
    """
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
    tx = optax.chain(*parts)
    if lr_mults is not None:
        tx = parametrization.scale_learning_rates(tx, lr_mults=lr_mults)
    elif model is not None and model.parametrization == "mup":
        # μP (lm/model/parametrization.py): each Adam update times its lr multiplier; same state.
        tx = parametrization.scale_learning_rates(tx, lm_model.param_rules(model))
    return tx


def apply_update(params, updates, lr, weight_decay, mask):
    """AdamW's parameter update p - lr * (u + wd * p), decay only where ``mask`` is True."""
    def one(p, u, m):
        u = u.astype(p.dtype)
        return p - lr * (u + weight_decay * p if m else u)

    return jax.tree.map(one, params, updates, mask)


def optimizer_update(opt: OptimizerConfig, grads, opt_state, params, lr, weight_decay,
                     model: ModelConfig | None = None, lr_mults=None):
    """One AdamW update: (new params, new opt_state); the one place the optimiser is applied.

    Args:
      opt: betas, eps, clipping and the decay mask's options.
      grads, params: trees of the same structure; opt_state: :func:`make_optimizer`'s state.
      lr, weight_decay: scalars (traced in the compiled step).
      model: the model config; under μP its per-parameter learning-rate multipliers apply.
      lr_mults: traced per-parameter multipliers (``Multipliers.lr``) instead of the model's.
    """
    updates, opt_state = make_optimizer(opt, model=model, lr_mults=lr_mults).update(grads, opt_state, params)
    new_params = apply_update(params, updates, lr, weight_decay, weight_decay_mask(params, opt))
    return new_params, opt_state


# ---------------------------------------------------------------------------- steps


def init_state(run: RunConfig, rng: jax.Array | None = None) -> dict:
    """Fresh training state {"step", "params", "opt_state"} (float32 parameters and moments)."""
    rng = jax.random.PRNGKey(run.train.seed) if rng is None else rng
    return state_from_params(run, lm_model.init_params(run.model, rng))


def state_from_params(run: RunConfig, params: dict) -> dict:
    """The training state {"step": 0, "params", "opt_state": fresh} of given parameters (e.g. upcycled ones)."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": make_optimizer(run.optimizer).init(params)}


def uses_step_rng(run: RunConfig) -> bool:
    """Whether the step draws randomness from ``train.seed`` (MoE router jitter)."""
    return run.model.moe_every > 0 and run.model.moe.router_jitter > 0


def make_train_step(run: RunConfig):
    """The (uncompiled) train step: (state, batch, lr, weight_decay=None, multipliers=None) -> (state, metrics).

    ``lr`` and ``weight_decay`` (None: the config's) are traced scalars. A non-finite loss
    or gradient leaves the state unchanged and sets metrics["finite"] to False (the host
    stops the run). Under μP the optimiser applies the per-parameter lr multipliers.
    ``multipliers`` (``lm.model.parametrization.Multipliers``, traced; ``run.model`` then SP's config):
    the output, score and lr multipliers instead of the config's, so SP and μP share the program.
    """
    model_cfg, opt, z_loss = run.model, run.optimizer, run.train.z_loss
    jitter = uses_step_rng(run)

    def step(state, batch, lr, weight_decay=None, multipliers=None):
        params = state["params"]
        wd = opt.weight_decay if weight_decay is None else weight_decay
        rng = jax.random.fold_in(jax.random.PRNGKey(run.train.seed), state["step"]) if jitter else None
        (_, metrics), grads = jax.value_and_grad(
            lambda p: loss_fn(model_cfg, z_loss, p, batch, rng, multipliers), has_aux=True
        )(params)
        lr_mults = None if multipliers is None else multipliers.lr
        new_params, opt_state = optimizer_update(opt, grads, state["opt_state"], params, lr, wd, model_cfg, lr_mults)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(opt_state, state["opt_state"]),
        }
        return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite}

    return step


def make_vmapped_step(run: RunConfig, width: int = 0):
    """``step(states [k ...], batch [b t], lr [k], wd [k]) -> (states, metrics [k ...])``.

    :func:`make_train_step`'s step mapped over K stacked states and the two scalars, the
    batch shared. ``width`` = 0 (or >= k): ``jax.vmap`` over all k runs; otherwise
    ``lax.map(..., batch_size=width)``: a loop inside the one compiled program over groups
    of ``width`` vmapped runs (the remainder vmapped separately), which keeps the working
    set of a small model cache-sized on a CPU. Every run computes the same numbers either way.

    Raises:
      ValueError: ``width`` < 0.
    """
    if width < 0:
        raise ValueError(f"make_vmapped_step: width={width} must be >= 0 (0 = vmap all runs)")
    step = make_train_step(run)
    vmapped = jax.vmap(step, in_axes=(0, None, 0, 0))
    if width == 0:
        return vmapped

    def mapped(states, batch, lr, wd):
        if width >= lr.shape[0]:
            return vmapped(states, batch, lr, wd)
        return jax.lax.map(lambda x: step(x[0], batch, x[1], x[2]), (states, lr, wd), batch_size=width)

    return mapped


def make_eval_step(model_cfg: ModelConfig):
    """``(params, batch) -> (summed nll, target count)``: float32 scalars of one validation batch."""

    def evaluate(params, batch):
        logits = lm_model.forward(model_cfg, params, batch["tokens"], batch["segment_ids"], batch["positions"])
        nll, count, _ = cross_entropy(logits, batch["targets"], batch["weights"])
        return nll * count, count

    return evaluate
