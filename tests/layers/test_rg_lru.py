"""RG-LRU against a float64 NumPy transcription of Griffin eqs. (1)-(4), init, bounded sqrt."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.rg_lru import RGLRU, rnn_param_init, sqrt_bound_derivative


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def softplus(v):
    return np.log1p(np.exp(v))


def block_diag_linear(x, w, b):
    """x [b, t, h*i] through h independent [i, j] blocks, written as a dense block matrix."""
    h, i, j = w.shape
    dense = np.zeros((h * i, h * j))
    for k in range(h):
        dense[k * i : (k + 1) * i, k * j : (k + 1) * j] = w[k]
    return x @ dense + b.reshape(-1)


def numpy_rg_lru(p, x, positions, h0=None):
    """Griffin eqs. 1-4 in float64, one time step at a time."""
    p = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), p)
    x = np.asarray(x, np.float64)
    gate_x = sigmoid(block_diag_linear(x, p["input_gate"]["w"], p["input_gate"]["b"]))
    gate_a = sigmoid(block_diag_linear(x, p["a_gate"]["w"], p["a_gate"]["b"]))
    base = 1.0 / (1.0 + np.exp(p["a_param"]))  # sigmoid(-Lambda) = exp(-softplus(Lambda))
    h = np.zeros((x.shape[0], x.shape[2])) if h0 is None else np.asarray(h0, np.float64)
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        a_t = base ** (8.0 * gate_a[:, t])
        mult = np.sqrt(1.0 - a_t**2)
        start = (np.asarray(positions)[:, t] == 0)[:, None]
        a_t = np.where(start, 0.0, a_t)
        mult = np.where(start, 1.0, mult)
        h = a_t * h + mult * gate_x[:, t] * x[:, t]
        y[:, t] = h
    return y, h


def random_params(module, *args, seed=0, scale=0.5, **kwargs):
    """Parameters of ``module`` drawn in NumPy (no init compile): normal * scale for every
    leaf, and Lambda with a = exp(-softplus(Lambda)) uniform in [0.9, 0.999]."""
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if path[-1].key == "a_param":
            a = rng.uniform(0.9, 0.999, s.shape)
            return jnp.asarray(np.log(np.exp(-np.log(a)) - 1.0), s.dtype)
        return jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def setup(width=6, heads=2, t=11, seed=0, impl="sequential"):
    rng = np.random.default_rng(seed + 100)
    x = jnp.asarray(rng.standard_normal((2, t, width)), jnp.float32)
    positions = np.array([list(range(t)), [3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2][:t]], np.int32)
    module = RGLRU(width=width, num_heads=heads, impl=impl)
    params = random_params(module, x, positions=positions, seed=seed)
    h0 = jnp.asarray(rng.standard_normal((2, width)), jnp.float32)
    return module, params, x, positions, h0


@pytest.mark.parametrize("impl", ["sequential", "interpret"])
def test_matches_numpy_with_document_resets(impl):
    module, params, x, positions, _ = setup(impl=impl)
    y, state = module.apply(params, x, positions=positions)
    assert state is None
    y_np, _ = numpy_rg_lru(params["params"], x, positions)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)


def test_cache_continues_from_state():
    module, params, x, positions, h0 = setup(seed=1)
    positions = positions + 1  # no reset inside: the state must carry over
    y, h_last = module.apply(params, x, positions=positions, cache=h0)
    y_np, h_np = numpy_rg_lru(params["params"], x, positions, h0)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_last, h_np, rtol=1e-5, atol=1e-5)
    assert h_last.dtype == jnp.float32
    cache = module.init_cache(2, 100)
    assert cache.shape == (2, 6) and cache.dtype == jnp.float32 and not np.any(cache)


def test_lambda_init_ring():
    lam = np.asarray(rnn_param_init()(jax.random.PRNGKey(0), (20000,)), np.float64)
    base = np.exp(-softplus(lam))  # a = sigma(-Lambda); a_t at gate r is a^(8 r)
    assert base.min() >= 0.9 - 1e-6 and base.max() <= 0.999 + 1e-6
    # Uniform by ring area: a^2 ~ U[0.81, 0.998001]; compare the empirical CDF.
    sq = np.sort(base**2)
    cdf = (sq - 0.81) / (0.998001 - 0.81)
    assert np.max(np.abs(cdf - np.arange(1, sq.size + 1) / sq.size)) < 0.02


def test_sqrt_derivative_is_bounded():
    grad = jax.grad(lambda v: sqrt_bound_derivative(v, 1000.0))
    np.testing.assert_allclose(grad(0.0), 1000.0, rtol=1e-6)
    np.testing.assert_allclose(grad(0.25), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sqrt_bound_derivative(jnp.float32(0.09), 1000.0), 0.3, rtol=1e-6)
    # a -> 1 (Lambda very negative): 1 - a^2 == 0 in float32, gradients stay finite.
    module, params, x, positions, _ = setup(seed=2)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.full_like(v, -30.0) if path[-1].key == "a_param" else v, params
    )
    g = jax.grad(lambda p: jnp.sum(module.apply(p, x, positions=positions + 1)[0]))(params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(g))


def test_validation():
    with pytest.raises(ValueError, match="num_heads"):
        RGLRU(width=6, num_heads=4)
