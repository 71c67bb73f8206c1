"""Tests of the hand-written backward of chunked linear attention (its ``custom_vjp``).

The reference for every gradient is JAX autodiff of the recurrent form (a ``lax.scan``
over time, a different algorithm from the chunked backward), in float32 at the
"highest" matmul precision (tests/conftest.py); the decay gradient identity
dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t is also checked against central differences of a
float64 NumPy loop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.linear_attention import (
    linear_attention_chunked,
    linear_attention_chunked_bwd,
    linear_attention_recurrent,
)
from tests.pallas_kernels.test_linear_attention import make_inputs as la_inputs

VARIANTS = ["none", "g", "gk", "both"]
NAMES = ("q", "k", "v", "g", "gk", "s0")


def make_inputs(seed, variant, *, b=2, t=45, h=2, dk=8, dv=6, **kw):
    """The forward tests' inputs at the backward tests' default shape (six chunks of 8, batch 2)."""
    return la_inputs(seed, variant, b=b, t=t, h=h, dk=dk, dv=dv, **kw)


def assert_close(actual, expected, name, tol=2e-4):
    if expected is None:
        assert actual is None, name
        return
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()), err_msg=name)


def cotangents(seed, args):
    """(do, d_final) with both terms, only the output term, and only the final-state term."""
    rng = np.random.default_rng(seed)
    q, _, v, _, _, _ = args
    b, _, h, dk = q.shape
    do = jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
    d_final = jnp.asarray(rng.standard_normal((b, h, dk, v.shape[-1])), jnp.float32)
    return [(do, d_final), (do, jnp.zeros_like(d_final)), (jnp.zeros_like(do), d_final)]


def vjps(form, args, cts):
    """Gradients w.r.t. the six inputs for each cotangent, through one ``jax.vjp``."""
    _, vjp = jax.vjp(form, *args)
    return [vjp(ct) for ct in cts]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_state", [False, True])
def test_custom_backward_matches_recurrent_autodiff(variant, with_state):
    # t = 45 with chunks of 8 in groups of 2: 6 chunks (the last one padded) in 3 outer
    # steps, so the reverse scan over groups, the state gradient carried between groups and
    # the decay-gradient suffix sums all take part; batch 2 checks the time slicing.
    args = make_inputs(0, variant, with_state=with_state)
    cts = cotangents(1, args)
    chunked = lambda q, k, v, g, gk, s0: linear_attention_chunked(
        q, k, v, g, gk, initial_state=s0, chunk_size=8, tokens_per_step=16
    )
    recurrent = lambda q, k, v, g, gk, s0: linear_attention_recurrent(q, k, v, g, gk, initial_state=s0)
    backward = lambda *args_cts: linear_attention_chunked_bwd(
        *args_cts[:6], args_cts[6], chunk_size=8, tokens_per_step=16
    )

    @jax.jit
    def all_grads(args, cts):
        return (
            vjps(chunked, args, cts),
            vjps(recurrent, args, cts),
            [backward(*args, ct) for ct in cts],  # the Pallas kernel's backward
        )

    got, want, standalone = all_grads(args, cts)
    for case, (g_case, w_case, s_case) in enumerate(zip(got, want, standalone)):
        for name, a, s, w in zip(NAMES, g_case, s_case, w_case):
            assert_close(a, w, f"{name} (cotangent case {case})")
            assert_close(s, w, f"{name} standalone (cotangent case {case})")


def test_decay_gradient_under_strong_decay_matches_recurrent():
    # Cumulative log-decay down to -30 * 16 inside a chunk: the identity dL/dG = q dq - k dk
    # is formed from chunk-local factors exp(B) <= 1, never from exp(-G).
    q, k, v, _, _, s0 = make_inputs(2, "none", b=1, t=40, dk=4, dv=4)
    g = jnp.full(q.shape[:3], -30.0).at[:, 5:9].set(-0.01)
    gk = jnp.full(q.shape, -1.0).at[:, 1::4].set(-60.0).at[:, 20:30].set(-0.05)
    args = (q, k, v, g, gk, s0)
    cts = cotangents(3, args)[:1]
    chunked = lambda *a: linear_attention_chunked(*a[:5], initial_state=a[5], chunk_size=16, tokens_per_step=16)
    recurrent = lambda *a: linear_attention_recurrent(*a[:5], initial_state=a[5])
    got, want = jax.jit(lambda args, cts: (vjps(chunked, args, cts), vjps(recurrent, args, cts)))(args, cts)
    for name, a, w in zip(NAMES, got[0], want[0]):
        assert bool(jnp.all(jnp.isfinite(a))), name
        assert_close(a, w, name)


def test_decay_gradient_matches_float64_finite_differences():
    """dL/dg and dL/dgk (with a final-state term in L) vs central differences in float64."""
    q, k, v, g, gk, s0 = make_inputs(4, "both", b=1, t=21, dk=3, dv=2)
    rng = np.random.default_rng(5)
    w_o, w_s = rng.standard_normal(v.shape), rng.standard_normal(s0.shape)

    def numpy_loss(g, gk):
        qq, kk, vv = (np.asarray(x, np.float64) for x in (q, k, v))
        state = np.asarray(s0, np.float64).copy()
        total = 0.0
        for i in range(qq.shape[1]):
            decay = np.exp(g[:, i])[..., None] * np.exp(gk[:, i])
            state = decay[..., None] * state + kk[:, i, :, :, None] * vv[:, i, :, None, :]
            total += np.sum(w_o[:, i] * 3**-0.5 * np.einsum("bhk,bhkv->bhv", qq[:, i], state))
        return total + np.sum(w_s * state)

    def loss(g, gk):
        o, s = linear_attention_chunked(q, k, v, g, gk, initial_state=s0, chunk_size=4, tokens_per_step=8)
        return jnp.sum(o * w_o) + jnp.sum(s * w_s)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(g, gk)
    base = [np.asarray(g, np.float64), np.asarray(gk, np.float64)]
    eps = 1e-5
    for i, name in enumerate(("g", "gk")):
        direction = rng.standard_normal(base[i].shape)
        plus, minus = list(base), list(base)
        plus[i], minus[i] = base[i] + eps * direction, base[i] - eps * direction
        fd = (numpy_loss(*plus) - numpy_loss(*minus)) / (2 * eps)
        ad = float(np.sum(np.asarray(grads[i], np.float64) * direction))
        assert abs(fd - ad) <= 1e-3 * max(1.0, abs(fd)), (name, fd, ad)


def test_gradient_dtypes_follow_inputs():
    q, k, v, g, gk, s0 = make_inputs(6, "both", b=1, t=20)
    q, k, v, g = (x.astype(jnp.bfloat16) for x in (q, k, v, g))
    loss = lambda *a: jnp.sum(linear_attention_chunked(*a[:5], initial_state=a[5], chunk_size=8)[0].astype(jnp.float32))
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(q, k, v, g, gk, s0)
    assert [x.dtype for x in grads] == [jnp.bfloat16] * 4 + [jnp.float32] * 2
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in grads)
