"""MLA: forward vs a float64 NumPy transcription of DeepSeek-V2 eqs. 9-19, both decode
paths vs the forward pass, cache accounting vs an MHA layer, FLOPs vs XLA's count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.attention import Attention
from layers.mla import MLA, mla_cache_bytes_per_token
from lm.model.counting import mla_flops_per_token, mla_param_count

B, T, D = 2, 7, 32
SHAPES = dict(num_heads=4, kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=6)


def inputs():
    x = np.random.default_rng(0).standard_normal((B, T, D), np.float32)
    seg = np.array([[0, 0, 0, 1, 1, 1, 1], [0] * T], np.int32)  # row 0 packs two documents
    pos = np.array([[0, 1, 2, 0, 1, 2, 3], list(range(T))], np.int32)
    return jnp.asarray(x), jnp.asarray(seg), jnp.asarray(pos)


def init(module, x, seg, pos):
    return jax.jit(lambda key: module.init(key, x, segment_ids=seg, positions=pos))(jax.random.PRNGKey(0))


def _rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * (1.0 + scale)


def _rope(x, pos):
    """Rotate-half RoPE of the whole last axis, theta_i = 10000 ** (-2 i / p)."""
    half = x.shape[-1] // 2
    ang = np.asarray(pos)[..., None].astype(np.float64) * 10_000.0 ** (-2.0 * np.arange(half) / x.shape[-1])
    ang = ang.reshape(ang.shape[:2] + (1,) * (x.ndim - 3) + (half,))
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], axis=-1)


def mla_numpy(params, x, seg, pos, *, q_lora_rank, num_heads, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim):
    """DeepSeek-V2 MLA written out in float64 NumPy (eqs. 9-19), causal within documents."""
    p = jax.tree.map(lambda a: np.asarray(a).astype(np.float64), nn.meta.unbox(params)["params"])
    x = np.asarray(x).astype(np.float64)
    n = qk_nope_dim
    if q_lora_rank:
        q = np.einsum("btq,qhk->bthk", _rms(x @ p["w_dq"], p["q_norm"]["scale"]), p["w_uq"])
    else:
        q = np.einsum("btd,dhk->bthk", x, p["w_q"])
    q_nope, q_rope = q[..., :n], _rope(q[..., n:], pos)
    c_kv = _rms(x @ p["w_dkv"], p["kv_norm"]["scale"])
    k_rope = _rope(x @ p["w_kr"], pos)
    k_nope = np.einsum("bsc,chn->bshn", c_kv, p["w_uk"])
    v = np.einsum("bsc,che->bshe", c_kv, p["w_uv"])
    scores = np.einsum("bthn,bshn->bhts", q_nope, k_nope) + np.einsum("bthp,bsp->bhts", q_rope, k_rope)
    scores /= np.sqrt(qk_nope_dim + qk_rope_dim)
    t = x.shape[1]
    seg = np.asarray(seg)
    mask = np.tril(np.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :])
    scores = np.where(mask[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshe->bthe", probs, v)
    return np.einsum("bthe,hed->btd", o, p["w_o"])


@pytest.mark.parametrize("q_lora_rank", [0, 8])
def test_forward_matches_numpy_transcription_and_param_count(q_lora_rank):
    x, seg, pos = inputs()
    module = MLA(q_lora_rank=q_lora_rank, **SHAPES)
    params = init(module, x, seg, pos)
    y, cache = jax.jit(lambda p: module.apply(p, x, segment_ids=seg, positions=pos))(params)
    assert cache is None
    expected = mla_numpy(params, x, seg, pos, q_lora_rank=q_lora_rank, **SHAPES)
    np.testing.assert_allclose(np.asarray(y).astype(np.float64), expected, atol=2e-5, rtol=2e-5)
    leaves = jax.tree.leaves(nn.meta.unbox(params))
    assert sum(a.size for a in leaves) == mla_param_count(D, q_lora_rank=q_lora_rank, **SHAPES)


@pytest.mark.parametrize("q_lora_rank", [0, 8])
def test_prefill_then_decode_equals_forward_for_both_paths(q_lora_rank):
    """Prefill 3 tokens, decode 4 one at a time: naive == absorbed == forward, at every step."""
    x, seg, pos = inputs()
    module = MLA(q_lora_rank=q_lora_rank, **SHAPES)
    params = init(module, x, seg, pos)
    y_full, _ = jax.jit(lambda p: module.apply(p, x, segment_ids=seg, positions=pos))(params)
    outs = {}
    for path in ("naive", "absorbed"):
        m = module.clone(decode_path=path)
        step = jax.jit(lambda c, x, s, p, m=m: m.apply(params, x, segment_ids=s, positions=p, cache=c))
        cache = m.init_cache(B, 10)
        ys = []
        for lo, hi in [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]:
            y, cache = step(cache, x[:, lo:hi], seg[:, lo:hi], pos[:, lo:hi])
            ys.append(y)
        outs[path] = jnp.concatenate(ys, axis=1)
        assert int(cache["index"]) == T
        np.testing.assert_array_equal(cache["pos"][:, :T], np.broadcast_to(np.arange(T), (B, T)))
        np.testing.assert_array_equal(cache["pos"][:, T:], -1)
    np.testing.assert_allclose(outs["absorbed"], outs["naive"], atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(outs["naive"], y_full, atol=2e-5, rtol=2e-5)


def test_cache_is_at_most_one_eighth_of_mha_cache():
    """DeepSeek-V2 proportions (c = 4 d_h, p = d_h / 2) against MHA of the same width and heads."""
    heads, d_h = 32, 64
    mla = MLA(num_heads=heads, kv_lora_rank=4 * d_h, qk_nope_dim=d_h, qk_rope_dim=d_h // 2, v_head_dim=d_h)
    mha = Attention(num_heads=heads, num_kv_heads=heads, head_dim=d_h)
    for dtype in (jnp.bfloat16, jnp.float32):
        mla_bytes = mla.cache_bytes_per_token(dtype)
        assert mla_bytes == mla_cache_bytes_per_token(4 * d_h, d_h // 2, dtype)
        assert mla_bytes * 8 <= mha.cache_bytes(1, dtype)
        assert mla.cache_bytes(100, dtype) == 100 * mla_bytes
    # The accounting is the real cache: the per-token arrays of init_cache.
    cache = mla.init_cache(1, 5, jnp.bfloat16)
    assert (cache["c_kv"].nbytes + cache["k_rope"].nbytes) // 5 == mla.cache_bytes_per_token(jnp.bfloat16)


def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


FLOP_SHAPES = dict(num_heads=4, kv_lora_rank=32, qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16, q_lora_rank=24)


def test_flop_formulas_match_xla_cost_analysis():
    d, t, max_len = 64, 16, 64
    module = MLA(impl="reference", **FLOP_SHAPES)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, t, d), np.float32))
    seg = jnp.zeros((1, t), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (1, t))
    params = init(module, x, seg, pos)
    # Training forward: the reference path scores all t keys (dense) for each query.
    xla = _xla_flops(lambda p, x: module.apply(p, x, segment_ids=seg, positions=pos)[0], params, x)
    formula = t * mla_flops_per_token(d, keys=t, mode="forward", **FLOP_SHAPES)
    assert abs(xla / formula - 1) < 0.1, (xla, formula)
    # One decode step over a max_len-slot cache.
    cache = module.init_cache(1, max_len)
    for path in ("absorbed", "naive"):
        m = module.clone(decode_path=path)
        xla = _xla_flops(lambda p, c, x: m.apply(p, x, segment_ids=seg[:, :1], positions=pos[:, :1], cache=c)[0],
                         params, cache, x[:, :1])
        formula = mla_flops_per_token(d, keys=max_len, mode=path, **FLOP_SHAPES)
        assert abs(xla / formula - 1) < 0.1, (path, xla, formula)


@pytest.mark.parametrize("bad", [dict(decode_path="fast"), dict(qk_rope_dim=3), dict(kv_lora_rank=0)])
def test_invalid_config_raises(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MLA(**{**SHAPES, **bad})
