"""Expert-parallel MoE on 8 fake CPU devices equals the single-device layer.

The check runs in a child process with XLA_FLAGS=--xla_force_host_platform_device_count=8
(the flag must be set before JAX starts, and this pytest process keeps its one device).
The child asserts; the parent checks its exit status and shows its output.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import dataclasses
    import jax, jax.numpy as jnp, numpy as np
    from flax import linen as nn
    from jax.sharding import AxisType
    jax.config.update("jax_default_matmul_precision", "highest")
    from layers.moe import MoEConfig, MoEFeedForward
    from layers.moe_expert_parallel import expert_parallel_moe

    assert jax.device_count() == 8, jax.devices()
    # Auto axes, as lm/train/sharding.py builds its mesh; the end also checks an Explicit one.
    mesh = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Auto,) * 2)
    cfg = MoEConfig(num_experts=8, top_k=2, d_ff=8, num_shared_experts=1, shared_d_ff=4,
                    load_balance_scope="global_batch")
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 8))
    params = nn.meta.unbox(jax.jit(MoEFeedForward(cfg).init)(jax.random.PRNGKey(0), x))

    def single(p, xx, cfg=cfg):
        return MoEFeedForward(cfg).apply(p, xx)

    def sharded(p, xx, cfg=cfg, mesh=mesh):
        return expert_parallel_moe(cfg, p, xx, mesh=mesh, data_axes=("data",))

    def loss(fn):
        def f(p, xx):
            y, aux = fn(p, xx)
            return jnp.sum(jnp.sin(y)) + aux["load_balance_loss"] + 0.1 * aux["router_z_loss"]
        return jax.jit(jax.grad(f, argnums=(0, 1)))

    y1, aux1 = jax.jit(single)(params, x)
    y2, aux2 = jax.jit(sharded)(params, x)
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6)
    for key in aux1:
        np.testing.assert_allclose(aux2[key], aux1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    g1, g2 = loss(single)(params, x), loss(sharded)(params, x)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=str(path[0]))

    # micro_batch scope: the mean over the 8 devices of each device's own loss
    # (device i holds batch row i: the batch axis is split over ("data", "expert")).
    micro = dataclasses.replace(cfg, load_balance_scope="micro_batch")
    _, aux3 = jax.jit(lambda p, xx: expert_parallel_moe(micro, p, xx, mesh=mesh, data_axes=("data",)))(params, x)
    per_row = jax.jit(jax.vmap(lambda xi: MoEFeedForward(micro).apply(params, xi[None])[1]["load_balance_loss"]))(x)
    np.testing.assert_allclose(aux3["load_balance_loss"], np.mean(per_row), rtol=1e-5)
    assert abs(np.mean(per_row) - float(aux1["load_balance_loss"])) > 1e-3

    # A per-pair capacity that drops: dropped fraction is reported and the output differs.
    y4, aux4 = jax.jit(lambda p, xx: expert_parallel_moe(cfg, p, xx, mesh=mesh, data_axes=("data",),
                                                          capacity_factor=0.5))(params, x)
    assert 0.0 < float(aux4["dropped_fraction"]) < 1.0, aux4["dropped_fraction"]

    # An Explicit-axis mesh (jax.make_mesh's default) over the expert axis only.
    explicit = jax.make_mesh((8,), ("expert",), axis_types=(AxisType.Explicit,))
    y5, _ = jax.jit(lambda p, xx: expert_parallel_moe(cfg, p, xx, mesh=explicit))(params, x)
    np.testing.assert_allclose(y5, y1, rtol=1e-5, atol=1e-6)
    print("EXPERT_PARALLEL_OK")
    """
)


def test_expert_parallel_equals_single_device_on_8_fake_devices():
    assert jax.device_count() == 1  # the parent keeps its single device
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "EXPERT_PARALLEL_OK" in proc.stdout
