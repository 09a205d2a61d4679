"""The grid's initial densities rho_ini (``init_density``): exact cell averages, unit mass.

Gaussian and uniform densities are integrated exactly over each cell (erf and
interval overlaps, per axis, then outer products), so the initial error is
the restriction to the box only; a point mass fills one cell; a file gives
any non-negative array, rescaled to unit mass.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .._data import DataError, load_array_file
from .._init_particles import per_coord
from .._schema import fmt
from .finite_volume import FiniteVolume
from .flow import GridDensity
from .geometry import Grid

MIN_BOX_MASS = 0.9         # the box must hold this much of a gaussian / uniform rho_ini


def _interval_mass_gaussian(edges: np.ndarray, mean: float, std: float) -> np.ndarray:
    """N(mean, std^2) mass of each [edges_j, edges_{j+1}], accurate in both tails."""
    if std == 0:
        return _interval_mass_point(edges, mean)
    x = (edges - mean) / (std * math.sqrt(2.0))
    erf, erfc = np.vectorize(math.erf), np.vectorize(math.erfc)
    a, b = x[:-1], x[1:]
    right = 0.5 * (erfc(np.maximum(a, 0)) - erfc(np.maximum(b, 0)))   # both edges >= 0
    left = 0.5 * (erfc(-np.minimum(b, 0)) - erfc(-np.minimum(a, 0)))  # both edges <= 0
    middle = 0.5 * (erf(b) - erf(a))
    return np.where(a >= 0, right, np.where(b <= 0, left, middle))


def _interval_mass_uniform(edges: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return _interval_mass_point(edges, low)
    overlap = np.minimum(edges[1:], high) - np.maximum(edges[:-1], low)
    return np.maximum(overlap, 0.0) / (high - low)


def _interval_mass_point(edges: np.ndarray, x: float) -> np.ndarray:
    out = np.zeros(len(edges) - 1)
    if edges[0] <= x <= edges[-1]:
        j = min(max(int(np.searchsorted(edges, x, side="right")) - 1, 0), len(out) - 1)
        out[j] = 1.0
    return out


INIT_KINDS = ("gaussian", "uniform", "point", "file")


def init_density(kind: str, grid: Grid, n_t: int, *, mean=0.0, std=1.0, low=None, high=None,
                 path: str | None = None, dtype=jnp.float32,
                 fv: FiniteVolume = FiniteVolume()) -> GridDensity:
    """The initial density rho_ini on ``grid`` as exact cell averages, the same in all n_t slices.

    * ``gaussian``: N(mean, diag(std^2)); cell averages of the exact integrals
      (erf), restricted to the box and renormalized (the box must hold at least
      90% of the mass, else ValueError naming solver.grid.bounds).
    * ``uniform``: uniform on [low, high] (default mean +- sqrt(3) std): cell
      averages from the exact interval overlaps; same box rule.
    * ``point``: all mass in the cell containing ``mean`` (its centre is within
      h/2 of mean); ValueError if mean lies outside the box.
    * ``file``: array ``rho`` of shape (n_t, *cells) or (*cells) (the same for
      every slice) from .npz / .h5, non-negative; each slice is rescaled to
      unit mass.

    Returns a ``GridDensity`` with unit mass sum_c rho_c |C| = 1 per slice.
    """
    k = grid.k
    if n_t < 1:
        raise ValueError(f"solver.L = {n_t}: must be >= 1")
    if kind == "file":
        rho = _rho_from_file(path, grid, n_t)
    else:
        mean_ = per_coord(mean, k, "init.mean")
        std_ = per_coord(std, k, "init.std")
        if np.any(std_ < 0):
            raise DataError(f"init.std = {fmt(std_.tolist())}: must be >= 0")
        if kind == "point":
            per_axis = []
            index = grid.cell_of(mean_)
            for a in range(k):
                m = np.zeros(grid.cells[a])
                m[index[a]] = 1.0
                per_axis.append(m)
        elif kind == "gaussian":
            per_axis = [_interval_mass_gaussian(grid.edges(a), mean_[a], std_[a]) for a in range(k)]
        elif kind == "uniform":
            lo = mean_ - np.sqrt(3.0) * std_ if low is None else per_coord(low, k, "init.low")
            hi = mean_ + np.sqrt(3.0) * std_ if high is None else per_coord(high, k, "init.high")
            if np.any(hi < lo):
                raise DataError(f"init.high = {fmt(hi.tolist())}: must be >= init.low = "
                                f"{fmt(lo.tolist())}")
            per_axis = [_interval_mass_uniform(grid.edges(a), lo[a], hi[a]) for a in range(k)]
        else:
            raise ValueError(f"init.kind = {kind!r}: allowed are {', '.join(INIT_KINDS)}")
        captured = float(np.prod([m.sum() for m in per_axis]))
        if captured < MIN_BOX_MASS:
            raise ValueError(f"solver.grid.bounds = {fmt([[lo, hi] for lo, hi in zip(grid.lo, grid.hi)])}"
                             f": the box holds only {captured:.3g} of the initial {kind} mass "
                             f"(at least {MIN_BOX_MASS} is needed); widen the box or move init.mean")
        cell_mass = per_axis[0]
        for m in per_axis[1:]:
            cell_mass = np.multiply.outer(cell_mass, m)
        rho = np.broadcast_to(cell_mass / (cell_mass.sum() * grid.volume), (n_t,) + grid.cells)
    return GridDensity(grid, jnp.asarray(np.array(rho), dtype), fv)


def _rho_from_file(path, grid: Grid, n_t: int) -> np.ndarray:
    if not path:
        raise DataError("init.path is missing: init.kind = \"file\" needs a .npz or .h5 file "
                        "with an array rho")
    arrays = load_array_file(path, ("rho",), "init.path")
    if "rho" not in arrays:
        raise DataError(f"init.path = {path!r}: no array named 'rho' in the file (the grid solver "
                        f"reads rho of shape (n_t, *cells) = {(n_t,) + grid.cells})")
    rho = np.asarray(arrays["rho"], dtype=np.float64)
    if rho.shape == grid.cells:
        rho = np.broadcast_to(rho, (n_t,) + grid.cells)
    if rho.shape != (n_t,) + grid.cells:
        raise DataError(f"init.path = {path!r}: rho has shape {rho.shape}, the grid needs "
                        f"(n_t, *cells) = {(n_t,) + grid.cells} or {grid.cells}")
    if np.any(rho < 0):
        raise DataError(f"init.path = {path!r}: rho has negative values; a density is >= 0")
    mass = rho.reshape(n_t, -1).sum(axis=1) * grid.volume
    if np.any(mass <= 0):
        raise DataError(f"init.path = {path!r}: rho slice {int(np.argmin(mass))} has no mass")
    return rho / mass.reshape((n_t,) + (1,) * grid.k)
