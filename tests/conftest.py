"""Shared test setup: float64 numerics and a PRNG key fixture."""

import os
import shutil
import tempfile

# One compilation cache on disk for the test processes (JAX's persistent cache): the suite
# compiles the same programs again and again, in tests that build their own closures, after
# the per-module clear below, and in both pytest-xdist workers. The first process to load
# this file (pytest itself, before it starts its workers) makes a fresh folder and removes it
# at the end; the workers find it through WFLOW_TEST_XLA_CACHE. The commands that tests start
# as real processes do not use it: they are killed at random instants and run as concurrent
# processes, and JAX writes an entry in place, so one of them could read another's half-written
# entry (JAX then compiles again, but warns on the stderr that those tests read).
# WFLOW_TEST_XLA_CACHE=0 turns it off; WFLOW_TEST_XLA_CACHE=DIR uses that folder and keeps it
# (a second run then starts with every program it had). A cached program is the same
# executable as a compiled one: results do not change.
_OWN_CACHE = None
if "WFLOW_TEST_XLA_CACHE" not in os.environ:
    _OWN_CACHE = os.environ["WFLOW_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="wflow-xla-")

# Under pytest-xdist (`-n auto`) several worker processes share the machine: on a GPU each
# would otherwise preallocate 75% of its memory (set before JAX is imported).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

# Finite-difference and convergence-order checks need double precision; tests
# that check float32 behaviour ask for it explicitly.
jax.config.update("jax_enable_x64", True)

if os.environ["WFLOW_TEST_XLA_CACHE"] != "0":
    jax.config.update("jax_compilation_cache_dir", os.environ["WFLOW_TEST_XLA_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
