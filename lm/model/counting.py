"""Exact parameter counts and FLOPs per token for every mixer, not only 6N.

Conventions (Kaplan et al. 2020, Appendix; Hoffmann et al. 2022, Appendix F):
  * a matmul of [m, n] by [n, p] costs 2 m n p FLOPs; elementwise work (norms,
    activations, softmax, rotary) is not counted: it is a few percent at the sizes we
    train and the test against XLA's count bounds the error;
  * training = forward + backward = 3 x forward (the backward of every matmul is two
    matmuls of the same size);
  * attention score (QK^T) and value (PV) products are counted per visible (query, key)
    pair: ``attention="causal"`` counts only pairs the causal / window mask keeps (the
    model's useful work; a kernel that skips masked blocks does about this), and
    ``attention="dense"`` every pair of the T x T square (what a masked dense softmax
    executes; what XLA counts for the reference path).

Non-embedding parameters exclude the input embedding and an untied output head
(Kaplan et al. 2020); total parameters include everything.

Every count of a built-in family lives here: the mixers' (one pair of functions per family,
which the family's spec in :mod:`lm.model.mixers` declares; a family's settings are
``lm.model.families.settings(cfg, name)``), the MoE layer's, the chunked linear-attention
algorithm's and MLA's. The model totals sum ``spec.params`` / ``spec.flops`` of every
block, so a family registered outside ``lm/`` is counted by its own spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lm.model.families import settings
from pallas_kernels.linear_attention.reference import DECAY_MODES

if TYPE_CHECKING:
    from layers.moe import MoEConfig
    from lm.model.config import ModelConfig

ATTENTION_ACCOUNTING = ("causal", "dense")
MLA_MODES = ("forward", "absorbed", "naive")


def visible_keys_per_query(seq_len: int, window: int | None, attention: str = "causal") -> float:
    """Mean number of keys a query attends to over a length-T causal sequence.

    causal: mean over i < T of min(i, w) + 1 (w = T for full attention);
    dense: T (every pair of the square is computed, then masked).
    """
    if attention not in ATTENTION_ACCOUNTING:
        raise ValueError(f"attention={attention!r}: allowed values are {ATTENTION_ACCOUNTING}")
    if attention == "dense":
        return float(seq_len)
    w = seq_len if window is None else min(window, seq_len)
    # positions 0..w-1 see i+1 keys; the remaining T-w positions see w+1.
    full = sum(range(1, w + 1)) + (seq_len - w) * (w + 1)
    return full / seq_len


# ----------------------------------------------------------------------------- attention ("A", "W")


def attention_params(cfg: ModelConfig) -> int:
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    return d * h * k + 2 * d * g * k + h * k * d


def attention_flops(cfg: ModelConfig, seq_len: int, attention: str, window: int | None) -> float:
    h, k = cfg.num_heads, cfg.dim_per_head
    projections = 2 * attention_params(cfg)
    pairs = visible_keys_per_query(seq_len, window, attention)
    return projections + 2 * 2 * h * k * pairs


# ----------------------------------------------------------------------------- recurrent block ("R")


def recurrent_params(cfg: ModelConfig) -> int:
    """linear_x, linear_y (d -> r, with bias), Conv1D (k taps + bias), RG-LRU, linear_out (r -> d + bias)."""
    rnn = settings(cfg, "rnn")
    d, k = cfg.d_model, rnn.conv_width
    r, h = rnn.lru_width(d), rnn.gate_heads(cfg.num_heads)
    block = r // h
    rg_lru = 2 * (h * block * block + h * block) + r  # two block-diagonal gates + Lambda
    return 2 * (d * r + r) + (k * r + r) + rg_lru + (r * d + d)


def recurrent_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    """Griffin recurrent block (De et al. 2024, Fig. 2): projections, depthwise conv, RG-LRU gates.

    The scan itself (h_t = a_t h_{t-1} + x_t) and the gate nonlinearities are elementwise.
    """
    rnn = settings(cfg, "rnn")
    d, k = cfg.d_model, rnn.conv_width
    r, h = rnn.lru_width(d), rnn.gate_heads(cfg.num_heads)
    return 2 * (2 * d * r) + 2 * r * d + 2 * k * r + 2 * (2 * r * (r // h))


# ----------------------------------------------------------------------------- linear attention ("L")


def linear_attention_flops(
    seq_len: int,
    *,
    num_heads: int,
    key_dim: int,
    value_dim: int,
    chunk_size: int = 64,
    decay: str = "scalar",
) -> float:
    """Forward FLOPs per token of the chunked linear-attention algorithm (one sequence, all heads).

    Per head and chunk of C steps (K key dim, V value dim), counting a multiply-add as 2:
      intra scores Q K^T           2 C^2 K    (full C x C block; the causal half is masked)
      scores ⊙ decay               C^2 (scalar) | 4 C^2 K (per-key: diff, 2 products, sum)
      intra output scores V        2 C^2 V
      state contribution K~^T V    2 C K V  (+ C K to decay K)
      state update  d ⊙ S + U      2 K V
      inter output  (Q ⊙ e^B) S    2 C K V  (+ C K to decay Q)
      output sum and scale         2 C V
    T is padded up to a multiple of C, so the count is for ceil(T / C) chunks divided by
    T. Exponentials and the masks are not counted (XLA counts them as transcendentals or
    not at all). Tested against XLA's cost analysis of ``linear_attention_chunked``
    (C = K = V = 64, one outer step, since XLA counts a loop body once): within 1% without
    decay or with scalar decay, about 6% above it with per-key decay.

    Training: the backward of the algorithm is about twice the forward (3x forward in
    all, the count used here). The reference's hand-written backward also recomputes the
    intra-chunk scores (2 C^2 K + C^2 per chunk and head, 4 C^2 K with per-key decay),
    about 3.25x forward in all at C = K = V (autodiff of a checkpointed forward would be
    4x); the kernel's backward adds a state-only pass (2 C K V + 2 K V).

    Args:
      seq_len: T.
      num_heads, key_dim, value_dim: h, K, V (per head).
      chunk_size: C.
      decay: "none", "scalar" (g) or "per_key" (gk, with or without g).

    Returns:
      FLOPs per token (float), summed over heads.
    """
    if decay not in DECAY_MODES:
        raise ValueError(f"linear_attention_flops: decay={decay!r} is not one of {DECAY_MODES}")
    c, kd, vd = chunk_size, key_dim, value_dim
    n_chunks = -(-seq_len // c)
    decay_scores = {"none": 0, "scalar": c * c, "per_key": 4 * c * c * kd}[decay]
    decay_vectors = 0 if decay == "none" else 2 * c * kd
    per_chunk = (
        2 * c * c * kd + decay_scores + 2 * c * c * vd  # intra
        + 2 * c * kd * vd + 2 * kd * vd  # state contribution and update
        + 2 * c * kd * vd  # inter
        + decay_vectors + 2 * c * vd
    )
    return num_heads * n_chunks * per_chunk / seq_len


def linear_attention_params(cfg: ModelConfig) -> int:
    d, h, k = cfg.d_model, cfg.num_heads, cfg.dim_per_head
    count = 3 * d * h * k + h * k * d + d * h * k  # q, k, v, output, output gate
    la = settings(cfg, "la")
    if la.variant == "gla":
        count += d * 16 + 16 * h * k + h * k  # low-rank gate d -> 16 -> h*k, bias
    count += {"rms": k, "group": 2 * h * k, "none": 0}[la.output_norm]
    return count


def linear_attention_mixer_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    """Projections plus the chunked algorithm (Qin et al. 2024, Lightning Attention-2) per token."""
    d, h, k = cfg.d_model, cfg.num_heads, cfg.dim_per_head
    la = settings(cfg, "la")
    projections = 2 * (5 * d * h * k)
    if la.variant == "gla":
        projections += 2 * (d * 16 + 16 * h * k)
    chunk = min(la.chunk_size, seq_len)
    decay = "per_key" if la.variant == "gla" else "scalar"  # document resets make g present
    return projections + linear_attention_flops(seq_len, num_heads=h, key_dim=k, value_dim=k,
                                                chunk_size=chunk, decay=decay)


# ----------------------------------------------------------------------------- MLA ("M")


def mla_param_count(
    d_model: int, num_heads: int, *, q_lora_rank: int, kv_lora_rank: int, qk_nope_dim: int,
    qk_rope_dim: int, v_head_dim: int,
) -> int:
    """Exact parameter count of one ``layers.mla.MLA`` layer (projections plus the two RMSNorm gains)."""
    h, qk = num_heads, qk_nope_dim + qk_rope_dim
    if q_lora_rank > 0:
        query = d_model * q_lora_rank + q_lora_rank + q_lora_rank * h * qk
    else:
        query = d_model * h * qk
    latent = d_model * kv_lora_rank + kv_lora_rank + d_model * qk_rope_dim
    up = kv_lora_rank * h * (qk_nope_dim + v_head_dim)
    return query + latent + up + h * v_head_dim * d_model


def mla_flops_per_token(
    d_model: int, num_heads: int, *, q_lora_rank: int, kv_lora_rank: int, qk_nope_dim: int,
    qk_rope_dim: int, v_head_dim: int, keys: float, mode: str = "forward",
) -> float:
    """Matmul FLOPs (2 m n p per [m, n] x [n, p]) of one MLA layer for one query token (DeepSeek-V2).

    Args:
      keys: keys the token attends to (e.g. the mean number of visible keys in training,
        or the cache length in decode).
      mode: "forward": training/prefill forward (keys and values expanded per token);
        "absorbed": one decode step of the absorbed path (attention over the latent);
        "naive": one decode step of the naive path (re-expands ``keys`` cached latents).
    """
    h, n, p, e, c = num_heads, qk_nope_dim, qk_rope_dim, v_head_dim, kv_lora_rank
    if mode not in MLA_MODES:
        raise ValueError(f"mode={mode!r}: allowed values are {MLA_MODES}")
    query = 2 * (d_model * q_lora_rank + q_lora_rank * h * (n + p)) if q_lora_rank > 0 else 2 * d_model * h * (n + p)
    latent = 2 * d_model * (c + p)
    out = 2 * h * e * d_model
    if mode == "absorbed":
        fold = 2 * h * n * c + 2 * h * c * e  # W_uk into the query, W_uv after attention
        return query + latent + fold + out + 2 * h * (c + p) * keys + 2 * h * c * keys
    expand = 2 * c * h * (n + e) * (keys if mode == "naive" else 1)
    return query + latent + expand + out + 2 * h * (n + p) * keys + 2 * h * e * keys


def _mla_dims(cfg: ModelConfig) -> dict:
    m = settings(cfg, "mla")
    return dict(q_lora_rank=m.q_lora_rank, kv_lora_rank=m.kv_lora_rank, qk_nope_dim=m.qk_nope_dim,
                qk_rope_dim=m.qk_rope_dim, v_head_dim=m.v_head_dim)


def mla_params(cfg: ModelConfig) -> int:
    return mla_param_count(cfg.d_model, cfg.num_heads, **_mla_dims(cfg))


def mla_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    keys = visible_keys_per_query(seq_len, None, attention)
    return mla_flops_per_token(cfg.d_model, cfg.num_heads, **_mla_dims(cfg), keys=keys, mode="forward")


# ----------------------------------------------------------------------------- feed-forward (MLP, MoE)


def moe_param_count(config: MoEConfig, d_model: int) -> dict[str, float]:
    """Exact parameter counts of one ``layers.moe.MoEFeedForward`` layer.

    Returns a dict with "router" (d e), "routed_experts" (e * 3 d f), "shared_experts"
    (3 d * shared width), "total" (their sum) and "active" (parameters used per token:
    router + k routed experts + shared experts; for expert choice the average
    k * capacity_factor experts per token, not necessarily an integer).
    """
    router = d_model * config.num_experts
    per_expert = 3 * d_model * config.d_ff
    shared = 3 * d_model * config.shared_width
    total = router + config.num_experts * per_expert + shared
    experts_per_token = config.top_k * (config.capacity_factor if config.router == "expert_choice" else 1)
    return {
        "router": router,
        "routed_experts": config.num_experts * per_expert,
        "shared_experts": shared,
        "total": total,
        "active": router + experts_per_token * per_expert + shared,
    }


def moe_flops_per_token(config: MoEConfig, d_model: int, *, executed: bool = False) -> float:
    """Forward matmul FLOPs per token of one MoE layer (2 per multiply-accumulate).

    Counts the router (2 d e), the experts each token uses (k * 2 * 3 d f) and the shared
    experts (2 * 3 d * shared width); elementwise work (softmax, top-k, activation, gating
    product, combine) is not counted. Training FLOPs are 3x this (forward + backward).

    Args:
      executed: count what the dispatch computes instead of what routing needs:
        "dense" runs all e experts on every token, "capacity" fills e * c slots for n
        tokens (c / n * e = k * capacity_factor up to rounding, taken as
        k * capacity_factor), "dropless" k. Default False (the model FLOPs for scaling laws).
    """
    experts_per_token = float(config.top_k)
    if config.router == "expert_choice" or (executed and config.dispatch == "capacity"):
        experts_per_token = config.top_k * config.capacity_factor
    if executed and config.dispatch == "dense":
        experts_per_token = float(config.num_experts)
    router = 2 * d_model * config.num_experts
    return router + experts_per_token * 6 * d_model * config.d_ff + 6 * d_model * config.shared_width


def mlp_params(cfg: ModelConfig) -> int:
    return 3 * cfg.d_model * cfg.ff_dim


def _ff_params(cfg: ModelConfig, index: int) -> tuple[float, float]:
    """(total, active) parameters of block ``index``'s feed-forward (dense MLP or MoE)."""
    if cfg.is_moe_block(index):
        counts = moe_param_count(cfg.moe, cfg.d_model)
        return counts["total"], counts["active"]
    return mlp_params(cfg), mlp_params(cfg)


def _ff_flops(cfg: ModelConfig, index: int) -> float:
    if cfg.is_moe_block(index):
        return moe_flops_per_token(cfg.moe, cfg.d_model)
    return 2 * mlp_params(cfg)


def embedding_params(cfg: ModelConfig) -> int:
    """Input embedding plus an untied output head."""
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def param_count(cfg: ModelConfig) -> dict[str, float]:
    """Exact parameter counts: {"total", "non_embedding", "embedding", "active", "active_non_embedding"}.

    "total" matches ``sum(x.size for x in jax.tree.leaves(init_params(cfg)))`` (tested).
    "active" counts the parameters one token uses: for MoE blocks the router, the k
    routed experts and the shared experts (scaling laws for MoE use active parameters);
    it equals "total" for dense models.
    """
    d = cfg.d_model
    non_embedding, active = d, d  # the final norm
    for index, spec in enumerate(cfg.block_mixers):
        mixer = spec.params(cfg) + 2 * d  # + the block's two norms
        ff_total, ff_active = _ff_params(cfg, index)
        non_embedding += mixer + ff_total
        active += mixer + ff_active
    embedding = embedding_params(cfg)
    return {
        "total": non_embedding + embedding,
        "non_embedding": non_embedding,
        "embedding": embedding,
        "active": active + embedding,
        "active_non_embedding": active,
    }


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, attention: str = "causal") -> float:
    """Forward matmul FLOPs per token of a length-``seq_len`` training sequence."""
    per_block = sum(
        spec.flops(cfg, seq_len, attention) + _ff_flops(cfg, index)
        for index, spec in enumerate(cfg.block_mixers)
    )
    head = 2 * cfg.d_model * cfg.vocab_size
    return per_block + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int, attention: str = "causal") -> float:
    """Training (forward + backward) FLOPs per token: 3 x forward."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, attention)

