"""Grouped matmul: Pallas kernels (interpret on CPU, compiled on a device) against references.

References: a float64 NumPy per-group loop written here, ``jax.lax.ragged_dot`` (the
``impl="reference"`` path, differentiated by JAX's own rules) and the masked loop in
``reference.py``; the CPU "auto" form ``gmm_tiled`` is checked against them too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gmm import GmmBlockSizes, gmm, gmm_loop_reference, gmm_reference, gmm_tiled, tgmm



def _blocks(kernel_impl):
    # Interpret: 8-row/column tiles so the small shapes below span several tiles. Compiled:
    # the defaults (hardware-valid; small axes shrink to one whole-axis tile).
    return GmmBlockSizes(8, 8, 8) if kernel_impl == "interpret" else None

# (group sizes, m) with 8-row tiles: empty groups at the start, middle and end, group
# boundaries on (8) and off (22, 37) tile edges; one group holding every row; rows past
# sum(group_sizes) (must come out as 0).
CASES = {
    "empty_groups": ([0, 8, 0, 14, 0, 15, 0], 37),
    "one_group": ([0, 0, 21, 0], 21),
    "trailing_rows": ([4, 6, 3], 19),
}


def _kernels(kernel_impl):
    # In interpret mode both Pallas kernels run on CPU; compiled, only the platform's.
    return ["tpu", "gpu"] if kernel_impl == "interpret" else [None]


def _numpy_gmm(lhs, rhs, sizes):
    out = np.zeros((lhs.shape[0], rhs.shape[2]))
    start = 0
    for g, size in enumerate(sizes):
        out[start : start + size] = lhs[start : start + size].astype(np.float64) @ rhs[g].astype(np.float64)
        start += size
    return out


def _numpy_tgmm(lhs, rhs, sizes):
    out = np.zeros((len(sizes), lhs.shape[1], rhs.shape[1]))
    start = 0
    for g, size in enumerate(sizes):
        out[g] = lhs[start : start + size].astype(np.float64).T @ rhs[start : start + size].astype(np.float64)
        start += size
    return out


def _operands(sizes, m, k=20, n=12, seed=0):
    rng = np.random.default_rng(seed)
    lhs = rng.normal(size=(m, k)).astype(np.float32)
    rhs = rng.normal(size=(len(sizes), k, n)).astype(np.float32)
    return lhs, rhs, np.asarray(sizes, np.int32)


@pytest.mark.parametrize("case", list(CASES))
def test_gmm_forward_matches_numpy_loop(case, kernel_impl):
    sizes, m = CASES[case]
    lhs, rhs, gs = _operands(sizes, m)
    expected = _numpy_gmm(lhs, rhs, sizes)
    np.testing.assert_allclose(gmm_reference(lhs, rhs, gs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gmm_loop_reference(lhs, rhs, gs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gmm_tiled(lhs, rhs, gs, block_m=8), expected, rtol=1e-5, atol=1e-5)
    for kernel in _kernels(kernel_impl):
        out = gmm(lhs, rhs, gs, impl=kernel_impl, block_sizes=_blocks(kernel_impl), kernel=kernel)
        assert out.shape == (m, rhs.shape[2]) and out.dtype == jnp.float32
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=f"kernel={kernel}")


@pytest.mark.parametrize("case", ["empty_groups", "trailing_rows"])
def test_tgmm_matches_numpy_loop(case, kernel_impl):
    sizes, m = CASES[case]
    lhs, _, gs = _operands(sizes, m)
    rhs = np.random.default_rng(1).normal(size=(m, 12)).astype(np.float32)
    expected = _numpy_tgmm(lhs, rhs, sizes)
    for kernel in _kernels(kernel_impl):
        out = tgmm(lhs, rhs, gs, impl=kernel_impl, block_sizes=_blocks(kernel_impl), kernel=kernel)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4, err_msg=f"kernel={kernel}")
    np.testing.assert_allclose(tgmm(lhs, rhs, gs, impl="reference"), expected, rtol=1e-5, atol=1e-4)


def test_gmm_gradients_match_ragged_dot(kernel_impl):
    sizes, m = CASES["empty_groups"]
    lhs, rhs, gs = _operands(sizes, m, k=12, n=10)
    weights = np.random.default_rng(2).normal(size=(m, 10)).astype(np.float32)

    def loss(a, b, impl, kernel=None):
        return jnp.sum(jnp.tanh(gmm(a, b, gs, impl=impl, block_sizes=_blocks(kernel_impl), kernel=kernel)) * weights)

    expected = jax.grad(loss, argnums=(0, 1))(lhs, rhs, "reference")
    tiled = jax.grad(lambda a, b: jnp.sum(jnp.tanh(gmm_tiled(a, b, gs, block_m=8)) * weights), argnums=(0, 1))
    for g, e in zip(tiled(lhs, rhs), expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg="gmm_tiled")
    # d lhs rows of group g = d out_g @ rhs[g]^T; empty groups get exactly zero d rhs.
    assert np.all(np.asarray(expected[1])[[0, 2, 4, 6]] == 0)
    for kernel in _kernels(kernel_impl):
        got = jax.grad(loss, argnums=(0, 1))(lhs, rhs, kernel_impl, kernel)
        for g, e, name in zip(got, expected, ("d_lhs", "d_rhs")):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=f"{name} kernel={kernel}")


def test_gmm_reference_gradient_matches_finite_differences():
    lhs, rhs, gs = _operands([2, 0, 3], 5, k=3, n=2)
    direction = np.random.default_rng(3).normal(size=rhs.shape).astype(np.float64)

    def loss(b):
        return float(np.sum(np.sin(_numpy_gmm(lhs, b, [2, 0, 3]))))

    eps = 1e-4
    fd = (loss(rhs + eps * direction) - loss(rhs - eps * direction)) / (2 * eps)
    grad = jax.grad(lambda b: jnp.sum(jnp.sin(gmm(lhs, b, gs, impl="reference"))))(rhs)
    np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), fd, rtol=1e-3)


def test_gmm_validation_errors():
    lhs, rhs, gs = _operands([2, 3], 5)
    with pytest.raises(ValueError, match="group_sizes shape"):
        gmm(lhs, rhs, gs[:1])
    with pytest.raises(ValueError, match="contraction"):
        gmm(lhs[:, :3], rhs, gs)
    with pytest.raises(ValueError, match="impl"):
        gmm(lhs, rhs, gs, impl="cuda")
    with pytest.raises(ValueError, match="block_m=0"):
        GmmBlockSizes(block_m=0)
