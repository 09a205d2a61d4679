"""The grid's geometry: a uniform box of cells in theta in R^k, k <= 3 (``Grid``).

Static and hashable (no arrays): it is part of a ``GridDensity``'s static
structure and of the compiled step's cache key. The finite-volume scheme
(``finite_volume.py``) reads its widths and face shapes; the flow
(``flow.py``) its centres and face centres, where the velocity is evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._schema import fmt

MAX_K = 3


def _centres_1d(lo: float, hi: float, n: int) -> np.ndarray:
    """Cell centres ((n - i - 1/2) lo + (i + 1/2) hi) / n: exactly symmetric for -lo = hi."""
    i = np.arange(n) + 0.5
    return (lo * (n - i) + hi * i) / n


def _edges_1d(lo: float, hi: float, n: int) -> np.ndarray:
    """The n + 1 cell edges; edges[0] = lo and edges[n] = hi exactly."""
    j = np.arange(n + 1, dtype=np.float64)
    return (lo * (n - j) + hi * j) / n


@dataclass(frozen=True)
class Grid:
    """A uniform box grid in theta in R^k, k = 1, 2, 3 (static: hashable, no arrays).

    Attributes:
        cells: cells per axis (n_0, ..., n_{k-1}), each >= 3.
        lo, hi: the box [lo_a, hi_a] per axis, lo_a < hi_a.

    Cell (i_0, .., i_{k-1}) is the product of [e_a(i_a), e_a(i_a + 1)] with
    e_a(j) = lo_a + j h_a, h_a = (hi_a - lo_a) / n_a; its centre is at
    lo_a + (i_a + 1/2) h_a and its volume |C| = prod_a h_a. Flattened cell
    index: C order (row-major) over ``cells``.
    """

    cells: tuple[int, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self):
        cells = tuple(self.cells)
        if not 1 <= len(cells) <= MAX_K:
            raise ValueError(f"solver.grid.cells = {list(cells)}: the grid has 1 to {MAX_K} axes "
                             f"(k <= {MAX_K})")
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 3
                   for n in cells):
            raise ValueError(f"solver.grid.cells = {list(cells)}: every axis needs an integer "
                             ">= 3 cells")
        if len(self.lo) != len(cells) or len(self.hi) != len(cells):
            raise ValueError(f"solver.grid.bounds: {len(self.lo)} pairs for {len(cells)} axes")
        for a, (lo, hi) in enumerate(zip(self.lo, self.hi)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"solver.grid.bounds = [{lo!r}, {hi!r}] (axis {a}): must be "
                                 "finite with low < high")
        object.__setattr__(self, "cells", tuple(int(n) for n in cells))
        object.__setattr__(self, "lo", tuple(float(v) for v in self.lo))
        object.__setattr__(self, "hi", tuple(float(v) for v in self.hi))

    @classmethod
    def box(cls, cells, bounds, k: int) -> Grid:
        """The grid from config-style values: ``cells`` an int or k ints, ``bounds`` one
        [low, high] pair for every axis or k pairs."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"the grid solver needs k <= {MAX_K} parameters per particle "
                             f"(k = {k})")
        cells = [cells] * k if np.ndim(cells) == 0 else list(cells)
        if len(cells) != k:
            raise ValueError(f"solver.grid.cells = {fmt(cells)}: give one integer or a list of "
                             f"k = {k}")
        b = np.asarray(bounds, dtype=np.float64)
        if b.shape == (2,):
            b = np.tile(b, (k, 1))
        if b.shape != (k, 2):
            raise ValueError(f"solver.grid.bounds = {fmt(bounds)}: give [low, high] or a list of "
                             f"k = {k} such pairs")
        return cls(tuple(cells), tuple(b[:, 0].tolist()), tuple(b[:, 1].tolist()))

    @property
    def k(self) -> int:
        return len(self.cells)

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.cells))

    @property
    def widths(self) -> tuple[float, ...]:
        """Cell widths h_a = (hi_a - lo_a) / n_a."""
        return tuple((hi - lo) / n for lo, hi, n in zip(self.lo, self.hi, self.cells))

    @property
    def volume(self) -> float:
        """Cell volume |C| = prod_a h_a."""
        return float(np.prod(self.widths))

    @property
    def axes(self) -> list[np.ndarray]:
        """Cell centres per axis (float64), what run files store as /grid/axis_a."""
        return [_centres_1d(lo, hi, n) for lo, hi, n in zip(self.lo, self.hi, self.cells)]

    def edges(self, a: int) -> np.ndarray:
        """The n_a + 1 cell edges (face positions) along axis a."""
        return _edges_1d(self.lo[a], self.hi[a], self.cells[a])

    def face_shape(self, a: int) -> tuple[int, ...]:
        """Shape of the interior faces normal to axis a: ``cells`` with n_a - 1 on axis a."""
        return tuple(n - 1 if b == a else n for b, n in enumerate(self.cells))

    def _points(self, axes_1d, dtype) -> jax.Array:
        mesh = jnp.meshgrid(*[jnp.asarray(x, dtype) for x in axes_1d], indexing="ij")
        return jnp.stack([m.reshape(-1) for m in mesh], axis=1)

    def centres(self, dtype=jnp.float32) -> jax.Array:
        """All cell centres, (n_cells, k), in flattened cell order."""
        return self._points(self.axes, dtype)

    def face_points(self, a: int, dtype=jnp.float32) -> jax.Array:
        """Centres of the interior faces normal to axis a, (prod face_shape(a), k)."""
        axes = self.axes
        axes[a] = self.edges(a)[1:-1]
        return self._points(axes, dtype)

    def wall_mask(self) -> np.ndarray:
        """Boolean ``cells`` array: the cells touching the box walls."""
        mask = np.zeros(self.cells, dtype=bool)
        for a, n in enumerate(self.cells):
            idx = [slice(None)] * self.k
            idx[a] = [0, n - 1]
            mask[tuple(idx)] = True
        return mask

    def cell_of(self, point) -> tuple[int, ...]:
        """Index of the cell containing ``point`` (k,): a point on a face goes to the upper
        cell, a point on the upper wall to the last cell. ValueError outside the box."""
        point = np.broadcast_to(np.asarray(point, dtype=np.float64), (self.k,))
        index = []
        for a, x in enumerate(point):
            if not self.lo[a] <= x <= self.hi[a]:
                raise ValueError(f"init.mean = {fmt(point.tolist())}: coordinate {a} = {x!r} lies "
                                 f"outside the grid box [{self.lo[a]!r}, {self.hi[a]!r}] "
                                 "(solver.grid.bounds)")
            j = int(np.searchsorted(self.edges(a), x, side="right")) - 1
            index.append(min(max(j, 0), self.cells[a] - 1))
        return tuple(index)
