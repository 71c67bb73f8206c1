"""linear_scan: reference forms vs a float64 NumPy loop, kernels vs reference, custom_vjp
gradients vs autodiff and finite differences, bfloat16 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pallas_kernels.backend import platform
from pallas_kernels.linear_scan import kernel_gpu, kernel_tpu, linear_scan, ops
from pallas_kernels.linear_scan.reference import REFERENCE_FORMS, linear_scan_sequential


def numpy_scan(x, a, h0, reverse):
    """h_t = a_t h_{t-1} + x_t in float64, one step at a time."""
    x, a = np.asarray(x, np.float64), np.asarray(a, np.float64)
    h = np.zeros((x.shape[0], x.shape[2])) if h0 is None else np.asarray(h0, np.float64)
    y = np.zeros_like(x)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for t in steps:
        h = a[:, t] * h + x[:, t]
        y[:, t] = h
    return y, h


def make_inputs(b, t, w, seed=0, zeros=True):
    """float32 x [b, t, w], a in [0.5, 1) with document resets (a = 0), h0 [b, w]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, w))
    a = rng.uniform(0.5, 1.0, (b, t, w))
    if zeros:
        a[:, t // 3] = 0.0
        a[0, (2 * t) // 3] = 0.0
    h0 = rng.standard_normal((b, w))
    return tuple(jnp.asarray(v, jnp.float32) for v in (x, a, h0))


@pytest.mark.parametrize("form", list(REFERENCE_FORMS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_reference_forms_match_numpy(form, reverse, with_h0):
    x, a, h0 = make_inputs(2, 37, 5)
    h0 = h0 if with_h0 else None
    y, h_last = REFERENCE_FORMS[form](x, a, h0, reverse=reverse)
    y_np, h_np = numpy_scan(x, a, h0, reverse)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_last, h_np, rtol=1e-5, atol=1e-5)
    assert y.dtype == jnp.float32 and h_last.dtype == jnp.float32


def test_reference_forms_agree_with_each_other_and_resets():
    x, a, h0 = make_inputs(3, 50, 7, seed=1)
    ys = [REFERENCE_FORMS[f](x, a, h0)[0] for f in REFERENCE_FORMS]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    # After a reset (a_t = 0 at t = 16 for every row) the scan restarts from x_16.
    y_fresh, _ = linear_scan_sequential(x[:, 16:], a[:, 16:])
    np.testing.assert_allclose(ys[0][:, 16:], y_fresh, rtol=1e-6, atol=1e-6)


def grads(fn, x, a, h0, reverse):
    """Gradients of a fixed random projection of (y, h_last) w.r.t. (x, a, h0)."""
    rng = np.random.default_rng(7)
    wy = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    wh = jnp.asarray(rng.standard_normal(h0.shape), jnp.float32)

    def loss(x, a, h0):
        y, h_last = fn(x, a, h0, reverse=reverse)
        return jnp.sum(y.astype(jnp.float32) * wy) + jnp.sum(h_last * wh)

    # One compilation instead of op-by-op dispatch of the backward pass.
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, a, h0)


@pytest.mark.parametrize("impl", ["sequential", "associative"])
@pytest.mark.parametrize("reverse", [False, True])
def test_custom_vjp_matches_autodiff_of_reference(impl, reverse):
    x, a, h0 = make_inputs(2, 23, 6, seed=2)
    # The custom rule (the kernels' backward) with a reference forward; the public op
    # differentiates reference forms by autodiff, checked against the same want below.
    custom = lambda x, a, h0, reverse: ops._linear_scan(x, a, h0, reverse, impl, None)  # noqa: E731
    got = grads(custom, x, a, h0, reverse)
    want = grads(linear_scan_sequential, x, a, h0, reverse)
    for g, w in zip(grads(lambda *args, **kw: linear_scan(*args, impl=impl, **kw), x, a, h0, reverse), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_custom_vjp_matches_finite_differences(reverse):
    with jax.enable_x64(True):
        x, a, h0 = (v.astype(jnp.float64) for v in make_inputs(2, 9, 3, seed=3))
        check_grads(
            lambda x, a, h0: ops._linear_scan(x, a, h0, reverse, "sequential", None),  # the custom rule
            (x, a, h0),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-6,
            rtol=1e-6,
        )


def test_auto_and_validation():
    x, a, h0 = make_inputs(1, 4, 2)
    y_auto, _ = linear_scan(x, a, h0)
    np.testing.assert_allclose(y_auto, numpy_scan(x, a, h0, False)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        linear_scan(x, a, impl="cuda")
    with pytest.raises(ValueError, match="shape"):
        linear_scan(x, a[:, :3])
    with pytest.raises(ValueError, match="h0"):
        linear_scan(x, a, h0[:, :1])


def bf16_half_ulp(v):
    """Half a bfloat16 ulp at |v| (8 significant bits)."""
    v = np.maximum(np.abs(np.asarray(v, np.float64)), np.finfo(np.float32).tiny)
    return 0.5 * 2.0 ** (np.floor(np.log2(v)) - 7)


def bf16_case():
    x, a, _ = make_inputs(2, 19, 6, seed=6)
    x16, a16 = x.astype(jnp.bfloat16), a.astype(jnp.bfloat16)
    y32, h32 = numpy_scan(x16.astype(np.float32), a16.astype(np.float32), None, False)
    return x16, a16, y32, h32


def check_bf16(y, h_last, y32, h32):
    """bf16 y is the float32-carry result rounded once: within half a bf16 ulp."""
    assert y.dtype == jnp.bfloat16 and h_last.dtype == jnp.float32
    err = np.abs(np.asarray(y, np.float64) - y32)
    assert np.all(err <= bf16_half_ulp(y32) * (1 + 1e-3) + 1e-6), err.max()
    np.testing.assert_allclose(h_last, h32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", list(REFERENCE_FORMS))
def test_reference_bf16_within_half_ulp(impl):
    x16, a16, y32, h32 = bf16_case()
    check_bf16(*linear_scan(x16, a16, impl=impl), y32, h32)


class TestLinearScanKernel:
    """The Pallas kernels: interpret mode on CPU, compiled (impl="pallas") on a device."""

    @staticmethod
    def kernels(kernel_impl):
        if kernel_impl == "interpret":
            return ["tpu", "gpu"]
        return ["gpu" if platform() == "gpu" else "tpu"]

    @pytest.mark.parametrize("reverse", [False, True])
    def test_forward_multi_block_odd_shapes(self, kernel_impl, reverse):
        # t = 21 is not a multiple of the time block 8 (3 blocks, padded); w = 1100
        # needs two TPU width blocks of 8 * 128 and 18 GPU width blocks of 64.
        x, a, h0 = make_inputs(2, 21, 1100, seed=4)
        y_np, h_np = numpy_scan(x, a, h0, reverse)
        interpret = kernel_impl == "interpret"
        for kernel in self.kernels(kernel_impl):
            if kernel == "tpu":
                y, h_last = kernel_tpu.linear_scan_tpu(
                    x, a, h0, reverse=reverse, interpret=interpret, blocks=kernel_tpu.TpuBlocks(block_t=8)
                )
            else:
                y, h_last = kernel_gpu.linear_scan_gpu(x, a, h0, reverse=reverse, interpret=interpret)
            np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5, err_msg=kernel)
            np.testing.assert_allclose(h_last, h_np, rtol=1e-5, atol=1e-5, err_msg=kernel)

    @pytest.mark.parametrize("reverse", [False, True])
    def test_gradients_match_reference(self, kernel_impl, reverse):
        x, a, h0 = make_inputs(2, 13, 5, seed=5)
        want = grads(linear_scan_sequential, x, a, h0, reverse)
        for kernel in self.kernels(kernel_impl):
            fn = lambda *args, **kw: linear_scan(*args, impl=kernel_impl, kernel=kernel, **kw)  # noqa: E731
            got = grads(fn, x, a, h0, reverse)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=kernel)

    def test_no_h0_and_bf16_within_half_ulp(self, kernel_impl):
        x16, a16, y32, h32 = bf16_case()
        for kernel in self.kernels(kernel_impl):
            check_bf16(*linear_scan(x16, a16, impl=kernel_impl, kernel=kernel), y32, h32)
