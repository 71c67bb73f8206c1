"""Parametrizations: standard (SP) and the Maximal Update Parametrization (μP) for AdamW.

Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer" (arXiv 2203.03466), Table 3 (μP for Adam) and Table 9 (the
equivalent form with an output multiplier), with the abc-symmetry of Adam (Sec. J.2.1:
scaling a weight's forward multiplier by θ, its init by 1/θ and its Adam learning rate by
1/θ leaves training unchanged), used below to keep SP's parameter frames.

``ModelConfig.parametrization`` is "sp" (today's behaviour, untouched: no multiplier is ever
applied) or "mup"; ``ModelConfig.base_width`` is the width at which μP's width multipliers are 1
(μP equals SP there exactly with ``lm.model.mup_options.SP_OPTIONS``).
Widths: the fields in :data:`WIDTH_FIELDS` grow in proportion to ``d_model``
(:func:`at_width` builds a wider model); head counts, experts, vocabulary, conv taps, the
RoPE dims of MLA's decoupled key and GLA's gate rank stay fixed. The base model is
``at_width(cfg, base_width)``; an axis of a parameter is *width-like* when its size differs
between the base model and the model at twice the base width, and m_in is the ratio
(this model / base model) of the product of its fan-in axes.

Every parameter gets one class from its name and shapes (:func:`param_rules`), with
multipliers relative to SP (init: of SP's init; lr: of the peak learning rate; the SP init
of every weight is variance-scaling fan-in, std ∝ fan_in^-1/2, tested):

  class      which parameters                              init   lr        forward
  vector     biases, norm gains, RG-LRU a_param, gate        1      1         -
             biases (names not starting with "w")
  input      weights whose fan-in is not width-like: conv    1      1         -
             taps (depthwise), GLA gate up-projection (from
             rank 16), MLA up-projections from a fixed rank
  embedding  the token embedding                             c (†)  κ m^-1/2  sqrt(d) (SP's)
  hidden     fan-in and fan-out width-like: q/k/v/o, MLP,    1      1/m_in    -
             experts, RG-LRU gates, linear_x/y/out, MLA
             latent down/up projections (ranks ∝ d)
  output     fan-in width-like, fan-out fixed: MoE router,   m^-1/2 1/m_in    -
             MLA decoupled RoPE key (w_kr), GLA gate
             down-projection (d -> 16)
  readout    the untied LM head                              0 (*)  1         logits × 1/m
  (tied)     the embedding as head                           -      -         logits × m^-1/2
  attention  softmax / linear-attention score scale                           d0^1/2 / d_head
  (*) by default (``mup_zero_readout``, below); m^1/2 with ``mup_zero_readout=False``.
  (†) c = ``mup_embedding_init``, κ = ``mup_embedding_lr``, width-independent constants, by default 1
      (``lm.model.mup_options``; "tied embedding" below).

m = d_model / base_width. Why:
  * hidden (Table 3): SP's init var 1/fan_in is μP's; Adam's update of every entry is ~lr,
    so a width-m_in sum of correlated updates grows ∝ m_in unless lr ∝ 1/m_in.
  * output: Table 3's output weights (init var 1/fan_in^2, lr 1/fan_in), kept in the layer
    (no forward multiplier inside a layer): the router's logits start at ~m^-1/2 (uniform
    routing) and move by Θ(1) per step; the same holds for every projection from the width
    into a fixed number of channels (MLA's RoPE key, GLA's decay gate).
  * readout: Table 9's form: logits × 1/m, a width-independent init (zero by default, else
    SP's std d^-1/2 times m^1/2 = d0^-1/2) and a constant lr, as the mup package's MuReadout (which rescales the
    SP init by width_mult^1/2). The effective weight W/m then has init std ∝ 1/d and
    per-step updates ∝ 1/d, Table 3's output layer; the init logits vanish like m^-1/2,
    as with the tied head below. Keeping SP's init here (init logits ∝ 1/m) shrinks the
    random part of the backward signal into the last block relative to the learned part
    as the width grows, and the last block's updates then grow with width (measured by
    ``experiments.coord_check``: slope +0.16 to +0.21 of the last block's outputs).
  * embedding: the model multiplies the embedding by sqrt(d) and inits it with std d^-1/2
    (Gemma/Griffin). By the abc-symmetry with θ = sqrt(d) this is μP's input layer
    (multiplier 1, init Θ(1), lr Θ(1)) only with lr ∝ d^-1/2. Tied, the same matrix is the
    readout, whose μP multiplier 1/m becomes m^-1/2 in this frame (θ = sqrt(d)); both
    roles then move the logits / the embeddings by Θ(1) per step.
  * recurrent (Griffin/Hawk): the RG-LRU recurrence h_t = a_t h_{t-1} + sqrt(1-a_t^2)(i_t x_t)
    is elementwise: a_param (the decay) and the depthwise conv taps never sum over the
    width, so they are vectors / input weights (init and lr Θ(1)), like biases. The gates
    are block-diagonal with a fixed number of blocks whose size grows with the width:
    each block is a hidden matrix with fan-in = the block width.
  * latent (MLA): with ranks ∝ d (DeepSeek-V2 grows them with the model) the down-
    projections d -> r and up-projections r -> heads x dims are hidden matrices; the
    latent's RMSNorm makes the forward scale-free in the down-projection, and its lr ∝ 1/m
    keeps the latent's relative change per step Θ(1). The decoupled RoPE key (fixed
    p dims) is output-like.
  * attention: keys and queries become correlated during training, so q·k grows ∝ d_head;
    μP divides by d_head (Sec. 4 of TP5), written d0^1/2/d_head so it is SP's d0^-1/2 at
    the base width. Linear attention's o = scale q S uses the same scale.

Zero-initialised readout and queries (TP5 and the ``mup`` package's zero-init options):
``ModelConfig.mup_zero_readout`` (untied head only; default None = on under μP, :func:`zero_readout`)
and ``mup_zero_query`` (:data:`QUERY_NAMES`, default off) set those init multipliers to 0. The
logits' change is the readout's own update, Θ(1), plus the features' change through the
random init readout, whose random part falls as m^-1/2; at small widths and few steps the
latter dominates (``experiments.coord_check``'s docstring has the figures) and the logits'
update falls with width; a zero readout removes it, hence the default. A zero query makes
attention uniform at init (its gradient is not zero).

Tied embedding (``mup_embedding_init`` c, ``mup_embedding_lr`` κ): a tied head is the embedding,
which cannot start at zero, so the second part stays. With the readout W (init std ∝ c) and h
the final features, the logits' change is h(W_t - W_0)·mult + (h_t - h_0)W_0·mult. Adam's update
is ~lr per entry whatever the gradient's scale, so the first part ∝ κ (and is Θ(1) in width);
the second ∝ c (h_t - h_0 is set by the hidden layers, whose init and lr c and κ leave alone)
and its random part falls as m^-1/2. Their ratio at the base width is therefore ∝ c/κ, and an
output multiplier cannot change it (it scales both parts alike; Adam is scale-invariant).
μP fixes the width exponents only: the base-width constants are hyperparameters of the base
model. With c = κ = 1 (the default) the vanishing part dominates at small widths and few
steps, and the logits' update falls with width (smoke coordinate check: slope -0.24 to -0.42
for the five tied families). c = 1/4, κ = 4 flatten it for four of them but not GLA (-0.20) and
cost MLA 1 % of loss at the base width; κ = 16 flattens GLA and MLA but costs MLA 3 % (README,
μP), so the default stays 1 and the constants are there to tune. ``mup_options.SP_OPTIONS``
(random readout, c = κ = 1) are the options under which μP equals SP at the base width.

Weight decay (decoupled, Loshchilov & Hutter 2019) is *independent* of the μP lr
multipliers: every decayed weight loses lr · wd · p per step whatever its multiplier
(Wortsman et al. 2023, arXiv 2309.14322, Sec. 3.2.2; Wang & Aitchison 2024, arXiv
2405.13698), so the decay's averaging timescale 1/(lr · wd) steps is the same at every
width; the set of decayed parameters is SP's (``lm.train.step.weight_decay_mask``). At the base
width μP equals SP (all multipliers 1.0; tested bitwise) with a random readout and the
embedding constants 1 (``lm.model.mup_options.SP_OPTIONS``; :func:`equals_sp`).

Axis letters: d model width; m width multiplier d / base_width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lm.model import mup_options

if TYPE_CHECKING:
    from lm.model.config import ModelConfig

WIDTH_FIELDS = ("d_model", "head_dim", "d_ff")
MOE_WIDTH_FIELDS = ("d_ff", "shared_d_ff")
KINDS = ("vector", "input", "embedding", "hidden", "output", "readout")
# query projections (attention, linear attention, MLA direct or from the query latent):
# init 0 under ``ModelConfig.mup_zero_query``
QUERY_NAMES = ("wq", "w_q", "w_uq")


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """How μP treats one parameter: its class, fan-in width ratio and multipliers (vs SP)."""

    kind: str
    fan_in_mult: float
    init_mult: float
    lr_mult: float


def _scaled(obj, fields: tuple[str, ...], ratio: Fraction, owner: str) -> dict:
    out = {}
    for name in fields:
        value = getattr(obj, name)
        if value is None:
            continue
        new = value * ratio
        if new.denominator != 1:
            raise ValueError(
                f"{owner}.{name}={value}: not divisible for width ratio {ratio} (μP scales every width field "
                f"{fields} with d_model; choose base_width and widths that keep them integers)"
            )
        out[name] = int(new)
    return out


def at_width(cfg: ModelConfig, width: int) -> ModelConfig:
    """``cfg`` with d_model = ``width`` and every width field (:data:`WIDTH_FIELDS`) scaled alike.

    A family's settings scale the fields its spec names (``MixerSpec.width_fields``: the
    recurrence width of "R", the MLA ranks and dims of "M") when the pattern uses it, the MoE
    widths only with MoE blocks.

    Raises:
      ValueError: a width field would not be an integer.
    """
    if width == cfg.d_model:
        return cfg
    ratio = Fraction(width, cfg.d_model)
    changes = _scaled(cfg, WIDTH_FIELDS, ratio, "ModelConfig")
    # fields of an unused family stay as they are
    families = dict(cfg.families)
    for spec in {spec.name: spec for spec in cfg.block_mixers}.values():
        if spec.width_fields:
            s = families[spec.name]
            families[spec.name] = dataclasses.replace(s, **_scaled(s, spec.width_fields, ratio, type(s).__name__))
    changes["families"] = families
    if cfg.moe_every > 0:
        changes["moe"] = dataclasses.replace(cfg.moe, **_scaled(cfg.moe, MOE_WIDTH_FIELDS, ratio, "MoEConfig"))
    return dataclasses.replace(cfg, **changes)


def base_config(cfg: ModelConfig) -> ModelConfig:
    """The model at ``base_width`` (where every width multiplier is 1)."""
    if cfg.base_width is None:
        raise ValueError("ModelConfig.base_width=None: required when parametrization='mup'")
    return at_width(cfg, cfg.base_width)


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / base_width (1.0 under SP)."""
    return 1.0 if cfg.parametrization == "sp" else cfg.d_model / cfg.base_width


# ------------------------------------------------------------------ forward multipliers


def zero_readout(cfg: ModelConfig) -> bool:
    """Whether the untied readout starts at zero: ``mup_zero_readout``, by default (None) μP with an untied head."""
    return mup_options.resolve("mup_zero_readout", cfg.mup_zero_readout, cfg.parametrization, cfg.tie_embeddings)


def embedding_multipliers(cfg: ModelConfig) -> tuple[float, float]:
    """(init, lr) base-width constants of the embedding: ``mup_embedding_init`` / ``mup_embedding_lr``, by
    default (None) ``lm.model.mup_options``' values (1 and 1 for every head today; "tied embedding" above)."""
    return tuple(float(mup_options.resolve(name, getattr(cfg, name), cfg.parametrization, cfg.tie_embeddings))
                 for name in mup_options.EMBEDDING_OPTIONS)


def output_multiplier(cfg: ModelConfig) -> float | None:
    """Multiplier of the output logits: None under SP; 1/m (untied head) or m^-1/2 (tied)."""
    if cfg.parametrization == "sp":
        return None
    m = width_mult(cfg)
    return m**-0.5 if cfg.tie_embeddings else 1.0 / m


def score_scale(cfg: ModelConfig, head_dim: Callable[[ModelConfig], int]) -> float | None:
    """Attention score scale: None under SP (the layer's d_head^-1/2); μP: d0^-1/2 · d0 / d_head.

    ``head_dim(cfg)`` is the query/key dimension contracted in q·k (d0 at the base width).
    """
    if cfg.parametrization == "sp":
        return None
    d, d0 = head_dim(cfg), head_dim(base_config(cfg))
    return d0**-0.5 * (d0 / d)


# ----------------------------------------------------------------- per-parameter rules


def equals_sp(cfg: ModelConfig, rules) -> bool:
    """Whether ``cfg`` (its :func:`param_rules` ``rules``) trains exactly as under SP: SP, or μP at the
    base width (forward multipliers SP's) with every init and lr multiplier 1, i.e. no zero init
    (``mup_zero_readout``, on by default for an untied head, or ``mup_zero_query``)."""
    if cfg.parametrization == "sp":
        return True
    leaves = jax.tree.leaves(rules, is_leaf=lambda x: isinstance(x, ParamRule))
    return width_mult(cfg) == 1.0 and all(r.init_mult == r.lr_mult == 1.0 for r in leaves)


def _is_weight(name: str) -> bool:
    return name in ("kernel", "embed", "head") or name.startswith("w")


def _axes_roles(names: tuple, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fan-in axes, fan-out axes) of a weight from its logical axis names.

    Batch axes (neither): a leading "experts" axis (one matrix per expert) and the "heads"
    axis of RG-LRU's block-diagonal gates ("heads", None, None). Output projections out of
    heads ("heads", "head_dim", "embed") take both head axes as fan-in; every other weight
    has its first (non-batch) axis as fan-in.
    """
    batch = 1 if names[0] == "experts" or names == ("heads", None, None) else 0
    rest = tuple(range(batch, ndim))
    n_in = 2 if names[batch:batch + 2] == ("heads", "head_dim") and ndim - batch == 3 else 1
    return rest[:n_in], rest[n_in:]


def _leaves(boxed) -> list:
    return jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]


@functools.lru_cache(maxsize=64)
def param_rules(cfg: ModelConfig, boxed_shapes: Callable[[ModelConfig], Any]) -> Any:
    """The :class:`ParamRule` of every parameter, as a tree shaped like the (unboxed) params.

    ``boxed_shapes(cfg)`` returns the abstract boxed parameters of a model
    (``lm.model.network.boxed_shapes``). Under SP (or at the base width) every multiplier is 1.
    """
    structure = jax.tree.structure(nn.unbox(boxed_shapes(cfg)))
    if cfg.parametrization == "sp":
        return jax.tree_util.tree_unflatten(structure, [ParamRule("sp", 1.0, 1.0, 1.0)] * structure.num_leaves)
    base = base_config(cfg)
    trees = [_leaves(boxed_shapes(c)) for c in (cfg, base, at_width(base, 2 * base.d_model))]
    m = width_mult(cfg)
    rules = []
    for (path, leaf), (_, b), (_, w) in zip(*trees, strict=True):
        names, shape = leaf.names, leaf.value.shape
        keys = tuple(getattr(p, "key", str(p)) for p in path)
        wide = [bs != ws for bs, ws in zip(b.value.shape, w.value.shape, strict=True)]
        ratio = [s / bs for s, bs in zip(shape, b.value.shape, strict=True)]
        if keys == ("embed",):
            init, lr = embedding_multipliers(cfg)
            rules.append(ParamRule("embedding", 1.0, init, lr * m**-0.5))
            continue
        if keys == ("head",):
            rules.append(ParamRule("readout", 1.0, 0.0 if zero_readout(cfg) else m**0.5, 1.0))
            continue
        if not _is_weight(keys[-1]):
            rules.append(ParamRule("vector", 1.0, 1.0, 1.0))
            continue
        fan_in, fan_out = _axes_roles(tuple(names), len(shape))
        m_in = math.prod(ratio[i] for i in fan_in)
        if not any(wide[i] for i in fan_in):
            rules.append(ParamRule("input", m_in, 1.0, 1.0))
        elif any(wide[i] for i in fan_out):
            rules.append(ParamRule("hidden", m_in, 1.0, 1.0 / m_in))
        else:
            rules.append(ParamRule("output", m_in, m_in**-0.5, 1.0 / m_in))
        if cfg.mup_zero_query and keys[-1] in QUERY_NAMES:  # TP5: uniform attention at init
            rules[-1] = dataclasses.replace(rules[-1], init_mult=0.0)
    return jax.tree_util.tree_unflatten(structure, rules)


def _field(rules, name: str):
    return jax.tree.map(lambda r: getattr(r, name), rules, is_leaf=lambda x: isinstance(x, ParamRule))


def _times(tree, mults):
    """``tree`` times ``mults`` leaf by leaf: a static 1.0 is skipped (SP untouched), an array always multiplies."""
    return jax.tree.map(lambda p, s: p if isinstance(s, float) and s == 1.0 else p * jnp.asarray(s, p.dtype),
                        tree, mults)


def scale_init(params, rules=None, *, init_mults=None):
    """SP-initialised ``params`` times each parameter's μP init multiplier: ``rules``' static floats or
    ``init_mults`` (:attr:`Multipliers.init`, arrays shaped like the params, traced)."""
    return _times(params, _field(rules, "init_mult") if init_mults is None else init_mults)


def scale_learning_rates(tx: optax.GradientTransformation, rules=None, *,
                         lr_mults=None) -> optax.GradientTransformation:
    """``tx`` whose updates are multiplied by each parameter's μP lr multiplier.

    The multipliers are ``rules``' static floats or ``lr_mults`` (:attr:`Multipliers.lr`, float32 [] arrays
    shaped like the params, traced). The state is ``tx``'s own (same tree as SP: checkpoints and sharding
    specs do not change); the step then applies p - lr (multiplier · u + wd p) (independent decay).
    """
    mults = _field(rules, "lr_mult") if lr_mults is None else lr_mults

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        return _times(updates, mults), state

    return optax.GradientTransformation(tx.init, update)


# ------------------------------------------------- multipliers as arrays (one program for SP and μP)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["output", "score", "init", "lr"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Multipliers:
    """μP's multipliers relative to SP as float32 arrays: inputs of a program that SP and μP share.

    Given to a model built from the SP config (:func:`sp_config`), they replace the static floats
    that a μP config bakes into its program, so one compile serves both (``experiments.coord_check``;
    stacked runs carry a leading run axis [k] on every leaf). SP's are all 1.0 and x · 1.0 == x:
    SP's numbers are its static program's (bit for bit in the coordinate check, measured); μP's
    differ by round-off (the score ratio multiplies q instead of the scale).

    Attributes:
      output: [] the logits' multiplier (:func:`output_multiplier`; SP 1).
      score: {mixer family name: []} μP's score scale over SP's d_head^-1/2 (:func:`score_scale`),
        sqrt(d0 / d_head): the layer multiplies its queries by it and keeps SP's static scale.
      init, lr: trees shaped like the params of [] init and lr multipliers (:class:`ParamRule`).
    """

    output: Any
    score: dict
    init: Any
    lr: Any


def sp_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` under SP, every μP option at SP's value: ``cfg``'s shapes, the program of :class:`Multipliers`."""
    return dataclasses.replace(cfg, parametrization="sp", mup_zero_query=False,
                               **dict.fromkeys(mup_options.MUP_OPTIONS))


def multipliers(cfg: ModelConfig, rules, score_dims: dict[str, Callable[[ModelConfig], int]]) -> Multipliers:
    """``cfg``'s :class:`Multipliers` (all 1.0 under SP) from its :func:`param_rules` ``rules``.

    ``score_dims``: {mixer family name: cfg -> the q·k dimension of its score scale} of the model's families.
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    score = {name: 1.0 if cfg.parametrization == "sp" else score_scale(cfg, dim) * dim(cfg) ** 0.5
             for name, dim in score_dims.items()}
    init, lr = (jax.tree.map(f32, _field(rules, name)) for name in ("init_mult", "lr_mult"))
    return Multipliers(output=f32(output_multiplier(cfg) or 1.0), score={k: f32(v) for k, v in score.items()},
                       init=init, lr=lr)


def rules_table(rules) -> list[dict]:
    """One row {path, kind, fan_in_mult, init_mult, lr_mult} per parameter (reports, tests)."""
    flat = jax.tree_util.tree_flatten_with_path(rules, is_leaf=lambda x: isinstance(x, ParamRule))[0]
    return [{"path": "/".join(str(getattr(p, "key", p)) for p in path), **dataclasses.asdict(r)} for path, r in flat]
