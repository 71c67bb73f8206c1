"""pallas_kernels.backend: the impl switch, the kernel variant, and lowering for a target platform."""

import jax
import pytest

from pallas_kernels import backend
from pallas_kernels.backend import kernel_variant, platform, resolve_impl, target_platform


def test_target_platform_resolves_auto_and_pallas_to_the_target_kernel():
    native = jax.default_backend()
    for name in ("tpu", "gpu"):
        with target_platform(name):
            assert platform() == name and backend.has_accelerator()
            assert resolve_impl("auto", op="x") == "pallas"
            assert resolve_impl("pallas", op="x") == "pallas"
            assert resolve_impl("interpret", op="x") == "interpret"
            assert kernel_variant(None, op="x") == name
            assert kernel_variant("tpu", op="x") == "tpu"
    # Nested contexts restore the outer one; leaving restores the default backend.
    with target_platform("gpu"):
        with target_platform("tpu"):
            assert platform() == "tpu"
        assert platform() == "gpu"
    assert platform() == native


def test_without_a_target_the_default_backend_decides():
    native = jax.default_backend()
    on_device = native in ("gpu", "tpu")
    assert resolve_impl("auto", op="x") == ("pallas" if on_device else "reference")
    assert kernel_variant(None, op="x") == ("gpu" if native == "gpu" else "tpu")  # CPU interprets the TPU body
    if on_device:
        assert resolve_impl("pallas", op="x") == "pallas"
    else:
        with pytest.raises(ValueError, match="target_platform"):
            resolve_impl("pallas", op="x")


@pytest.mark.parametrize("call", [lambda: target_platform("cuda").__enter__(),
                                  lambda: resolve_impl("fast", op="x"),
                                  lambda: kernel_variant("cuda", op="x")])
def test_bad_names_raise(call):
    with pytest.raises(ValueError):
        call()


def test_count_kernel_calls_follows_outlined_functions():
    """gmm's forward and its two backward kernels, each outlined as a jitted function."""
    import jax.numpy as jnp

    from pallas_kernels.backend import count_kernel_calls
    from pallas_kernels.gmm import gmm

    def loss(a, b):
        return jnp.sum(gmm(a, b, jnp.array([3, 5], jnp.int32)) ** 2)

    for name, lowering in (("tpu", "tpu"), ("gpu", "cuda")):
        with target_platform(name):
            lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).trace(
                jnp.ones((8, 16)), jnp.ones((2, 16, 16))).lower(lowering_platforms=(lowering,))
        assert count_kernel_calls(lowered.as_text()) == 3, name  # gmm, d lhs (gmm), d rhs (tgmm)
    assert count_kernel_calls("func.func public @main() {\n return\n}") == 0
