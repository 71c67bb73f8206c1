"""flash_attention against attention_reference: both kernel forms, the blocked path, the switch.

The Pallas kernels run in the interpreter on CPU (``kernel_impl`` = "interpret") and
compiled on an accelerator ("pallas"); both the TPU (grid) and the GPU (loop) forms run
in the interpreter. Shapes are tiny with blocks of 4 so that every case spans several
blocks, with lengths that are not a multiple of the block.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backend import platform
from pallas_kernels.backend import target_platform
from pallas_kernels.flash_attention import (
    BlockSizes,
    attention_blocked,
    attention_causal_blocked,
    attention_reference,
    flash_attention,
)
from pallas_kernels.flash_attention import ops
from pallas_kernels.flash_attention.blocks import kv_block_range, q_block_range

SMALL = BlockSizes(4, 4)
ATOL = 2e-5


def make_qkv(seed, *, b=2, t=13, s=None, h=4, g=2, d=8, e=6):
    # NumPy draws: no per-shape compilation of jax.random on the test's clock.
    s = t if s is None else s
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in
                 [(b, t, h, d), (b, s, g, d), (b, s, g, e)])


def reference(q, k, v, **kw):
    return jax.jit(lambda q, k, v: attention_reference(q, k, v, **kw))(q, k, v)


def segments(b, t, cuts):
    """Document ids [b, t]: row 0 cut at ``cuts``, row 1 a single document."""
    row = np.zeros(t, np.int32)
    for c in cuts:
        row[c:] += 1
    return jnp.asarray(np.stack([row] + [np.zeros(t, np.int32)] * (b - 1)))


def kernel_forms(kernel_impl):
    # On a device only the device's own form compiles; the interpreter runs both.
    if kernel_impl == "pallas":
        return ["gpu" if platform() == "gpu" else "tpu"]
    return ["tpu", "gpu"]


# name -> (shape kwargs, attention kwargs)
FORWARD_CASES = {
    "mha_full_odd": (dict(t=13, h=2, g=2), dict()),
    "gqa_window0": (dict(t=11, h=4, g=2), dict(window=0)),
    "mqa_window3_segments": (dict(t=13, h=4, g=1), dict(window=3, segment_ids=segments(2, 13, [5, 9]))),
    "window_larger_than_t": (dict(t=10, h=2, g=1), dict(window=40)),
    "noncausal_segments_softcap": (dict(t=9, h=2, g=2), dict(causal=False, segment_ids=segments(2, 9, [4]), softcap=1.5)),
    "noncausal_window": (dict(t=12, h=2, g=1), dict(causal=False, window=2)),
    "fewer_queries_than_keys": (dict(t=5, s=11, h=4, g=2), dict(window=4)),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_kernel_forward_matches_reference(kernel_impl, case):
    shape, kw = FORWARD_CASES[case]
    q, k, v = make_qkv(0, **shape)
    expected = reference(q, k, v, **kw)
    for form in kernel_forms(kernel_impl):
        got = jax.jit(lambda q, k, v: flash_attention(q, k, v, impl=kernel_impl, kernel=form, block_sizes=SMALL, **kw))(
            q, k, v
        )
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL, err_msg=form)


def test_kernel_bfloat16_inputs(kernel_impl):
    """bf16 q, k, v: float32 statistics inside, bf16 output close to the float32 reference."""
    q, k, v = make_qkv(9, t=11, h=4, g=2)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    expected = reference(*(x.astype(jnp.float32) for x in (q16, k16, v16)), window=5)
    for form in kernel_forms(kernel_impl):
        got = jax.jit(lambda q, k, v: flash_attention(q, k, v, window=5, impl=kernel_impl, kernel=form,
                                                      block_sizes=SMALL))(q16, k16, v16)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(got.astype(jnp.float32), expected, atol=3e-2, rtol=3e-2, err_msg=form)


GRAD_CASES = {
    "gqa_causal_odd_softcap": (dict(t=10, h=4, g=2), dict(softcap=2.0)),
    "mqa_window_segments": (dict(t=11, h=2, g=1), dict(window=2, segment_ids=segments(2, 11, [6]))),
    "noncausal_window_offset": (dict(t=6, s=9, h=2, g=2), dict(causal=False, window=3)),
}


def _grads(fn, q, k, v):
    # A fixed random cotangent weights every output element differently. One jit per
    # call: compiling the whole gradient once is much cheaper than op-by-op dispatch.
    w = np.random.default_rng(7).standard_normal(jax.eval_shape(fn, q, k, v).shape, np.float32)
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_kernel_gradients_match_reference(kernel_impl, case):
    shape, kw = GRAD_CASES[case]
    q, k, v = make_qkv(1, **shape)
    expected = _grads(lambda q, k, v: attention_reference(q, k, v, **kw), q, k, v)
    for form in kernel_forms(kernel_impl):
        got = _grads(lambda q, k, v: flash_attention(q, k, v, impl=kernel_impl, kernel=form, block_sizes=SMALL, **kw),
                     q, k, v)
        for name, a, b in zip("qkv", got, expected):
            np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5, err_msg=f"{form} d{name}")


def test_kernel_never_reads_fully_masked_blocks(kernel_impl):
    """NaN values in key block 0 reach only the queries that can see it.

    With window 2 and blocks of 4, queries 0..5 see keys of block 0; from query block 2
    (queries 8..) on, block 0 is skipped. A kernel that loaded and multiplied it (even by
    a zero probability) would produce NaN there.
    """
    q, k, v = make_qkv(2, t=16, h=2, g=1)
    v_nan = v.at[:, :4].set(jnp.nan)
    expected = reference(q, k, v.at[:, :4].set(0.0), window=2)
    for form in kernel_forms(kernel_impl):
        got = flash_attention(q, k, v_nan, window=2, impl=kernel_impl, kernel=form, block_sizes=SMALL)
        np.testing.assert_allclose(got[:, 8:], expected[:, 8:], atol=ATOL, rtol=ATOL, err_msg=form)


@pytest.mark.parametrize("causal,window,t,s", [(True, None, 13, 13), (True, 0, 13, 13), (True, 5, 9, 17),
                                              (False, 3, 13, 13), (False, None, 7, 7), (True, 30, 11, 11)])
def test_block_ranges_are_exactly_the_visible_blocks(causal, window, t, s):
    """kv_block_range / q_block_range list exactly the tiles with at least one visible pair."""
    bq, bk = 4, 3
    nq, nk = -(-t // bq), -(-s // bk)
    off = s - t
    qp = np.arange(nq * bq)[:, None] + off
    kp = np.arange(nk * bk)[None, :]
    vis = (kp < s) & (qp < t + off)
    if causal:
        vis &= kp <= qp
    if window is not None:
        vis &= (qp - kp <= window) & ((kp - qp <= window) | causal)
    tiles = vis.reshape(nq, bq, nk, bk).any(axis=(1, 3))
    kw = dict(block_q=bq, block_k=bk, q_offset=off, causal=causal, window=window)
    for qi in range(nq):
        lo, hi = kv_block_range(qi, num_kv_blocks=nk, **kw)
        np.testing.assert_array_equal(np.arange(nk)[tiles[qi]], np.arange(lo, hi), err_msg=f"query block {qi}")
    for ki in range(nk):
        lo, hi = q_block_range(ki, num_q_blocks=nq, **kw)
        np.testing.assert_array_equal(np.arange(nq)[tiles[:, ki]], np.arange(lo, max(hi, lo)),
                                      err_msg=f"key block {ki}")


@pytest.mark.parametrize(
    "shape,kw",
    [(dict(t=21, h=4, g=2), dict(window=3)),
     (dict(t=19, h=2, g=1), dict(window=0, segment_ids=segments(2, 19, [7, 8]), softcap=1.0)),
     (dict(t=9, s=20, h=2, g=2), dict(window=5)),
     (dict(t=17, h=2, g=1), dict(causal=False, window=2, segment_ids=segments(2, 17, [10])))],
)
def test_blocked_path_matches_reference(shape, kw):
    q, k, v = make_qkv(3, **shape)
    got = jax.jit(lambda q, k, v: attention_blocked(q, k, v, block_q=4, **kw))(q, k, v)
    np.testing.assert_allclose(got, reference(q, k, v, **kw), atol=ATOL, rtol=ATOL)
    g_got = _grads(lambda q, k, v: attention_blocked(q, k, v, block_q=4, **kw), q, k, v)
    g_ref = _grads(lambda q, k, v: attention_reference(q, k, v, **kw), q, k, v)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize(
    "shape,kw",
    [(dict(t=29, h=4, g=2), dict()),
     (dict(t=37, h=2, g=1), dict(segment_ids=segments(2, 37, [5, 20]), softcap=1.5)),
     (dict(t=33, h=2, g=2), dict(window=9)),
     (dict(t=3, h=2, g=1), dict())],
)
def test_causal_blocked_path_matches_reference(shape, kw):
    """Lengths that fill no power of two of blocks; documents, GQA, soft-cap, a window."""
    q, k, v = make_qkv(3, **shape)
    fn = lambda q, k, v: attention_causal_blocked(q, k, v, block_q=4, **kw)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fn)(q, k, v), reference(q, k, v, **kw), atol=ATOL, rtol=ATOL)
    g_ref = _grads(lambda q, k, v: attention_reference(q, k, v, **kw), q, k, v)
    for a, b in zip(_grads(fn, q, k, v), g_ref):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


def test_auto_uses_blocked_paths_where_they_skip_blocks(monkeypatch):
    windowed, causal = [], []
    monkeypatch.setattr(ops, "attention_blocked",
                        lambda *a, **kw: windowed.append(kw["window"]) or attention_blocked(*a, **kw))
    monkeypatch.setattr(ops, "attention_causal_blocked",
                        lambda *a, **kw: causal.append(kw["window"]) or attention_causal_blocked(*a, **kw))
    q, k, v = make_qkv(4, t=64, h=2, g=1)
    for window in (4, None, 60):
        out = jax.jit(lambda q, k, v: flash_attention(q, k, v, window=window, block_sizes=BlockSizes(8, 8)))(q, k, v)
        np.testing.assert_allclose(out, reference(q, k, v, window=window), atol=ATOL, rtol=ATOL)
    # Non-causal, one block, or fewer queries than keys: the dense reference.
    for kw in (dict(causal=False), dict(block_sizes=BlockSizes(64, 64))):
        np.testing.assert_allclose(flash_attention(q, k, v, **kw), reference(q, k, v, causal=kw.get("causal", True)),
                                   atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(flash_attention(q[:, :9], k, v), reference(q[:, :9], k, v), atol=ATOL, rtol=ATOL)
    # On CPU the short window takes the windowed path and the rest the causal one; on an
    # accelerator auto is the kernel.
    on_cpu = platform() == "cpu"
    assert windowed == ([4] if on_cpu else [])
    assert causal == ([None, 60] if on_cpu else [])


def test_explicit_positions_fall_back_to_reference(kernel_impl):
    """Decode-style call (cache slots, some empty): every impl gives the reference result."""
    q, k, v = make_qkv(5, t=2, s=7, h=2, g=1)
    q_pos = jnp.array([[4, 5], [4, 5]])
    kv_pos = jnp.array([[0, 1, 2, 3, -1, 4, 5], [0, 1, 2, 3, 4, 5, -1]])
    seg = jnp.zeros((2, 2), jnp.int32)
    kv_seg = jnp.zeros((2, 7), jnp.int32)
    kw = dict(window=3, segment_ids=seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos)
    expected = reference(q, k, v, **kw)
    for impl in ("auto", "blocked", kernel_impl):
        np.testing.assert_allclose(flash_attention(q, k, v, impl=impl, **kw), expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("bad", [dict(window=-1), dict(impl="fast"), dict(kernel="cuda")])
def test_invalid_arguments_raise(bad):
    q, k, v = make_qkv(6, t=4, h=2, g=1)
    with pytest.raises(ValueError):
        flash_attention(q, k, v, **bad)


def test_block_sizes_validation():
    with pytest.raises(ValueError, match="block_q"):
        BlockSizes(block_q=0)


@pytest.mark.parametrize("form,target,marker", [("tpu", "tpu", "tpu_custom_call"), ("gpu", "cuda", "__gpu$xla.gpu.triton")])
def test_kernels_lower_for_their_device(form, target, marker):
    """Forward and backward kernels with interpret=False lower to Mosaic TPU / Triton calls.

    Cross-platform lowering runs JAX's Pallas lowering (block specs, index maps, kernel
    ops) on any host; the device compilers' own passes run only on the device.
    """
    q, k, v = make_qkv(8, t=256, h=4, g=2, d=128, e=128)
    seg = jnp.zeros((2, 256), jnp.int32)

    def loss(q, k, v):
        o = flash_attention(q, k, v, window=64, segment_ids=seg, softcap=30.0, impl="auto")
        return jnp.sum(o)

    with target_platform(form):  # "auto" resolves to this platform's kernel, no device needed
        text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(q, k, v).lower(
            lowering_platforms=(target,)).as_text()
    assert text.count(marker) >= 3, text.count(marker)  # the forward, dq and dkv kernels
