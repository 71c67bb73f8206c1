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

from lm.config import ModelConfig

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


MixerCount = tuple[Callable[[ModelConfig], int], Callable[[ModelConfig, int, str], float]]

# letter -> (parameters of the mixer, forward FLOPs per token of the mixer)
MIXER_COUNTS: dict[str, MixerCount] = {
    "A": (_attention_params, lambda cfg, t, a: _attention_flops(cfg, t, a, cfg.attention_window)),
    "W": (_attention_params, lambda cfg, t, a: _attention_flops(cfg, t, a, cfg.window)),
}


def register_counts(letter: str, params: Callable, flops: Callable) -> None:
    """Register parameter and FLOP counts of a mixer letter (see :mod:`lm.mixers`)."""
    MIXER_COUNTS[letter] = (params, flops)


def mlp_params(cfg: ModelConfig) -> int:
    return 3 * cfg.d_model * cfg.ff_dim


def embedding_params(cfg: ModelConfig) -> int:
    """Input embedding plus an untied output head."""
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def param_count(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts: {"total", "non_embedding", "embedding"}.

    Matches ``sum(x.size for x in jax.tree.leaves(init_params(cfg)))`` (tested).
    """
    d = cfg.d_model
    blocks = sum(MIXER_COUNTS[l][0](cfg) + mlp_params(cfg) + 2 * d for l in cfg.block_letters)
    non_embedding = blocks + d  # + final norm
    embedding = embedding_params(cfg)
    return {"total": non_embedding + embedding, "non_embedding": non_embedding, "embedding": embedding}


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, attention: str = "causal") -> float:
    """Forward matmul FLOPs per token of a length-``seq_len`` training sequence."""
    per_block = sum(MIXER_COUNTS[l][1](cfg, seq_len, attention) + 2 * mlp_params(cfg) for l in cfg.block_letters)
    head = 2 * cfg.d_model * cfg.vocab_size
    return per_block + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int, attention: str = "causal") -> float:
    """Training (forward + backward) FLOPs per token: 3 x forward."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, attention)


def train_flops(cfg: ModelConfig, seq_len: int, tokens: float, attention: str = "causal") -> float:
    """Training FLOPs C of a run over ``tokens`` tokens."""
    return train_flops_per_token(cfg, seq_len, attention) * tokens
