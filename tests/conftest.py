"""Shared test setup: float64 numerics and a PRNG key fixture."""

import os

# Under pytest-xdist (`-n auto`) several worker processes share the machine: on a GPU each
# would otherwise preallocate 75% of its memory (set before JAX is imported).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

# Finite-difference and convergence-order checks need double precision; tests
# that check float32 behaviour ask for it explicitly.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """After each test module: drop JAX's compiled executables and traced functions.

    One pytest process runs several hundred tests, each compiling its own shapes; without
    this the process kept every executable (and the constants baked into them) and grew
    past the machine's 24 GiB about two thirds of the way through the suite.
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()
