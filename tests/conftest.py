"""Shared test setup: float64 numerics and a PRNG key fixture."""

import jax
import pytest

# Finite-difference and convergence-order checks need double precision; tests
# that check float32 behaviour ask for it explicitly.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
