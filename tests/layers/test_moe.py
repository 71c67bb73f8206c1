"""MoE feed-forward against an independent float64 NumPy per-token loop, and its pieces.

The reference below routes each token on its own (router softmax, top-k, weighted sum of
its experts' gated MLPs, plus the shared experts), with no sorting, buffers or one-hots.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.moe import AUX_KEYS, MoEConfig, MoEFeedForward
from layers.moe_losses import load_balance_loss, router_z_loss
from layers.moe_routers import apply_jitter, softmax_then_topk, topk_then_softmax
from lm.model.counting import moe_flops_per_token, moe_param_count

D = 8


def _act(kind, h):
    if kind == "swiglu":
        return h / (1.0 + np.exp(-h))
    return 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h**3)))


def _np_params(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(params)["params"])


def _np_ffn(x, w_gate, w_up, w_down, kind):
    return (_act(kind, x @ w_gate) * (x @ w_up)) @ w_down


def _np_softmax(z):
    z = np.exp(z - z.max())
    return z / z.sum()


def numpy_moe(params, x, cfg: MoEConfig):
    """Per-token float64 loop: returns y [b, t, d], probs [n, e], chosen experts [n, k]."""
    p = _np_params(params)
    tokens = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    ys, all_probs, all_experts = [], [], []
    for xn in tokens:
        logits = xn @ p["w_router"]
        probs = _np_softmax(logits)
        if cfg.router == "topk_softmax":
            chosen = np.argsort(-logits, kind="stable")[: cfg.top_k]
            weights = _np_softmax(logits[chosen])
        else:
            chosen = np.argsort(-probs, kind="stable")[: cfg.top_k]
            weights = probs[chosen] / (probs[chosen].sum() if cfg.renormalize else 1.0)
        yn = sum(
            wj * _np_ffn(xn, p["w_gate"][e], p["w_up"][e], p["w_down"][e], cfg.activation)
            for wj, e in zip(weights, chosen)
        )
        if cfg.num_shared_experts:
            s = p["shared"]
            yn = yn + _np_ffn(xn, s["w_gate"], s["w_up"], s["w_down"], cfg.activation)
        ys.append(yn)
        all_probs.append(probs)
        all_experts.append(chosen)
    return np.stack(ys).reshape(x.shape), np.stack(all_probs), np.stack(all_experts)


def _init(cfg, x, seed=0):
    # Jitted: one compilation is much cheaper on CPU than op-by-op dispatch of the forward.
    return jax.jit(MoEFeedForward(cfg).init)(jax.random.PRNGKey(seed), x)


def _apply(cfg, params, x, **kwargs):
    return jax.jit(functools.partial(MoEFeedForward(cfg).apply, **kwargs))(params, x)


def _setup(cfg, shape=(2, 5), seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (*shape, D))
    return x, _init(cfg, x, seed)


BASE = MoEConfig(num_experts=4, top_k=2, d_ff=16, gmm_impl="reference")


@pytest.mark.parametrize(
    "cfg",
    [
        BASE,
        dataclasses.replace(BASE, router="topk_softmax", activation="geglu", num_shared_experts=2, shared_d_ff=4),
        dataclasses.replace(BASE, renormalize=False, top_k=3, num_shared_experts=1),
    ],
    ids=["softmax_topk", "topk_softmax_shared", "no_renorm_k3"],
)
def test_dropless_matches_numpy_per_token_loop(cfg):
    x, params = _setup(cfg)
    y, aux = _apply(cfg, params, x)
    y_ref, probs, experts = numpy_moe(params, x, cfg)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert set(aux) == set(AUX_KEYS)
    counts = np.bincount(experts.ravel(), minlength=cfg.num_experts)
    f, p_mean = counts / experts.size, probs.mean(axis=0)
    np.testing.assert_allclose(aux["tokens_per_expert"], counts)
    np.testing.assert_allclose(aux["load_balance_loss"], cfg.num_experts * np.sum(f * p_mean), rtol=1e-5)
    logits = np.asarray(x, np.float64).reshape(-1, D) @ _np_params(params)["w_router"]
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(aux["router_z_loss"], np.mean(lse**2), rtol=1e-5)
    np.testing.assert_allclose(aux["router_entropy"], np.mean(-(probs * np.log(probs)).sum(-1)), rtol=1e-5)
    assert float(aux["dropped_fraction"]) == 0.0


def test_dispatch_modes_agree_forward_and_gradients():
    cfg = dataclasses.replace(BASE, num_shared_experts=1, capacity_factor=float(BASE.num_experts))
    x, params = _setup(cfg, shape=(2, 4))
    results = {}
    # The Pallas kernel's own gradients are tested in tests/pallas_kernels/test_gmm.py.
    y_kernel, _ = _apply(dataclasses.replace(cfg, gmm_impl="interpret"), params, x)
    modes = [("dense", "reference"), ("dropless", "auto"), ("dropless", "reference"), ("capacity", "reference")]
    for dispatch, impl in modes:
        layer = MoEFeedForward(dataclasses.replace(cfg, dispatch=dispatch, gmm_impl=impl))

        def loss(prm, xx, layer=layer):
            y, aux = layer.apply(prm, xx)
            return jnp.sum(jnp.sin(y)) + aux["load_balance_loss"] + 0.1 * aux["router_z_loss"], (y, aux)

        (_, (y, aux)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        results[dispatch, impl] = (y, aux, grads)
    dense_y, _, dense_grads = results["dense", "reference"]
    np.testing.assert_allclose(y_kernel, dense_y, rtol=1e-5, atol=1e-6, err_msg="dropless, interpret")
    for key, (y, aux, grads) in results.items():
        np.testing.assert_allclose(y, dense_y, rtol=1e-5, atol=1e-6, err_msg=str(key))
        assert float(aux["dropped_fraction"]) == 0.0, key
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dense_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(key))


def _constant_router(params, router_w):
    p = nn.meta.unbox(params)
    p["params"]["w_router"] = jnp.asarray(router_w, jnp.float32)
    return p


def test_capacity_drops_overflow_in_token_order():
    # Every token prefers expert 0 (router column 0 large); capacity = ceil(8 * 1 / 2 * 1) = 4.
    cfg = MoEConfig(num_experts=2, top_k=1, d_ff=8, dispatch="capacity", capacity_factor=1.0)
    x = jnp.abs(jax.random.normal(jax.random.PRNGKey(3), (1, 8, D))) + 0.1
    params = _init(cfg, x)
    params = _constant_router(params, np.stack([np.ones(D), -np.ones(D)], axis=1))
    y, aux = _apply(cfg, params, x)
    np.testing.assert_allclose(aux["dropped_fraction"], 0.5)
    np.testing.assert_allclose(aux["tokens_per_expert"], [8.0, 0.0])
    y_ref, _, _ = numpy_moe(params, x, cfg)
    np.testing.assert_allclose(y[0, :4], y_ref[0, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y[0, 4:], 0.0)


def test_capacity_serves_first_choices_before_second_choices():
    # Tokens 0, 1 prefer expert 0; tokens 2, 3 prefer expert 1; k = 2, capacity = 2.
    # GShard priority keeps every first choice and drops every second choice.
    cfg = MoEConfig(num_experts=2, top_k=2, d_ff=8, dispatch="capacity", capacity_factor=0.5, renormalize=False)
    sign = np.array([1.0, 1.0, -1.0, -1.0])
    x = jnp.asarray(sign[None, :, None] * np.ones((1, 4, D)) * np.linspace(0.5, 1.0, 4)[None, :, None], jnp.float32)
    params = _init(cfg, x)
    params = _constant_router(params, np.stack([np.ones(D), -np.ones(D)], axis=1) * 0.1)
    y, aux = _apply(cfg, params, x)
    np.testing.assert_allclose(aux["dropped_fraction"], 0.5)
    y_top1, _, _ = numpy_moe(params, x, dataclasses.replace(cfg, top_k=1))
    np.testing.assert_allclose(y, y_top1, rtol=1e-5, atol=1e-6)


def test_load_balance_and_z_loss_hand_computed():
    probs = jnp.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    experts = jnp.array([[0], [0], [1]])
    # f = (2/3, 1/3), P = (0.8/... ) = (1.6/3, 1.4/3): 2 * (2/3 * 1.6/3 + 1/3 * 1.4/3)
    np.testing.assert_allclose(load_balance_loss(probs, experts), 2 * (3.2 + 1.4) / 9, rtol=1e-6)
    uniform = jnp.full((4, 4), 0.25)
    np.testing.assert_allclose(load_balance_loss(uniform, jnp.array([[0, 1], [2, 3], [1, 0], [3, 2]])), 1.0, rtol=1e-6)
    logits = jnp.array([[0.0, math.log(3.0)], [1.0, 1.0]])
    np.testing.assert_allclose(router_z_loss(logits), (math.log(4.0) ** 2 + (1 + math.log(2.0)) ** 2) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="scope"):
        load_balance_loss(probs, experts, scope="sequence")


def test_global_batch_scope_pmeans_f_and_p_over_the_data_axis():
    rng = np.random.default_rng(0)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32), axis=-1)
    experts = jnp.asarray(rng.integers(0, 4, size=(2, 6, 2)), jnp.int32)

    def per_shard(scope):
        return jax.vmap(lambda p, e: load_balance_loss(p, e, scope=scope, axis_name="data"), axis_name="data")(
            probs, experts
        )

    whole = load_balance_loss(probs.reshape(12, 4), experts.reshape(12, 2))
    np.testing.assert_allclose(per_shard("global_batch"), [whole, whole], rtol=1e-6)
    halves = [load_balance_loss(probs[i], experts[i]) for i in range(2)]
    np.testing.assert_allclose(per_shard("micro_batch"), halves, rtol=1e-6)
    assert abs(float(np.mean(halves)) - float(whole)) > 1e-4  # the two scopes differ here


def test_routers_documented_identities():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5)) * 2
    a, b = softmax_then_topk(logits, 2, renormalize=True), topk_then_softmax(logits, 2)
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)
    c = softmax_then_topk(logits, 2, renormalize=False)
    np.testing.assert_allclose(c.weights, np.take_along_axis(np.asarray(c.probs), np.asarray(c.experts), 1))
    x = jnp.ones((50, 3))
    ratio = apply_jitter(x, jax.random.PRNGKey(1), 0.1)
    assert float(ratio.min()) >= 0.9 and float(ratio.max()) <= 1.1 and float(ratio.std()) > 0.01


def test_expert_choice_matches_numpy_and_refuses_decode():
    cfg = MoEConfig(num_experts=4, top_k=1, d_ff=8, router="expert_choice", dispatch="capacity", capacity_factor=1.0)
    x, params = _setup(cfg, shape=(1, 6))
    y, aux = _apply(cfg, params, x)
    p = _np_params(params)
    tokens = np.asarray(x, np.float64).reshape(-1, D)
    probs = np.stack([_np_softmax(t @ p["w_router"]) for t in tokens])
    capacity = math.ceil(6 * 1 * 1.0 / 4)
    y_ref = np.zeros_like(tokens)
    for e in range(4):
        for n in np.argsort(-probs[:, e], kind="stable")[:capacity]:
            y_ref[n] += probs[n, e] * _np_ffn(tokens[n], p["w_gate"][e], p["w_up"][e], p["w_down"][e], cfg.activation)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["dropped_fraction"], np.mean(np.all(y_ref == 0, axis=-1)))
    np.testing.assert_allclose(aux["tokens_per_expert"], [capacity] * 4)
    with pytest.raises(ValueError, match="not causal"):
        MoEFeedForward(cfg).apply(params, x, decode=True)


def test_jitter_only_in_training():
    cfg = dataclasses.replace(BASE, router_jitter=0.5)
    x, params = _setup(cfg)
    y_eval, _ = _apply(cfg, params, x)
    np.testing.assert_allclose(y_eval, numpy_moe(params, x, cfg)[0], rtol=1e-5, atol=1e-5)
    y_train, _ = _apply(cfg, params, x, deterministic=False, rngs={"jitter": jax.random.PRNGKey(5)})
    assert float(jnp.max(jnp.abs(y_train - y_eval))) > 1e-4


def test_param_count_and_flops_hand_formula():
    cfg = dataclasses.replace(BASE, num_shared_experts=2, shared_d_ff=4)
    x, params = _setup(cfg)
    counts = moe_param_count(cfg, D)
    assert counts["total"] == sum(a.size for a in jax.tree.leaves(nn.meta.unbox(params)))
    expected_active = D * 4 + 2 * 3 * D * 16 + 3 * D * 8
    assert counts["active"] == expected_active
    assert moe_flops_per_token(cfg, D) == 2 * expected_active
    dense = dataclasses.replace(cfg, dispatch="dense")
    assert moe_flops_per_token(dense, D, executed=True) == 2 * (D * 4 + 4 * 3 * D * 16 + 3 * D * 8)


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="top_k=5"):
        MoEConfig(num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="dispatch"):
        MoEConfig(router="expert_choice", dispatch="dropless")
    with pytest.raises(ValueError, match="load_balance_scope"):
        MoEConfig(load_balance_scope="batch")
    for name, value in (("load_balance_weight", -0.1), ("router_z_weight", float("inf")), ("router_z_weight", "1")):
        with pytest.raises(ValueError, match=rf"MoEConfig\.{name}=.*finite number >= 0"):
            MoEConfig(**{name: value})
