"""Recurrent block: float64 NumPy transcription of the whole block, prefill + decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.recurrent_block import RecurrentBlock
from tests.layers.test_conv1d import numpy_conv
from tests.layers.test_rg_lru import numpy_rg_lru, random_params


def gelu_tanh(v):
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))


def numpy_block(p, x, positions):
    """linear_out(gelu(linear_y x) * RG-LRU(Conv1D(linear_x x))) in float64."""
    p = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), p)
    x = np.asarray(x, np.float64)
    dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    y_branch = gelu_tanh(dense("linear_y", x))
    x_branch = numpy_conv(p["conv_1d"]["w"], p["conv_1d"]["b"], dense("linear_x", x), positions)
    x_branch, _ = numpy_rg_lru(p["rg_lru"], x_branch, positions)
    return dense("linear_out", x_branch * y_branch)


# Row 0: a document boundary inside the prompt (prompt = first 8 steps), 2 steps before
# its end, so decoded steps must not reach across it with the conv taps or the state.
POSITIONS = np.array(
    [[2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]], np.int32
)


def jitted_apply(module):
    """``module.apply`` jitted (params, x, segment_ids, positions, cache): one compile per shape
    instead of every op of the block dispatched on its own."""
    return jax.jit(lambda p, x, s, pos, c: module.apply(p, x, segment_ids=s, positions=pos, cache=c))


def setup(seed=0, impl="sequential"):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, POSITIONS.shape[1], 8)), jnp.float32)
    segment_ids = np.cumsum(POSITIONS == 0, axis=1).astype(np.int32)
    module = RecurrentBlock(width=8, num_heads=2, lru_width=12, impl=impl)
    params = random_params(module, x, segment_ids=segment_ids, positions=POSITIONS, seed=seed)
    return module, params, x, segment_ids


def test_matches_numpy():
    module, params, x, segment_ids = setup()
    y, cache = jitted_apply(module)(params, x, segment_ids, POSITIONS, None)
    assert cache is None and y.shape == x.shape
    np.testing.assert_allclose(y, numpy_block(params["params"], x, POSITIONS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["sequential", "interpret"])
def test_prefill_then_decode_equals_forward(impl):
    module, params, x, segment_ids = setup(seed=1, impl=impl)
    apply = jitted_apply(module)
    y_full, _ = apply(params, x, segment_ids, POSITIONS, None)
    prompt = 8

    def run(lo, hi, cache):
        return apply(params, x[:, lo:hi], segment_ids[:, lo:hi], POSITIONS[:, lo:hi], cache)

    cache = module.init_cache(2, 1 << 20)
    y_prefill, cache = run(0, prompt, cache)
    outs = [y_prefill]
    for s in range(prompt, prompt + 2):  # token by token
        y_s, cache = run(s, s + 1, cache)
        outs.append(y_s)
    y_chunk, cache = run(prompt + 2, x.shape[1], cache)  # then a 2-token chunk
    outs.append(y_chunk)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), y_full, rtol=1e-5, atol=1e-5)
    assert cache["rg_lru"].dtype == jnp.float32


def test_cache_size_is_constant():
    module = RecurrentBlock(width=8, num_heads=2, lru_width=12)
    for dtype in (jnp.float32, jnp.bfloat16):
        small, large = module.init_cache(3, 1024, dtype), module.init_cache(3, 16384, dtype)
        nbytes = sum(v.nbytes for v in jax.tree_util.tree_leaves(small))
        assert nbytes == sum(v.nbytes for v in jax.tree_util.tree_leaves(large))
        assert module.cache_bytes(3, dtype) == nbytes
        assert small["rg_lru"].shape == (3, 12) and small["rg_lru"].dtype == jnp.float32
        assert small["conv1d"].shape == (3, 3, 12) and small["conv1d"].dtype == dtype


def test_validation():
    with pytest.raises(ValueError, match="num_heads"):
        RecurrentBlock(width=8, num_heads=5)


def test_bfloat16_compute_tracks_float32():
    module, params, x, segment_ids = setup(seed=2)
    y32, _ = jitted_apply(module)(params, x, segment_ids, POSITIONS, None)
    m16 = RecurrentBlock(width=8, num_heads=2, lru_width=12, impl="sequential", dtype=jnp.bfloat16)
    cache = m16.init_cache(2, 64, jnp.bfloat16)
    y16, cache = jitted_apply(m16)(params, x, segment_ids, POSITIONS, cache)
    assert y16.dtype == jnp.bfloat16 and cache["rg_lru"].dtype == jnp.float32
    assert cache["conv1d"].dtype == jnp.bfloat16
    err = np.abs(np.asarray(y16, np.float32) - np.asarray(y32))
    assert err.max() <= 0.03 * np.abs(np.asarray(y32)).max(), err.max()
