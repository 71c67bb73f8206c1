"""Shared test set-up: float32 parity tests run with the highest matmul precision."""

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)
