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
"""

from __future__ import annotations

from collections.abc import Callable

from layers.mla import mla_flops_per_token, mla_param_count
from layers.moe import moe_flops_per_token, moe_param_count
from lm.config import ModelConfig
from lm.mixers import rnn_heads, rnn_width
from pallas_kernels.linear_attention.reference import linear_attention_flops

ATTENTION_ACCOUNTING = ("causal", "dense")


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


def _attention_params(cfg: ModelConfig) -> int:
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    return d * h * k + 2 * d * g * k + h * k * d


def _attention_flops(cfg: ModelConfig, seq_len: int, attention: str, window: int | None) -> float:
    h, k = cfg.num_heads, cfg.dim_per_head
    projections = 2 * _attention_params(cfg)
    pairs = visible_keys_per_query(seq_len, window, attention)
    return projections + 2 * 2 * h * k * pairs


def _recurrent_params(cfg: ModelConfig) -> int:
    """linear_x, linear_y (d -> r, with bias), Conv1D (k taps + bias), RG-LRU, linear_out (r -> d + bias)."""
    d, r, h, k = cfg.d_model, rnn_width(cfg), rnn_heads(cfg), cfg.conv_width
    block = r // h
    rg_lru = 2 * (h * block * block + h * block) + r  # two block-diagonal gates + Lambda
    return 2 * (d * r + r) + (k * r + r) + rg_lru + (r * d + d)


def _recurrent_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    """Griffin recurrent block (De et al. 2024, Fig. 2): projections, depthwise conv, RG-LRU gates.

    The scan itself (h_t = a_t h_{t-1} + x_t) and the gate nonlinearities are elementwise.
    """
    d, r, h, k = cfg.d_model, rnn_width(cfg), rnn_heads(cfg), cfg.conv_width
    return 2 * (2 * d * r) + 2 * r * d + 2 * k * r + 2 * (2 * r * (r // h))


def _linear_attention_params(cfg: ModelConfig) -> int:
    d, h, k = cfg.d_model, cfg.num_heads, cfg.dim_per_head
    count = 3 * d * h * k + h * k * d + d * h * k  # q, k, v, output, output gate
    if cfg.la_variant == "gla":
        count += d * 16 + 16 * h * k + h * k  # low-rank gate d -> 16 -> h*k, bias
    count += {"rms": k, "group": 2 * h * k, "none": 0}[cfg.la_output_norm]
    return count


def _linear_attention_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    """Projections plus the chunked algorithm (Qin et al. 2024, Lightning Attention-2) per token."""
    d, h, k = cfg.d_model, cfg.num_heads, cfg.dim_per_head
    projections = 2 * (5 * d * h * k)
    if cfg.la_variant == "gla":
        projections += 2 * (d * 16 + 16 * h * k)
    chunk = min(cfg.la_chunk_size, seq_len)
    decay = "per_key" if cfg.la_variant == "gla" else "scalar"  # document resets make g present
    return projections + linear_attention_flops(seq_len, num_heads=h, key_dim=k, value_dim=k,
                                                chunk_size=chunk, decay=decay)


def _mla_dims(cfg: ModelConfig) -> dict:
    return dict(q_lora_rank=cfg.mla_q_lora_rank, kv_lora_rank=cfg.mla_kv_lora_rank, qk_nope_dim=cfg.mla_qk_nope_dim,
                qk_rope_dim=cfg.mla_qk_rope_dim, v_head_dim=cfg.mla_v_head_dim)


def _mla_params(cfg: ModelConfig) -> int:
    return mla_param_count(cfg.d_model, cfg.num_heads, **_mla_dims(cfg))


def _mla_flops(cfg: ModelConfig, seq_len: int, attention: str) -> float:
    keys = visible_keys_per_query(seq_len, None, attention)
    return mla_flops_per_token(cfg.d_model, cfg.num_heads, **_mla_dims(cfg), keys=keys, mode="forward")


def mla_decode_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    """FLOPs of one MLA decode step over ``context_len`` cached tokens (the config's decode path)."""
    return mla_flops_per_token(cfg.d_model, cfg.num_heads, **_mla_dims(cfg), keys=context_len,
                               mode=cfg.mla_decode_path)


MixerCount = tuple[Callable[[ModelConfig], int], Callable[[ModelConfig, int, str], float]]

# letter -> (parameters of the mixer, forward FLOPs per token of the mixer)
MIXER_COUNTS: dict[str, MixerCount] = {
    "A": (_attention_params, lambda cfg, t, a: _attention_flops(cfg, t, a, cfg.attention_window)),
    "W": (_attention_params, lambda cfg, t, a: _attention_flops(cfg, t, a, cfg.window)),
    "R": (_recurrent_params, _recurrent_flops),
    "L": (_linear_attention_params, _linear_attention_flops),
    "M": (_mla_params, _mla_flops),
}


def register_counts(letter: str, params: Callable, flops: Callable) -> None:
    """Register parameter and FLOP counts of a mixer letter (see :mod:`lm.mixers`)."""
    MIXER_COUNTS[letter] = (params, flops)


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
    for index, letter in enumerate(cfg.block_letters):
        mixer = MIXER_COUNTS[letter][0](cfg) + 2 * d  # + the block's two norms
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
        MIXER_COUNTS[letter][1](cfg, seq_len, attention) + _ff_flops(cfg, index)
        for index, letter in enumerate(cfg.block_letters)
    )
    head = 2 * cfg.d_model * cfg.vocab_size
    return per_block + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int, attention: str = "causal") -> float:
    """Training (forward + backward) FLOPs per token: 3 x forward."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, attention)


def train_flops(cfg: ModelConfig, seq_len: int, tokens: float, attention: str = "causal") -> float:
    """Training FLOPs C of a run over ``tokens`` tokens."""
    return train_flops_per_token(cfg, seq_len, attention) * tokens
