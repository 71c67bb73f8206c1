"""Tests of chunked linear attention: three reference forms, the Pallas kernel, FLOPs.

Everything is compared with a float64 NumPy transcription of the recurrence
S_t = exp(g_t) diag(exp(gk_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t written here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model.counting import linear_attention_flops
from pallas_kernels.backend import platform
from pallas_kernels.linear_attention.ops import linear_attention_fwd_kernel
from pallas_kernels.linear_attention import (
    BlockSizes,
    linear_attention,
    linear_attention_chunked,
    linear_attention_pallas,
    linear_attention_parallel,
    linear_attention_recurrent,
)

VARIANTS = ["none", "g", "gk", "both"]


def numpy_recurrence(q, k, v, g=None, gk=None, s0=None, scale=None):
    """float64 loop over time; returns (o [b t h v], final state [b h k v])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    state = np.zeros((b, h, dk, v.shape[-1])) if s0 is None else np.asarray(s0, np.float64).copy()
    o = np.zeros(v.shape)
    for i in range(t):
        decay = np.ones((b, h, dk))
        if g is not None:
            decay = decay * np.exp(np.asarray(g, np.float64)[:, i])[..., None]
        if gk is not None:
            decay = decay * np.exp(np.asarray(gk, np.float64)[:, i])
        state = decay[..., None] * state + k[:, i, :, :, None] * v[:, i, :, None, :]
        o[:, i] = scale * np.einsum("bhk,bhkv->bhv", q[:, i], state)
    return o, state


def make_inputs(seed, variant, *, b=1, t=37, h=2, dk=16, dv=16, with_state=True, strength=2.0):
    """q, k, v, g, gk, s0 with decays in (0, 1) drawn as logsigmoid(N(strength, 1))."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    logsig = lambda x: -np.logaddexp(0.0, -x).astype(np.float32)
    q, k, v = normal(b, t, h, dk), normal(b, t, h, dk), normal(b, t, h, dv)
    g = logsig(normal(b, t, h) + strength) if variant in ("g", "both") else None
    gk = logsig(normal(b, t, h, dk) + strength) if variant in ("gk", "both") else None
    s0 = normal(b, h, dk, dv) if with_state else None
    as_jax = lambda x: None if x is None else jnp.asarray(x)
    return tuple(map(as_jax, (q, k, v, g, gk, s0)))


def assert_close(actual, expected, tol=2e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize(
    "variant, with_state", [("none", False), ("none", True), ("g", True), ("gk", True), ("both", False), ("both", True)]
)
def test_reference_forms_match_numpy(variant, with_state):
    q, k, v, g, gk, s0 = make_inputs(0, variant, t=70, dk=8, dv=8, with_state=with_state)
    want_o, want_s = numpy_recurrence(q, k, v, g, gk, s0)

    @jax.jit  # one compilation is cheaper than op-by-op dispatch of three forms
    def forms(q, k, v, g, gk, s0):
        out = {
            "recurrent": linear_attention_recurrent(q, k, v, g, gk, initial_state=s0),
            "parallel": linear_attention_parallel(q, k, v, g, gk, initial_state=s0),
        }
        for c in (16, 32, 64):
            out[f"chunked{c}"] = linear_attention_chunked(q, k, v, g, gk, initial_state=s0, chunk_size=c)
        # 5 chunks in 3 outer steps of 2 chunks: exercises group padding and the outer scan.
        out["chunked16-grouped"] = linear_attention_chunked(
            q, k, v, g, gk, initial_state=s0, chunk_size=16, tokens_per_step=32
        )
        return out

    for name, (o, s) in forms(q, k, v, g, gk, s0).items():
        assert o.dtype == q.dtype and s.dtype == jnp.float32, name
        assert_close(o, want_o), name
        assert_close(s, want_s), name


def test_public_reference_and_scale():
    q, k, v, g, gk, s0 = make_inputs(1, "both", t=21)
    o, s = linear_attention(q, k, v, g=g, gk=gk, scale=0.3, initial_state=s0, chunk_size=16, impl="reference")
    assert s is None
    want_o, _ = numpy_recurrence(q, k, v, g, gk, s0, scale=0.3)
    assert_close(o, want_o)
    _, s = linear_attention(q, k, v, g=g, output_final_state=True, chunk_size=32, impl="reference")
    assert_close(s, numpy_recurrence(q, k, v, g)[1])


def test_strong_decay_long_chunk_does_not_overflow():
    # Cumulative log-decay reaches about -30 * 64 inside a chunk: exp(-(B_c - B_r)) would be
    # exp(1900) = inf if differences were exponentiated before masking.
    q, k, v, _, _, s0 = make_inputs(2, "none", t=64)
    g = jnp.full(q.shape[:3], -30.0)
    gk = jnp.full(q.shape, -2.0).at[:, ::3].set(-40.0)
    want_o, want_s = numpy_recurrence(q, k, v, g, gk, s0)
    o, s = linear_attention_chunked(q, k, v, g, gk, initial_state=s0, chunk_size=64)
    assert_close(o, want_o)
    assert_close(s, want_s)
    grads = jax.jit(jax.grad(lambda *a: linear_attention_chunked(*a, chunk_size=64)[0].sum(), argnums=(0, 1, 2, 3, 4)))(
        q, k, v, g, gk
    )
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in grads)


def _loss_fn(form, weights):
    w_o, w_s = weights

    def loss(q, k, v, g, gk, s0):
        o, s = form(q, k, v, g, gk, s0)
        return jnp.sum(o * w_o) + jnp.sum(s * w_s)

    return loss


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_gradients_match_recurrent(variant):
    q, k, v, g, gk, s0 = make_inputs(3, variant, t=29)
    rng = np.random.default_rng(4)
    weights = tuple(jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (v, s0))
    chunked = lambda q, k, v, g, gk, s0: linear_attention_chunked(
        q, k, v, g, gk, initial_state=s0, chunk_size=8, tokens_per_step=16
    )  # 4 chunks in 2 checkpointed outer steps
    recurrent = lambda q, k, v, g, gk, s0: linear_attention_recurrent(q, k, v, g, gk, initial_state=s0)
    args = (q, k, v, g, gk, s0)
    got = jax.jit(jax.grad(_loss_fn(chunked, weights), argnums=tuple(range(6))))(*args)
    want = jax.jit(jax.grad(_loss_fn(recurrent, weights), argnums=tuple(range(6))))(*args)
    for name, a, b in zip("q k v g gk s0".split(), got, want):
        if b is None:
            assert a is None, name
        else:
            assert_close(a, b, tol=5e-4), name


def test_chunked_gradients_match_finite_differences():
    """Directional derivative of the chunked form vs central differences of the float64 NumPy loop."""
    q, k, v, g, gk, s0 = make_inputs(5, "both", t=19, dk=4, dv=3)
    rng = np.random.default_rng(6)
    w_o = rng.standard_normal(v.shape)
    np_loss = lambda *a: float(np.sum(numpy_recurrence(*a)[0] * w_o))
    chunked = lambda *a: jnp.sum(linear_attention_chunked(*a[:5], initial_state=a[5], chunk_size=8)[0] * w_o)
    args = [q, k, v, g, gk, s0]
    grads = jax.jit(jax.grad(chunked, argnums=tuple(range(6))))(*args)
    eps = 1e-4
    for i, name in enumerate("q k v g gk s0".split()):
        direction = rng.standard_normal(args[i].shape)
        plus = [np.asarray(a, np.float64) for a in args]
        minus = [np.asarray(a, np.float64) for a in args]
        plus[i] = plus[i] + eps * direction
        minus[i] = minus[i] - eps * direction
        fd = (np_loss(*plus) - np_loss(*minus)) / (2 * eps)
        ad = float(np.sum(np.asarray(grads[i], np.float64) * direction))
        assert abs(fd - ad) <= 1e-3 * max(1.0, abs(fd)), (name, fd, ad)


class TestKernel:
    """The Pallas kernel (interpret mode on CPU, compiled on an accelerator)."""

    @pytest.mark.parametrize("variant", VARIANTS)
    def test_forward_matches_numpy(self, kernel_impl, variant):
        q, k, v, g, gk, s0 = make_inputs(7, variant, t=37, with_state=variant != "none")
        want_o, want_s = numpy_recurrence(q, k, v, g, gk, s0)
        if kernel_impl == "interpret":
            # Both drivers run on CPU; the GPU one differs only in how it loads blocks, so
            # it runs for two variants to keep the interpreter's time down.
            kernels = ["tpu", "gpu"] if variant in ("g", "both") else ["tpu"]
        else:
            kernels = [platform()]
        for kernel in kernels:
            o, s = linear_attention_pallas(
                q, k, v, g, gk, initial_state=s0, block_sizes=BlockSizes(16, sub_chunk=8),
                kernel=kernel, interpret=kernel_impl == "interpret",
            )
            assert_close(o, want_o), kernel
            assert_close(s, want_s), kernel

    def test_public_op_chunk32_value_tiles(self, kernel_impl):
        q, k, v, g, _, s0 = make_inputs(8, "g", t=45, dv=32)
        want_o, want_s = numpy_recurrence(q, k, v, g, None, s0)
        o, s = linear_attention(
            q, k, v, g=g, initial_state=s0, output_final_state=True, chunk_size=32, impl=kernel_impl
        )
        assert_close(o, want_o)
        assert_close(s, want_s)
        o, s = linear_attention_pallas(
            q, k, v, g, initial_state=s0, block_sizes=BlockSizes(16, block_v=16),
            kernel="gpu" if kernel_impl == "interpret" else platform(), interpret=kernel_impl == "interpret",
        )
        assert_close(o, want_o)
        assert_close(s, want_s)

    def test_strong_decay(self, kernel_impl):
        # Inside a chunk of 16 the cumulative log-decay reaches -30 * 16 = -480: exp(480) = inf.
        q, k, v, _, _, s0 = make_inputs(9, "none", t=32)
        g = jnp.full(q.shape[:3], -30.0)
        gk = jnp.full(q.shape, -1.0).at[:, 1::4].set(-60.0)
        want_o, want_s = numpy_recurrence(q, k, v, g, gk, s0)
        o, s = linear_attention_pallas(
            q, k, v, g, gk, initial_state=s0, block_sizes=BlockSizes(16, sub_chunk=8),
            kernel="tpu" if kernel_impl == "interpret" else platform(), interpret=kernel_impl == "interpret",
        )
        assert_close(o, want_o)
        assert_close(s, want_s)

    def test_gradients_match_recurrent(self, kernel_impl):
        q, k, v, g, gk, s0 = make_inputs(10, "both", t=21)
        rng = np.random.default_rng(11)
        weights = tuple(jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (v, s0))
        kernel = lambda q, k, v, g, gk, s0: linear_attention(
            q, k, v, g=g, gk=gk, initial_state=s0, output_final_state=True, chunk_size=16, impl=kernel_impl
        )
        recurrent = lambda q, k, v, g, gk, s0: linear_attention_recurrent(q, k, v, g, gk, initial_state=s0)
        got = jax.jit(jax.grad(_loss_fn(kernel, weights), argnums=tuple(range(6))))(q, k, v, g, gk, s0)
        want = jax.jit(jax.grad(_loss_fn(recurrent, weights), argnums=tuple(range(6))))(q, k, v, g, gk, s0)
        for name, a, b in zip("q k v g gk s0".split(), got, want):
            assert_close(a, b, tol=5e-4), name


@pytest.mark.parametrize("kernel, platform_name", [("tpu", "tpu"), ("gpu", "cuda")])
def test_kernel_lowers_for_accelerators(kernel, platform_name):
    """Cross-lowering from CPU catches Pallas ops that Mosaic or Triton do not support."""
    x, t, dk, dv = 2, 128, 64, 64
    q, v, s0 = jnp.zeros((x, t, dk)), jnp.zeros((x, t, dv)), jnp.zeros((x, dv, dk))
    for mode, decay in [("none", None), ("scalar", jnp.zeros((x, t))), ("per_key", jnp.zeros((x, t, dk)))]:
        f = lambda q, k, v, decay, s0, mode=mode: linear_attention_fwd_kernel(
            q, k, v, decay, s0, mode=mode, scale=0.125, block_sizes=BlockSizes(64), kernel=kernel, interpret=False
        )
        text = jax.jit(f).trace(q, q, v, decay, s0).lower(lowering_platforms=(platform_name,)).as_text()
        assert "linear_attention_fwd" in text, mode


@pytest.mark.parametrize("decay", ["none", "scalar", "per_key"])
def test_flops_match_xla_cost_analysis(decay):
    b, t, h, dk, dv, chunk = 1, 200, 2, 64, 64, 64
    q = jnp.zeros((b, t, h, dk))
    v = jnp.zeros((b, t, h, dv))
    g = jnp.zeros((b, t, h)) if decay == "scalar" else None
    gk = jnp.zeros((b, t, h, dk)) if decay == "per_key" else None
    f = lambda q, k, v, g, gk: linear_attention_chunked(q, k, v, g, gk, chunk_size=chunk)
    cost = jax.jit(f).lower(q, q, v, g, gk).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = linear_attention_flops(t, num_heads=h, key_dim=dk, value_dim=dv, chunk_size=chunk, decay=decay) * t
    assert abs(ours / cost["flops"] - 1) < 0.08, (ours, cost["flops"])


def test_flops_grow_linearly_and_validate():
    per_token = lambda t: linear_attention_flops(t, num_heads=8, key_dim=64, value_dim=64, chunk_size=64)
    assert per_token(1024) == pytest.approx(per_token(16384))
    assert per_token(65) > per_token(64)  # the padded chunk is paid for
    with pytest.raises(ValueError, match="decay"):
        linear_attention_flops(64, num_heads=1, key_dim=8, value_dim=8, decay="gla")


def test_invalid_arguments_raise():
    q, k, v, g, _, _ = make_inputs(12, "g", t=8)
    with pytest.raises(ValueError, match="g"):
        linear_attention(q, k, v, g=g[:, :4], impl="reference")
    with pytest.raises(ValueError, match="impl"):
        linear_attention(q, k, v, impl="cuda")
    with pytest.raises(ValueError, match="sub_chunk"):
        BlockSizes(64, sub_chunk=24)
