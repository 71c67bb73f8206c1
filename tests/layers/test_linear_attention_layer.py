"""Tests of the linear-attention mixer against a float64 NumPy transcription of the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.linear_attention import RESET_LOG_DECAY, LinearAttention, cache_bytes, retnet_log_gamma

D, H, K, V = 16, 2, 8, 8


def make_layer(variant, **kw):
    defaults = dict(num_heads=H, key_dim=K, value_dim=V, variant=variant, chunk_size=8)
    defaults.update(kw)
    return LinearAttention(**defaults)


def unbox(tree):
    return jax.tree.map(lambda p: np.asarray(p, np.float64), jax.tree.map(
        lambda p: p.value if hasattr(p, "value") else p, tree, is_leaf=lambda p: hasattr(p, "value")))


def numpy_layer(p, x, positions, layer):
    """float64 transcription of the module docstring, one step at a time."""
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    phi = (lambda z: z) if layer.feature_map == "identity" else (lambda z: np.where(z > 0, z + 1.0, np.exp(z)))
    q = phi(np.einsum("btd,dhk->bthk", x, p["w_q"]))
    k = phi(np.einsum("btd,dhk->bthk", x, p["w_k"]))
    v = np.einsum("btd,dhk->bthk", x, p["w_v"])
    log_decay = np.zeros((b, t, H, K))
    log_decay += np.where(positions == 0, RESET_LOG_DECAY, 0.0)[..., None, None]
    if layer.variant == "retnet":
        log_decay += np.log(1.0 - 2.0 ** (-5.0 - np.arange(H)))[:, None]
    if layer.variant == "gla":
        logits = np.einsum("btd,dr,rhk->bthk", x, p["w_decay_down"], p["w_decay_up"]) + p["b_decay"]
        log_decay += -np.logaddexp(0.0, -logits) / 16.0
    state = np.zeros((b, H, K, V))
    o = np.zeros((b, t, H, V))
    for i in range(t):
        state = np.exp(log_decay[:, i])[..., None] * state + k[:, i, :, :, None] * v[:, i, :, None, :]
        o[:, i] = K**-0.5 * np.einsum("bhk,bhkv->bhv", q[:, i], state)
    if layer.output_norm == "rms":
        o = o / np.sqrt(np.mean(o**2, -1, keepdims=True) + layer.norm_eps) * (1 + p["norm_scale"])
    elif layer.output_norm == "group":
        o = o - o.mean(-1, keepdims=True)
        o = o / np.sqrt(np.mean(o**2, -1, keepdims=True) + layer.norm_eps) * p["norm_scale"] + p["norm_bias"]
    if layer.output_gate:
        r = np.einsum("btd,dhv->bthv", x, p["w_out_gate"])
        o = o * r / (1.0 + np.exp(-r))
    return np.einsum("bthv,hvd->btd", o, p["w_o"])


def init(layer, x, positions, seed=0):
    @jax.jit  # one compile instead of every op of the initialisation dispatched on its own
    def perturbed_init(x, positions):
        params = layer.init(jax.random.PRNGKey(seed), x, positions=positions)
        # Random (not zero) norm and gate biases so that every parameter is exercised.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
        leaves = [leaf + 0.3 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
        return jax.tree.unflatten(tree, leaves)

    return perturbed_init(x, positions)


def inputs(t, seed=0, starts=(0,)):
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, t, D))
    pos = np.arange(t)
    for s in starts:
        pos[s:] = np.arange(t - s)
    return x, jnp.asarray(np.stack([pos, np.arange(t)]))  # row 1: one document


CONFIGS = [
    dict(variant="plain", feature_map="elu1", output_norm="none", output_gate=False),
    dict(variant="retnet", output_norm="group"),
    dict(variant="gla", feature_map="elu1", output_norm="rms"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_forward_matches_numpy_with_packed_documents(config):
    layer = make_layer(**config)
    x, positions = inputs(19, starts=(0, 11))
    params = init(layer, x, positions)
    y, cache = jax.jit(lambda p, x, pos: layer.apply(p, x, positions=pos))(params, x, positions)
    assert cache is None and y.shape == x.shape
    want = numpy_layer(unbox(params)["params"], x, np.asarray(positions), layer)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("variant", ["plain", "gla"])
def test_packed_equals_separate_documents(variant):
    layer = make_layer(variant)
    x, positions = inputs(21, seed=1, starts=(0, 13))
    x = x[:1]
    positions = positions[:1]
    params = init(layer, x, positions)
    apply = jax.jit(lambda x, pos: layer.apply(params, x, positions=pos)[0])
    packed = apply(x, positions)
    first = apply(x[:, :13], positions[:, :13])
    second = apply(x[:, 13:], positions[:, 13:])
    np.testing.assert_allclose(packed[:, :13], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 13:], second, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS[1:], ids=["retnet", "gla"])
def test_prefill_then_decode_equals_forward(config):
    layer = make_layer(**config)
    t, prompt = 20, 13
    x, positions = inputs(t, seed=2, starts=(0, 16))  # a document starts while decoding
    params = init(layer, x, positions)
    apply = jax.jit(lambda x, pos, cache: layer.apply(params, x, positions=pos, cache=cache))
    full, _ = apply(x, positions, None)
    cache = layer.init_cache(batch=2, max_len=t)
    y, cache = apply(x[:, :prompt], positions[:, :prompt], cache)
    outs = [y]
    for i in range(prompt, t):
        y, cache = apply(x[:, i : i + 1], positions[:, i : i + 1], cache)
        assert cache["state"].shape == (2, H, K, V) and cache["state"].dtype == jnp.float32
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-4, atol=1e-4)


def test_cache_bytes_constant_and_matches_cache():
    layer = make_layer("gla")
    cache = layer.init_cache(batch=3, max_len=128)
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(cache))
    assert layer.cache_bytes(3, max_len=128) == nbytes == layer.cache_bytes(3, max_len=4096)
    assert cache_bytes(3, num_heads=H, key_dim=K, value_dim=V) == 3 * H * K * V * 4


def test_retnet_gammas():
    want = [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]
    np.testing.assert_allclose(np.exp(retnet_log_gamma(4)), want, rtol=1e-6)


@pytest.mark.parametrize(
    "field, value", [("variant", "mamba"), ("feature_map", "relu2"), ("output_norm", "layer"), ("num_heads", 0)]
)
def test_invalid_config_raises(field, value):
    kw = dict(num_heads=H, variant="gla")
    kw[field] = value
    with pytest.raises(ValueError, match=field):
        LinearAttention(**kw)
