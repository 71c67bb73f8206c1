"""The decoder-only language model: embedding, pre-norm residual blocks, final norm, logits.

Block i is ``x + mixer(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))`` (pre-norm, Xiong et al.
2020; the residual block of Griffin, De et al. 2024), with the mixer chosen by the i-th
letter of the config's pattern. Embeddings are scaled by sqrt(d) (Gemma/Griffin) and the
head is tied to the embedding unless asked otherwise.

Depth: with ``ModelConfig.scan_layers`` the repeated blocks run as one ``nn.scan`` over
repetitions of the block pattern (MaxText's scanned decoder; compile time independent of
depth), their parameters stacked on a leading "layers" axis (:func:`stack_layers` /
:func:`unstack_layers` convert, so a checkpoint loads in either layout).
``ModelConfig.remat`` wraps each block in ``jax.checkpoint`` (Chen et al. 2016) for training.

Axis letters: b batch, t time, d model width, v vocabulary.

Public functions are pure: ``init_params(cfg, rng)``, ``forward(cfg, params, tokens, ...)``,
``init_cache(cfg, batch, max_len)``, ``decode_step(cfg, params, cache, tokens, ...)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.mlp import GatedMLP
from layers.moe import MoEConfig, MoEFeedForward
from layers.moe_expert_parallel import expert_parallel_moe
from layers.partitioning import constrain, current_mesh, mesh_axes, param
from layers.rmsnorm import RMSNorm
from lm.model import parametrization
from lm.model.config import ModelConfig
from lm.model.families import MIXERS
from lm.model.mixers import SCORE_DIMS, compute_dtype


class Block(nn.Module):
    """Pre-norm residual block: temporal mixer then gated MLP (or MoE feed-forward).

    Returns (x, new_cache, aux) where aux holds the MoE auxiliary outputs ({} for a dense MLP).
    ``multipliers``: see :class:`LanguageModel`.
    """

    cfg: ModelConfig
    letter: str
    moe: bool = False
    deterministic: bool = True
    multipliers: parametrization.Multipliers | None = None

    @nn.compact
    def __call__(self, x, segment_ids, positions, cache=None):
        cfg = self.cfg
        spec = MIXERS[self.letter]
        ratio = None if self.multipliers is None else self.multipliers.score.get(spec.name)
        mixer = spec.build(cfg) if ratio is None else spec.build(cfg, query_multiplier=ratio)
        h, new_cache = mixer(RMSNorm(name="norm_mixer")(x), segment_ids=segment_ids, positions=positions, cache=cache)
        x = x + h.astype(x.dtype)
        normed = RMSNorm(name="norm_mlp")(x)
        aux = {}
        if self.moe:
            ff = MoEFeedForward(cfg.moe, dtype=compute_dtype(cfg), name="moe")
            mesh = current_mesh()
            if self.is_initializing() or not uses_expert_parallelism(cfg.moe, mesh):
                h, aux = ff(normed, deterministic=self.deterministic, decode=cache is not None)
            else:
                h, aux = _expert_parallel(cfg, ff.variables["params"], normed, mesh, self.deterministic)
        else:
            h = GatedMLP(cfg.ff_dim, cfg.mlp_activation, dtype=compute_dtype(cfg), name="mlp")(normed)
        x = x + h.astype(x.dtype)
        return constrain(x, ("batch", "length", "embed")), new_cache, aux


def uses_expert_parallelism(moe: MoEConfig, mesh) -> bool:
    """True when the MoE layers run expert-parallel: an "expert" mesh axis of size > 1 in
    scope (not yet manual) and a token-choice router (expert choice has no EP form)."""
    return mesh is not None and "expert" in mesh_axes("experts", mesh) and moe.router != "expert_choice"


def _expert_parallel(cfg: ModelConfig, params, x, mesh, deterministic: bool):
    """The MoE layer by explicit all-to-all dispatch (``layers/moe_expert_parallel.py``).

    The step is defined on the global batch (what one device computes), so the
    load-balance statistics are averaged over all shards before the product: for a
    global-batch view, "micro_batch" and "global_batch" scopes coincide.
    """
    if cfg.moe.router_jitter > 0 and not deterministic:
        raise ValueError(
            f"MoEConfig.router_jitter={cfg.moe.router_jitter}: router jitter is not supported with "
            "expert parallelism (an 'expert' mesh axis > 1); use router_jitter=0.0 or expert=1"
        )
    moe = dataclasses.replace(cfg.moe, load_balance_scope="global_batch")
    data_axes = tuple(a for a in mesh_axes("batch", mesh) if a != "expert")
    return expert_parallel_moe(moe, params, x, mesh=mesh, expert_axis="expert", data_axes=data_axes,
                               capacity_factor=None, dtype=compute_dtype(cfg))


def _block_class(cfg: ModelConfig, training: bool):
    """``Block``, wrapped in ``nn.remat`` with the config's policy when training asks for it."""
    if not training or cfg.remat == "none":
        return Block
    policy = None if cfg.remat == "full" else getattr(jax.checkpoint_policies, cfg.remat)
    return nn.remat(Block, policy=policy)


def scan_shape(cfg: ModelConfig) -> tuple[int, int]:
    """(period, repeats) of the layer scan: the blocks 0 .. period * repeats - 1 are ``repeats``
    copies of the first ``period`` blocks (mixer letter and MoE choice); later blocks run unscanned.

    period = lcm(len(pattern), moe_every); repeats = num_layers // period.
    """
    period = math.lcm(len(cfg.pattern), max(cfg.moe_every, 1))
    return period, cfg.num_layers // period


class BlockPeriod(nn.Module):
    """One period of the block pattern: the body of the layer scan, (x, aux per block) -> next x."""

    cfg: ModelConfig
    deterministic: bool = True
    multipliers: parametrization.Multipliers | None = None

    @nn.compact
    def __call__(self, x, segment_ids, positions):
        cfg = self.cfg
        period, _ = scan_shape(cfg)
        block = _block_class(cfg, training=True)
        aux = {}
        for j in range(period):
            x, _, a = block(cfg, cfg.block_letters[j], cfg.is_moe_block(j), self.deterministic, self.multipliers,
                            name=f"block_{j}")(x, segment_ids, positions)
            if a:
                aux[j] = a
        return x, aux


def _scanned_blocks(cfg: ModelConfig, x, segment_ids, positions, deterministic: bool, multipliers=None):
    """The repeated blocks as one ``nn.scan``; returns x and the MoE aux {block index: aux}."""
    period, repeats = scan_shape(cfg)
    scan = nn.scan(
        BlockPeriod,
        variable_axes={"params": 0},
        split_rngs={"params": True, "jitter": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=repeats,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, stacked_aux = scan(cfg, deterministic, multipliers, name="blocks")(x, segment_ids, positions)
    aux = {r * period + j: jax.tree.map(lambda v, r=r: v[r], a) for j, a in stacked_aux.items() for r in range(repeats)}
    return x, aux


class LanguageModel(nn.Module):
    """Embedding -> blocks -> RMSNorm -> logits (float32).

    ``multipliers`` (:class:`lm.model.parametrization.Multipliers`, arrays, e.g. traced): the output and
    score-scale multipliers to use instead of ``cfg``'s static ones (one program for SP and μP; build
    it from ``parametrization.sp_config(cfg)``). None: ``cfg``'s own.
    """

    cfg: ModelConfig
    multipliers: parametrization.Multipliers | None = None

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "b t"],
        segment_ids: Int[Array, "b t"] | None = None,
        positions: Int[Array, "b t"] | None = None,
        cache: list | None = None,
        deterministic: bool = True,
    ) -> tuple[Float[Array, "b t v"], list | None, dict]:
        cfg = self.cfg
        dtype = compute_dtype(cfg)
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        embed = param(
            self, "embed", nn.initializers.normal(cfg.d_model**-0.5), (cfg.vocab_size, cfg.d_model),
            ("vocab", "embed"),
        )
        x = (jnp.take(embed, tokens, axis=0) * jnp.sqrt(cfg.d_model)).astype(dtype)
        x = constrain(x, ("batch", "length", "embed"))
        new_caches, moe_aux = [], {}
        first = 0
        if cfg.scan_layers:
            if cache is not None:
                raise ValueError("ModelConfig.scan_layers=True: decode with unstack_layers(cfg, params) "
                                 "and scan_layers=False (lm.model.network.decode_step does)")
            period, repeats = scan_shape(cfg)
            if repeats:
                x, moe_aux = _scanned_blocks(cfg, x, segment_ids, positions, deterministic, self.multipliers)
                first = period * repeats
        block = _block_class(cfg, training=cache is None)
        for i in range(first, cfg.num_layers):
            block_cache = None if cache is None else cache[i]
            x, c, aux = block(cfg, cfg.block_letters[i], cfg.is_moe_block(i), deterministic, self.multipliers,
                              name=f"block_{i}")(x, segment_ids, positions, block_cache)
            new_caches.append(c)
            if aux:
                moe_aux[i] = aux
        x = RMSNorm(name="final_norm")(x)
        if cfg.tie_embeddings:
            head = embed.T
        else:
            head = param(self, "head", nn.initializers.normal(cfg.d_model**-0.5), (cfg.d_model, cfg.vocab_size),
                         ("embed", "vocab"))
        logits = jnp.einsum("btd,dv->btv", x, head.astype(dtype)).astype(jnp.float32)
        if self.multipliers is not None:  # traced, SP's 1.0 or μP's
            logits = logits * self.multipliers.output
        elif cfg.parametrization == "mup":  # μP output multiplier (lm/model/parametrization.py)
            logits = logits * parametrization.output_multiplier(cfg)
        if cfg.logit_softcap is not None:
            logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
        logits = constrain(logits, ("batch", "length", "vocab"))
        return logits, (None if cache is None else new_caches), moe_aux


# ------------------------------------------------------------- scanned <-> per-block


def stack_layers(cfg: ModelConfig, tree: dict) -> dict:
    """A per-block tree (``block_0`` .. ``block_{L-1}``; parameters or Adam moments) in the
    scanned layout of ``cfg``: ``blocks/block_j`` stacks blocks j, j + period, ... on a
    leading axis; blocks past the last full period keep their names."""
    period, repeats = scan_shape(cfg)
    if not repeats:
        return dict(tree)
    out = {k: v for k, v in tree.items() if not _is_scanned_block(k, period * repeats)}
    out["blocks"] = {
        f"block_{j}": jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[f"block_{r * period + j}"] for r in range(repeats)])
        for j in range(period)
    }
    return out


def unstack_layers(cfg: ModelConfig, tree: dict) -> dict:
    """Inverse of :func:`stack_layers`: the scanned layout back to ``block_0`` .. ``block_{L-1}``."""
    period, repeats = scan_shape(cfg)
    if "blocks" not in tree:
        return dict(tree)
    out = {k: v for k, v in tree.items() if k != "blocks"}
    for j, stacked in tree["blocks"].items():
        j = int(j.removeprefix("block_"))
        for r in range(repeats):
            out[f"block_{r * period + j}"] = jax.tree.map(lambda v, r=r: v[r], stacked)
    return out


def convert_layers(tree: dict, from_cfg: ModelConfig, to_cfg: ModelConfig) -> dict:
    """A parameter (or moment) tree of ``from_cfg``'s layout in ``to_cfg``'s.

    Raises:
      ValueError: the configs differ in more than the layout and compute settings
        (scan_layers, remat, dtype, the kernels' impl switches).
    """
    free = dict(scan_layers=False, remat="none", dtype="float32", attention_impl="auto")

    def layout_free(c: ModelConfig) -> ModelConfig:  # the kernels' impl switches may differ too
        families = {name: dataclasses.replace(s, impl="auto") if hasattr(s, "impl") else s
                    for name, s in c.families.items()}
        return dataclasses.replace(c, **free, families=families)

    if layout_free(from_cfg) != layout_free(to_cfg):
        diff = [f.name for f in dataclasses.fields(ModelConfig) if getattr(from_cfg, f.name) != getattr(to_cfg, f.name)]
        raise ValueError(f"convert_layers: the models differ in {diff}; only {sorted(free)} and the "
                         "families' impl switches may differ")
    if from_cfg.scan_layers == to_cfg.scan_layers:
        return tree
    return stack_layers(to_cfg, tree) if to_cfg.scan_layers else unstack_layers(from_cfg, tree)


def _is_scanned_block(key: str, scanned: int) -> bool:
    return key.startswith("block_") and int(key.removeprefix("block_")) < scanned


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Parameters (unboxed float32 pytree) of a model built from ``cfg`` (μP: rescaled, see below)."""
    params = nn.unbox(init_boxed(cfg, rng, seq_len))
    if cfg.parametrization == "mup":  # μP init multipliers (lm/model/parametrization.py)
        params = parametrization.scale_init(params, param_rules(cfg))
    return params


def boxed_shapes(cfg: ModelConfig) -> dict:
    """Abstract parameters (shapes and logical axis names) of a model built from ``cfg``.

    The parametrization sets values, never shapes: a μP model shares its SP twin's
    (``parametrization.sp_config``) trace, as the sharding rules and μP's rules read them.
    """
    return _boxed_shapes(parametrization.sp_config(cfg))


# Cached: every trainer's shardings and μP's param_rules (the base model and its double at
# every width) read these; one trace of the model's init per shape
@functools.cache
def _boxed_shapes(cfg: ModelConfig) -> dict:
    return jax.eval_shape(lambda: init_boxed(cfg, jax.random.PRNGKey(0)))


def param_rules(cfg: ModelConfig):
    """Each parameter's :class:`lm.model.parametrization.ParamRule` (class and μP multipliers)."""
    return parametrization.param_rules(cfg, boxed_shapes)


def multipliers(cfg: ModelConfig) -> parametrization.Multipliers:
    """``cfg``'s μP multipliers as float32 arrays (all 1.0 under SP), for a program built from
    ``parametrization.sp_config(cfg)`` (:class:`LanguageModel`, ``lm.train.step.make_train_step``)."""
    dims = {s.name: SCORE_DIMS[s.name] for s in cfg.block_mixers if s.name in SCORE_DIMS}
    return parametrization.multipliers(cfg, param_rules(cfg), dims)


def init_boxed(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Parameters with their logical axis names (``nn.LogicallyPartitioned`` leaves)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return LanguageModel(cfg).init({"params": rng, "jitter": rng}, tokens)["params"]


def forward(
    cfg: ModelConfig,
    params: dict,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"] | None = None,
    positions: Int[Array, "b t"] | None = None,
) -> Float[Array, "b t v"]:
    """Float32 logits of every position (training / scoring path, no cache)."""
    return forward_with_aux(cfg, params, tokens, segment_ids, positions)[0]


def forward_with_aux(
    cfg: ModelConfig,
    params: dict,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"] | None = None,
    positions: Int[Array, "b t"] | None = None,
    rng: jax.Array | None = None,
    multipliers: parametrization.Multipliers | None = None,
) -> tuple[Float[Array, "b t v"], dict]:
    """Logits and the MoE auxiliary outputs {block index: aux dict} (empty without MoE).

    ``rng`` (training) enables the router jitter of MoE layers that use it; ``multipliers``: see
    :class:`LanguageModel`.
    """
    rngs = None if rng is None else {"jitter": rng}
    logits, _, aux = LanguageModel(cfg, multipliers).apply(
        {"params": params}, tokens, segment_ids, positions, None, rng is None, rngs=rngs
    )
    return logits, aux


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> list:
    """Empty decode cache: one pytree per block, in block order."""
    dtype = compute_dtype(cfg) if dtype is None else dtype
    return [spec.init_cache(cfg, batch, max_len, dtype) for spec in cfg.block_mixers]


def decode_step(
    cfg: ModelConfig,
    params: dict,
    cache: list,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"],
    positions: Int[Array, "b t"],
) -> tuple[Float[Array, "b t v"], list]:
    """Logits of ``tokens`` continuing from ``cache``, and the updated cache.

    Prefill is a call with the whole prompt (t > 1) on an empty cache; decoding calls it
    with one token at a time. Same function as the training forward, with a cache (a
    scanned model decodes block by block: its parameters are unstacked first).
    """
    if cfg.scan_layers:
        cfg, params = dataclasses.replace(cfg, scan_layers=False), unstack_layers(cfg, params)
    logits, new_cache, _ = LanguageModel(cfg).apply({"params": params}, tokens, segment_ids, positions, cache)
    return logits, new_cache


def cache_bytes(cfg: ModelConfig, context_len: int, dtype=None) -> int:
    """Decode-cache bytes of one sequence after ``context_len`` tokens, summed over blocks."""
    dtype = compute_dtype(cfg) if dtype is None else dtype
    return sum(MIXERS[letter].cache_bytes(cfg, context_len, dtype) for letter in cfg.block_letters)
