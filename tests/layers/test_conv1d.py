"""Conv1D against a float64 NumPy transcription: causal depthwise taps masked at documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.conv1d import Conv1D
from tests.layers.test_rg_lru import random_params


def numpy_conv(w, b, x, positions, past=None):
    """y_t = b + sum_j w[k-1-j] x_{t-j} over taps inside the document; x_{-1..-(k-1)} = past."""
    w, b, x = (np.asarray(v, np.float64) for v in (w, b, x))
    k = w.shape[0]
    batch, t, width = x.shape
    past = np.zeros((batch, k - 1, width)) if past is None else np.asarray(past, np.float64)
    y = np.zeros_like(x)
    for n in range(batch):
        for s in range(t):
            acc = b.copy()
            for j in range(k):
                if positions[n, s] < j:
                    continue  # tap j back lies in the previous document
                src = x[n, s - j] if s - j >= 0 else past[n, k - 1 + s - j]
                acc += w[k - 1 - j] * src
            y[n, s] = acc
    return y


def setup(t=9, width=5, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, t, width)), jnp.float32)
    positions = np.array([[5, 6, 7, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]], np.int32)[:, :t]
    module = Conv1D(width=width, temporal_width=4)
    params = random_params(module, x, positions=positions, seed=seed)
    return module, params, x, positions


def test_matches_numpy_training():
    module, params, x, positions = setup()
    y, cache = module.apply(params, x, positions=positions)
    assert cache is None
    p = params["params"]
    np.testing.assert_allclose(y, numpy_conv(p["w"], p["b"], x, positions), rtol=1e-5, atol=1e-6)


def test_cache_and_stepwise_decode():
    module, params, x, positions = setup(seed=1)
    p = params["params"]
    past = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3, 5)), jnp.float32)
    y, cache = module.apply(params, x, positions=positions, cache=past)
    np.testing.assert_allclose(y, numpy_conv(p["w"], p["b"], x, positions, past), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache, x[:, -3:])
    # One token at a time from an empty cache equals the full pass.
    cache = module.init_cache(2, 1000, jnp.float32)
    assert cache.shape == (2, 3, 5)
    steps = []
    for s in range(x.shape[1]):
        y_s, cache = module.apply(params, x[:, s : s + 1], positions=positions[:, s : s + 1], cache=cache)
        steps.append(y_s)
    y_full, _ = module.apply(params, x, positions=positions)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), y_full, rtol=1e-6, atol=1e-6)
    # With fewer new tokens than taps the cache keeps the older inputs.
    _, cache = module.apply(params, x[:, :1], positions=positions[:, :1], cache=past)
    np.testing.assert_allclose(cache, jnp.concatenate([past[:, 1:], x[:, :1]], axis=1))


def test_validation():
    with pytest.raises(ValueError, match="temporal_width"):
        Conv1D(width=4, temporal_width=0)
