"""Attention, RoPE, RMSNorm and gated MLP against float64 NumPy transcriptions of their equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.attention import Attention
from layers.mlp import GatedMLP
from layers.rmsnorm import RMSNorm
from layers.rope import apply_rope


def np_rope(x, pos, fraction, base=10_000.0):
    x = np.asarray(x, np.float64).copy()
    r = int(x.shape[-1] * fraction) // 2 * 2
    half = r // 2
    for i in range(half):
        theta = base ** (-2.0 * i / r)
        ang = np.asarray(pos, np.float64)[:, :, None] * theta
        a, b = x[..., i].copy(), x[..., i + half].copy()
        x[..., i] = a * np.cos(ang) - b * np.sin(ang)
        x[..., i + half] = b * np.cos(ang) + a * np.sin(ang)
    return x


def np_attention(q, k, v, seg, window, softcap):
    b, t, h, d = q.shape
    g = k.shape[2]
    out = np.zeros((b, t, h, v.shape[-1]))
    for bi in range(b):
        for i in range(t):
            for n in range(h):
                kv = n // (h // g)
                s = np.array([q[bi, i, n] @ k[bi, j, kv] for j in range(t)]) / np.sqrt(d)
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                ok = np.array([
                    j <= i and (window is None or i - j <= window) and seg[bi, i] == seg[bi, j] for j in range(t)
                ])
                p = np.where(ok, np.exp(s - s[ok].max()), 0.0)
                out[bi, i, n] = (p / p.sum()) @ v[bi, :, kv]
    return out


@pytest.mark.parametrize("heads,kv_heads,window,softcap", [(4, 4, None, None), (4, 2, 2, None), (4, 1, 0, 5.0)])
def test_attention_matches_numpy(heads, kv_heads, window, softcap):
    b, t, d, hd = 2, 7, 16, 8
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, d))
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1]])
    pos = jnp.array([[0, 1, 2, 0, 1, 2, 3], list(range(7))])
    layer = Attention(heads, kv_heads, hd, window=window, softcap=softcap, rope_fraction=0.5, impl="reference")
    # jitted: one compile each instead of every op of the layer dispatched on its own
    params = jax.jit(lambda r: layer.init(r, x, segment_ids=seg, positions=pos))(jax.random.PRNGKey(1))
    y, cache = jax.jit(lambda p: layer.apply(p, x, segment_ids=seg, positions=pos))(params)
    assert cache is None
    p = {k: np.asarray(v.value if hasattr(v, "value") else v, np.float64) for k, v in params["params"].items()}
    xn = np.asarray(x, np.float64)
    q = np_rope(np.einsum("btd,dhk->bthk", xn, p["wq"]), pos, 0.5)
    k = np_rope(np.einsum("btd,dgk->btgk", xn, p["wk"]), pos, 0.5)
    v = np.einsum("btd,dgk->btgk", xn, p["wv"])
    o = np_attention(q, k, v, np.asarray(seg), window, softcap)
    expected = np.einsum("bthk,hkd->btd", o, p["wo"])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def test_rope_rotation_and_relative_property():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 2, 8))
    pos = jnp.arange(5)[None] + 3
    np.testing.assert_allclose(np.asarray(apply_rope(x, pos, fraction=0.5)), np_rope(x, pos, 0.5), rtol=1e-5, atol=1e-6)
    # scores depend only on the position difference
    q, k = x[:, :1, :1], x[:, 1:2, :1]
    s = lambda a, b: float(jnp.sum(apply_rope(q, jnp.array([[a]])) * apply_rope(k, jnp.array([[b]]))))  # noqa: E731
    assert abs(s(5, 2) - s(13, 10)) < 1e-4
    # the unrotated half passes through
    np.testing.assert_array_equal(np.asarray(apply_rope(x, pos, fraction=0.5)[..., 4:]), np.asarray(x[..., 4:]))


def test_rmsnorm_and_mlp_match_numpy():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8)) * 3
    norm = RMSNorm()
    params = norm.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda a: a + 0.5, jax.tree.map(lambda a: a, params))
    y = norm.apply(params, x)
    xn = np.asarray(x, np.float64)
    scale = np.asarray(jax.tree.leaves(params)[0], np.float64)
    expected = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * (1 + scale)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5)

    for act, f in [("geglu", lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))),
                   ("swiglu", lambda z: z / (1 + np.exp(-z)))]:
        mlp = GatedMLP(16, act)
        mp = mlp.init(jax.random.PRNGKey(2), x)
        w = {k: np.asarray(v.value, np.float64) for k, v in mp["params"].items()}
        expected = (f(xn @ w["w_gate"]) * (xn @ w["w_up"])) @ w["w_down"]
        np.testing.assert_allclose(np.asarray(mlp.apply(mp, x)), expected, rtol=1e-4, atol=1e-5)


def test_ring_buffer_cache_is_constant_size():
    layer = Attention(2, 1, 4, window=3)
    assert layer.init_cache(1, 10_000)["k"].shape[1] == 4
    assert layer.cache_bytes(1000) == layer.cache_bytes(16_000)
    full = Attention(2, 1, 4)
    assert full.cache_bytes(2000) == 2 * full.cache_bytes(1000)
