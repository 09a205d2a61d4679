"""Sampling the initial particles: Theta (L, M, k) drawn from an initial measure rho_ini.

``init_particles(kind, ...)`` with ``kind`` one of ``INIT_KINDS`` (config
``init.kind``). Layer l's M particles are i.i.d. samples of rho_ini(., t_l);
the laws below do not depend on t. (Not to be confused with ``_flow.Measure``,
the base class of measure representations other than a particle array, such
as the grid's density; the grid's initial densities are ``_grid.init_density``.)

* ``gaussian``: N(mean, diag(std^2)); mean and std scalars or length-k lists.
* ``uniform``: uniform on the box [low, high]; when low/high are not given the
  box is mean +- sqrt(3) std (the uniform law with that mean and std).
* ``point``: every particle at ``mean`` (the Dirac mass; mean = 0 is the
  degenerate stationary point of docs/theory.md, "Degenerate start").
* ``file``: ``theta`` of shape (L, M, k) from a .npz/.h5 file.

``symmetric`` (config ``init.symmetric``; not for ``file``): the symmetrized
initialization of Chizat, Oyallon and Bach (2019). The first M/2 particles of
every slice are sampled as above and the other M/2 are their odd reflections
R theta (``FeatureMap.reflection``: f(z; R theta) = -f(z; theta); neuron
u -> -u, linear theta -> -theta), so every slice field F_l is zero at s = 0
(up to round-off) and the network starts at the identity map, for any
residual scale alpha. It is an unbiased sample of rho_ini when rho_ini is
invariant under R (e.g. a Gaussian whose mean has u = 0). M must be even.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._data import DataError, load_array_file
from ._schema import fmt

INIT_KINDS = ("gaussian", "uniform", "point", "file")
MEASURES = INIT_KINDS  # the former name, kept for ``wflow.MEASURES``


def per_coord(value, k: int, key: str) -> np.ndarray:
    """A scalar or a list of k values (config ``key``) as k float64 values."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full((k,), float(arr))
    if arr.shape != (k,):
        raise DataError(f"{key} = {fmt(arr.tolist())}: give a scalar or a list of k = {k} values")
    return arr


def init_particles(
    kind: str,
    key: jax.Array,
    L: int,
    M: int,
    k: int,
    *,
    mean=0.0,
    std=1.0,
    low=None,
    high=None,
    path: str | None = None,
    dtype=jnp.float32,
    reflection=None,
) -> jax.Array:
    """Sample Theta (L, M, k) from the initial measure ``kind``.

    ``reflection``: signs R (k,) (``FeatureMap.reflection``) for the symmetrized
    initialization (module docstring), or None.
    """
    if reflection is not None:
        if kind == "file":
            raise DataError('init.symmetric = true: not used with init.kind = "file" (the file '
                            "gives every particle)")
        if M % 2:
            raise DataError(f"init.symmetric = true: needs an even solver.M (got {M})")
        R = np.asarray(reflection, np.float64)
        if R.shape != (k,):
            raise DataError(f"init.symmetric: the reflection has shape {R.shape}, need ({k},)")
        half = init_particles(kind, key, L, M // 2, k, mean=mean, std=std, low=low, high=high,
                              dtype=dtype)
        return jnp.concatenate([half, half * jnp.asarray(R, dtype)], axis=1)
    mean = per_coord(mean, k, "init.mean")
    std = per_coord(std, k, "init.std")
    if np.any(std < 0):
        raise DataError(f"init.std = {std.tolist()}: must be >= 0")
    if kind == "gaussian":
        xi = jax.random.normal(key, (L, M, k), dtype=dtype)
        return jnp.asarray(mean, dtype) + jnp.asarray(std, dtype) * xi
    if kind == "uniform":
        lo = mean - np.sqrt(3.0) * std if low is None else per_coord(low, k, "init.low")
        hi = mean + np.sqrt(3.0) * std if high is None else per_coord(high, k, "init.high")
        if np.any(hi < lo):
            raise DataError(f"init.high = {hi.tolist()}: must be >= init.low = {lo.tolist()}")
        u = jax.random.uniform(key, (L, M, k), dtype=dtype)
        return jnp.asarray(lo, dtype) + jnp.asarray(hi - lo, dtype) * u
    if kind == "point":
        return jnp.broadcast_to(jnp.asarray(mean, dtype), (L, M, k))
    if kind == "file":
        if not path:
            raise DataError("init.path is missing: kind = 'file' needs a .npz or .h5 file with theta")
        arrays = load_array_file(path, ("theta",), "init.path")
        if "theta" not in arrays:
            raise DataError(f"init.path = {path!r}: no array named 'theta' in the file")
        theta = arrays["theta"]
        if theta.shape != (L, M, k):
            raise DataError(
                f"init.path = {path!r}: theta has shape {theta.shape}, the model needs (L, M, k) = "
                f"({L}, {M}, {k})")
        return jnp.asarray(theta, dtype)
    raise DataError(f"init.kind = {kind!r}: allowed are {', '.join(INIT_KINDS)}")
