"""The grid: the Eulerian finite-volume solver for the density rho(theta, t).

The mathematics: docs/theory.md, "Discretizations" (finite volumes on a grid).

Everything about the grid lives here: its geometry (``Grid``), the scheme
(``FiniteVolume``), the density it carries (``GridDensity``, a ``Measure``),
the solver step (``GridFlow``, a ``Flow``), the initial densities
(``init_density``) and the grid's config rules (``resolve_grid_config``,
called by ``_config``).

The PDE, per depth slice l = 0..n_t-1 (``solver.L`` slices),

    d_s rho_l = -div_theta J_l,   J_l = rho_l v_l - tau grad_theta rho_l,
    v_l(theta, s) = -grad_theta V_l(theta) - lambda(s) theta,

on a uniform box grid in theta in R^k (k <= 3) with zero flux through the box
walls. rho is stored as cell averages (n_t, *cells), and every slice has unit
mass sum_c rho_c |C| = 1.

**One physics kernel.** A cell is a weighted particle at its centre theta_c
with weight omega_c = rho_c |C| (``GridFlow.weighted``), so the grid's forward
pass, adjoint and loss are the particles' code
(``DepthDiscretization.loss/evaluate/first_variation_gradient`` with
``weights``), for layered and continuous depth alike. The velocity at the
cell faces is ``first_variation_gradient`` at the face centres: one forward
and one reverse pass per Runge-Kutta stage.

**Fluxes** (dimension by dimension, unsplit). At the interior face j + 1/2
between cells j and j + 1 along axis a, with the normal velocity v_{j+1/2},

    F_{j+1/2} = v+ rho^L_{j+1/2} + v- rho^R_{j+1/2} - tau (rho_{j+1} - rho_j) / h_a,

v+ = max(v, 0), v- = min(v, 0); the wall faces carry F = 0, and
d rho_j / ds = -sum_a (F_{j+1/2} - F_{j-1/2}) / h_a. The face states are

* ``upwind``: rho^L = rho_j, rho^R = rho_{j+1} (first order);
* ``muscl``: rho^L = rho_j + sigma_j / 2, rho^R = rho_{j+1} - sigma_{j+1} / 2
  with the limited slope sigma_j = phi(rho_j - rho_{j-1}, rho_{j+1} - rho_j),
  ``minmod`` phi(a, b) = minmod(a, b) or ``vanleer`` phi(a, b) = 2ab / (a + b)
  for ab > 0 (else 0); sigma = 0 in the first and last cell of every axis
  (second order in the interior, first order next to the walls, where a
  well-sized box has no mass). Both limited states lie in [0, 2 rho_j].

Mass: the update is in flux form, so every slice's mass changes only by
round-off (the interior fluxes cancel in pairs, the wall fluxes are 0).

**Time stepping and positivity.** One step of ``integrate`` (h = train.dt)
is a sequence of substeps (a ``lax.while_loop``) that lands exactly on the
step's end, hence on every record and snapshot time. A substep from state u
is one of the SSP Runge-Kutta methods (``euler``, ``heun`` = SSP-RK2,
``ssprk3`` = SSP-RK3 of Shu and Osher), every stage a forward-Euler step
with the velocity of its own stage. Its size is

    dt = remaining / ceil(remaining R(u) / cfl),
    R(u) = max_cells [ sum_a (max(v_{j+1/2}, 0) + max(-v_{j-1/2}, 0)) / h_a
                       + 2 tau sum_a 1 / h_a^2 ],

R the largest rate at which any cell can lose mass (advective outflow through
its faces plus the diffusive bound). A forward-Euler step keeps rho >= 0 when
dt R <= c_max, with c_max = 1 (upwind), 2/3 (MUSCL-minmod) and 1/2
(MUSCL-van Leer): the limited face states lie in [0, c rho_j] with c = 1,
3/2, 2, so the mass a cell loses in one step is at most dt c R rho_j. SSP
methods are convex combinations of such Euler stages, so they keep rho >= 0
when every stage satisfies the bound with its own velocity; a substep whose
stages violate it (the velocity changes within the substep) is rejected and
repeated with the larger rate. So rho >= 0 at every accepted substep for
every scheme x stepper and any 0 < cfl <= c_max (up to round-off of size
1e-16 rho when dt R equals c_max exactly). The same bounds make the Euler
stages total-variation diminishing in 1-D, which is why they are also the
stability limits (``positivity_limit``); ``cfl`` above them is refused.

What can go wrong: mass reaching the walls (the box is too small; recorded
as ``wall_mass`` and warned about by the CLI above 1e-3); very large
velocities in far corners of the box (neuron features: grad_w V grows like
|u|) make the substeps small; non-finite values stop the run as "diverged".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._data import DataError, load_array_file
from ._flow import METHODS, Flow, Measure, finite
from ._schema import ConfigError, fmt

SCHEMES = ("upwind", "muscl")
LIMITERS = ("minmod", "vanleer")
GRID_METHODS = ("euler", "heun", "ssprk3")
DEFAULT_CFL = 0.4          # below every scheme's limit (1, 2/3, 1/2): safe by default
WALL_MASS_WARNING = 1e-3   # the CLI warns once when wall_mass exceeds this
MIN_BOX_MASS = 0.9         # the box must hold this much of a gaussian / uniform rho_ini
MAX_SUBSTEPS = 2**20       # per step of integrate: beyond this the velocity is effectively infinite
MAX_K = 3


def positivity_limit(scheme: str, limiter: str | None = None) -> float:
    """Largest cfl for which every SSP stage keeps rho >= 0 (module docstring)."""
    if scheme == "upwind":
        return 1.0
    limits = {"minmod": 2.0 / 3.0, "vanleer": 0.5}
    if scheme != "muscl" or limiter not in limits:
        raise ValueError(f"no positivity limit for scheme = {scheme!r} with limiter = "
                         f"{limiter!r}: schemes are {', '.join(SCHEMES)}, MUSCL limiters "
                         f"{', '.join(LIMITERS)}")
    return limits[limiter]


# ----------------------------------------------------------------------------- geometry


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


@dataclass(frozen=True)
class FiniteVolume:
    """The finite-volume scheme (``[solver.grid]`` scheme, limiter, cfl); static.

    ``scheme``: "upwind" (first order) or "muscl" (second order with ``limiter``
    "minmod" or "vanleer"; ``limiter`` is None for upwind). ``cfl``: the
    substep is dt = cfl / R (module docstring); 0 < cfl <= ``limit`` =
    ``positivity_limit(scheme, limiter)`` (1, 2/3, 1/2), default 0.4.
    """

    scheme: str = "muscl"
    limiter: str | None = "vanleer"
    cfl: float = DEFAULT_CFL

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"solver.grid.scheme = {self.scheme!r}: allowed are "
                             f"{', '.join(SCHEMES)}")
        if self.scheme == "upwind":
            object.__setattr__(self, "limiter", None)
        elif self.limiter not in LIMITERS:
            raise ValueError(f"solver.grid.limiter = {self.limiter!r}: allowed are "
                             f"{', '.join(LIMITERS)}")
        limit = self.limit
        if not (isinstance(self.cfl, (int, float)) and 0 < self.cfl <= limit):
            raise ValueError(f"solver.grid.cfl = {self.cfl!r}: must be in (0, {limit:.4g}] for "
                             f"{self.describe()} (its positivity / stability limit)")

    @property
    def limit(self) -> float:
        return positivity_limit(self.scheme, self.limiter)

    def describe(self) -> str:
        return "upwind" if self.scheme == "upwind" else f"muscl with the {self.limiter} limiter"


# ----------------------------------------------------------------------------- the numerics


def _limited_slope(dm: jax.Array, dp: jax.Array, limiter: str) -> jax.Array:
    """phi(rho_j - rho_{j-1}, rho_{j+1} - rho_j): minmod or van Leer (0 at extrema)."""
    if limiter == "minmod":
        return 0.5 * (jnp.sign(dm) + jnp.sign(dp)) * jnp.minimum(jnp.abs(dm), jnp.abs(dp))
    prod = dm * dp
    safe = jnp.where(prod > 0, dm + dp, 1.0)
    return jnp.where(prod > 0, 2.0 * prod / safe, 0.0)


def _face_fluxes(rho: jax.Array, v: jax.Array, axis: int, h: float, fv: FiniteVolume,
                 tau: float) -> jax.Array:
    """F at the n - 1 interior faces along array axis ``axis`` (module docstring)."""
    n = rho.shape[axis]

    def part(x, start, stop):
        return lax.slice_in_dim(x, start, stop, axis=axis)

    left, right = part(rho, 0, n - 1), part(rho, 1, n)
    if fv.scheme == "muscl":
        d = right - left  # rho_{j+1} - rho_j at the interior faces
        inner = _limited_slope(part(d, 0, n - 2), part(d, 1, n - 1), fv.limiter)
        zero = jnp.zeros_like(part(rho, 0, 1))
        slope = jnp.concatenate([zero, inner, zero], axis=axis)
        # max(., 0) only removes round-off: the limited states lie in [0, 2 rho_j] exactly
        left = jnp.maximum(left + 0.5 * part(slope, 0, n - 1), 0.0)
        right = jnp.maximum(right - 0.5 * part(slope, 1, n), 0.0)
        flux = jnp.maximum(v, 0.0) * left + jnp.minimum(v, 0.0) * right
        if tau > 0:
            flux = flux - (tau / h) * d
        return flux
    flux = jnp.maximum(v, 0.0) * left + jnp.minimum(v, 0.0) * right
    if tau > 0:
        flux = flux - (tau / h) * (right - left)
    return flux


def _pad_walls(x: jax.Array, axis: int) -> jax.Array:
    """Interior-face array -> all faces, with 0 on both walls."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    return jnp.pad(x, pad)


def tendency(grid: Grid, fv: FiniteVolume, tau: float, rho: jax.Array, velocities) -> jax.Array:
    """d rho / ds = -sum_a (F_{j+1/2} - F_{j-1/2}) / h_a for rho (n_t, *cells).

    ``velocities``: per axis a, the normal velocity at the interior faces,
    (n_t, *grid.face_shape(a)). Zero flux through the walls.
    """
    out = jnp.zeros_like(rho)
    for a, (v, h) in enumerate(zip(velocities, grid.widths)):
        flux = _pad_walls(_face_fluxes(rho, v, a + 1, h, fv, tau), a + 1)
        out = out - jnp.diff(flux, axis=a + 1) / h
    return out


def max_rate(grid: Grid, tau: float, velocities) -> jax.Array:
    """R = max over cells of sum_a (v+ out of the upper face + v- out of the lower face) / h_a,
    plus the diffusion bound 2 tau sum_a 1 / h_a^2 (module docstring)."""
    rate = 0.0
    for a, (v, h) in enumerate(zip(velocities, grid.widths)):
        out_up = _pad_walls(jnp.maximum(v, 0.0), a + 1)
        out_down = _pad_walls(jnp.maximum(-v, 0.0), a + 1)
        n = out_up.shape[a + 1]
        rate = rate + (lax.slice_in_dim(out_up, 1, n, axis=a + 1)
                       + lax.slice_in_dim(out_down, 0, n - 1, axis=a + 1)) / h
    diffusion = 2.0 * tau * sum(1.0 / h ** 2 for h in grid.widths)
    return jnp.max(rate) + diffusion


# ----------------------------------------------------------------------------- the flow


def _as_particles(grid: Grid, rho: jax.Array):
    """A cell is a particle at its centre with weight rho_c |C|: (Theta (n_t, C, k), w (n_t, C))."""
    n_t = rho.shape[0]
    centres = grid.centres(rho.dtype)
    Theta = jnp.broadcast_to(centres, (n_t,) + centres.shape)
    return Theta, rho.reshape(n_t, -1) * jnp.asarray(grid.volume, rho.dtype)


class GridFlow(Flow):
    """The finite-volume gradient flow of a ``GridDensity`` (module docstring).

    ``step(method, density, key, n, h)`` advances s = n h -> (n + 1) h by
    CFL-limited SSP substeps; methods "euler", "heun" (SSP-RK2), "ssprk3";
    "adaptive" is refused (the substeps already adapt to the velocity).
    Deterministic: the PRNG key is passed through unchanged (temperature is
    the diffusion term tau Laplace rho).
    History: loss, stationarity = sum_l w_l sum_c rho_c |C| |grad V_l(theta_c)|^2,
    wall_mass = max over slices of the mass in the cells touching the walls.
    """

    measure_history_names: ClassVar[tuple[str, ...]] = ("loss", "stationarity", "wall_mass")
    snapshot_name: ClassVar[str] = "rho"

    def check(self, density, method):
        if not isinstance(density, GridDensity):
            raise TypeError(f"GridFlow moves a GridDensity, got {type(density).__name__}")
        if method not in METHODS:
            raise ValueError(f"train.method = {method!r}: allowed are {', '.join(METHODS)}")
        if method not in GRID_METHODS:
            raise ValueError(f"train.method = {method!r}: the grid solver takes CFL-limited SSP "
                             f"Runge-Kutta substeps; allowed are {', '.join(GRID_METHODS)}")
        k = self.problem.feature.k
        if density.grid.k != k:
            raise ValueError(f"the grid has k = {density.grid.k} axes but the model has "
                             f"k = {k} parameters per particle")

    # -- the measure as weighted particles (the one physics kernel)

    def weighted(self, density):
        """Cell centres broadcast to (n_t, C, k) and weights rho_c |C| (n_t, C)."""
        return _as_particles(density.grid, density.rho)

    def velocity_at(self, density, query, s=0.0):
        """(loss, v) with v = -grad_theta V_l(q) - lambda(s) q at query points (Q, k) or
        (n_t, Q, k) -> v (n_t, Q, k): the velocity field the density is moved by."""
        Theta, w = self.weighted(density)
        query = jnp.asarray(query, density.rho.dtype)
        loss, G = self.depth.first_variation_gradient(self.problem, Theta, query, w)
        v = -G
        if self.regularization.l2 > 0:
            v = v - self._l2(s, density.rho.dtype) * query
        return loss, v

    def _l2(self, s, dtype):
        return self.regularization.l2_at(jnp.asarray(s, dtype)).astype(dtype)

    def face_velocities(self, grid: Grid, rho: jax.Array, s):
        """(loss, (v_0, .., v_{k-1})): the normal velocity at the interior faces of each axis,
        v_a (n_t, *grid.face_shape(a)), from one first_variation_gradient call."""
        points = [grid.face_points(a, rho.dtype) for a in range(grid.k)]
        Theta, w = _as_particles(grid, rho)
        loss, G = self.depth.first_variation_gradient(self.problem, Theta,
                                                      jnp.concatenate(points, axis=0), w)
        n_t = rho.shape[0]
        out, start = [], 0
        for a, pts in enumerate(points):
            count = pts.shape[0]
            v = -G[:, start:start + count, a]
            if self.regularization.l2 > 0:
                v = v - self._l2(s, rho.dtype) * pts[:, a]
            out.append(v.reshape((n_t,) + grid.face_shape(a)))
            start += count
        return loss, tuple(out)

    # -- one substep and one step

    def substep(self, method: str, grid: Grid, fv: FiniteVolume, rho, s, dt, first):
        """One SSP Runge-Kutta substep of size dt from rho at s, given ``first`` = (loss,
        velocities) at (rho, s). Returns (new rho, largest stage rate, ok)."""
        tau = self.regularization.temperature
        loss0, v0 = first

        def euler(u, v):
            return u + dt * tendency(grid, fv, tau, u, v)

        u1 = euler(rho, v0)
        if method == "euler":
            return u1, max_rate(grid, tau, v0), finite(loss0, u1)
        loss1, v1 = self.face_velocities(grid, u1, s + dt)
        rates = jnp.maximum(max_rate(grid, tau, v0), max_rate(grid, tau, v1))
        if method == "heun":
            new = 0.5 * rho + 0.5 * euler(u1, v1)
            return new, rates, finite(loss0, loss1, new)
        u2 = 0.75 * rho + 0.25 * euler(u1, v1)
        loss2, v2 = self.face_velocities(grid, u2, s + 0.5 * dt)
        rates = jnp.maximum(rates, max_rate(grid, tau, v2))
        # = rho / 3 + (2/3) euler(u2): written as an increment so that the inexact 1/3, 2/3
        # add no systematic round-off to the mass
        new = rho + (2.0 / 3.0) * (euler(u2, v2) - rho)
        return new, rates, finite(loss0, loss1, loss2, new)

    def march(self, method: str, density, s0, h):
        """From s0 to s0 + h by CFL-limited substeps landing exactly on s0 + h.

        Returns (density, substeps taken, substeps rejected, ok). A substep whose
        stages exceed the positivity limit (module docstring) is redone with the
        larger rate; ok is False on non-finite values or after MAX_SUBSTEPS.
        """
        grid, fv = density.grid, density.fv
        dtype = density.rho.dtype
        cfl = jnp.asarray(fv.cfl, dtype)
        limit = jnp.asarray(fv.limit, dtype)
        tau = self.regularization.temperature
        h = jnp.asarray(h, dtype)

        def body(carry):
            rho, remaining, floor, taken, rejected, _ = carry
            s = s0 + (h - remaining)
            first = self.face_velocities(grid, rho, s)
            rate = jnp.maximum(max_rate(grid, tau, first[1]), floor)
            pieces = jnp.maximum(jnp.ceil(remaining * rate / cfl), 1.0)
            dt = remaining / pieces
            new, stage_rate, ok = self.substep(method, grid, fv, rho, s, dt, first)
            ok = ok & jnp.isfinite(rate)
            accept = ok & (dt * stage_rate <= limit)
            rho = jnp.where(accept, new, rho)
            remaining = jnp.where(accept, jnp.where(pieces <= 1.0, 0.0, remaining - dt), remaining)
            floor = jnp.where(accept, 0.0, stage_rate).astype(dtype)
            return (rho, remaining, floor, taken + accept, rejected + (ok & ~accept),
                    ok & (taken + rejected < MAX_SUBSTEPS))

        def cond(carry):
            _, remaining, _, _, _, ok = carry
            return ok & (remaining > 0)

        zero = jnp.zeros((), dtype)
        init = (density.rho, h, zero, jnp.int32(0), jnp.int32(0), jnp.bool_(True))
        rho, remaining, _, taken, rejected, ok = lax.while_loop(cond, body, init)
        return eqx.tree_at(lambda d: d.rho, density, rho), taken, rejected, ok & (remaining == 0)

    def step(self, method, density, key, n, h):
        new, _, _, ok = self.march(method, density, n * h, h)
        return new, key, ok

    # -- what the loop records

    def diagnostics(self, density, s):
        grid, rho = density.grid, density.rho
        Theta, w = self.weighted(density)
        loss, G = self.depth.first_variation_gradient(self.problem, Theta,
                                                      grid.centres(rho.dtype), w)
        depth_w = self.depth.weights(rho.shape[0], rho.dtype)
        stationarity = jnp.sum(depth_w * jnp.sum(w * jnp.sum(G * G, axis=2), axis=1))
        return {"loss": loss, "stationarity": stationarity, "wall_mass": wall_mass(density),
                **self.data_diagnostics(density)}

    def snapshot(self, density) -> np.ndarray:
        return np.asarray(density.rho)

    def restore(self, like, array):
        return eqx.tree_at(lambda d: d.rho, like, jnp.asarray(array, like.rho.dtype))


def wall_mass(density) -> jax.Array:
    """max over slices of sum over the wall cells of rho_c |C| (a fraction: slices have unit mass)."""
    grid, rho = density.grid, density.rho
    mask = jnp.asarray(grid.wall_mask())
    per_slice = jnp.sum(jnp.where(mask, rho, 0.0).reshape(rho.shape[0], -1), axis=1)
    return jnp.max(per_slice) * jnp.asarray(grid.volume, rho.dtype)


class GridDensity(Measure):
    """A density on a ``Grid``: cell averages rho (n_t, *grid.cells), unit mass per slice.

    ``fv`` is the finite-volume scheme that moves it (``FiniteVolume``). Pass it
    as ``theta0`` to ``integrate``; ``make_flow`` gives its ``GridFlow``.
    """

    grid: Grid = eqx.field(static=True)
    rho: jax.Array
    fv: FiniteVolume = eqx.field(static=True, default=FiniteVolume())

    flow_type: ClassVar[type[Flow]] = GridFlow

    def __check_init__(self):
        shape = tuple(self.rho.shape)
        if len(shape) != 1 + self.grid.k or shape[1:] != self.grid.cells:
            raise ValueError(f"rho has shape {shape}: must be (n_t, *cells) = "
                             f"(n_t, {', '.join(map(str, self.grid.cells))})")

    @property
    def n_t(self) -> int:
        return self.rho.shape[0]

    def mass(self) -> jax.Array:
        """sum_c rho_c |C| per slice, (n_t,)."""
        return jnp.sum(self.rho.reshape(self.n_t, -1), axis=1) * self.grid.volume


# ----------------------------------------------------------------------------- initial densities


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


def _per_coord(value, k: int, key: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full((k,), float(arr))
    if arr.shape != (k,):
        raise DataError(f"{key} = {fmt(arr.tolist())}: give a scalar or a list of k = {k} values")
    return arr


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
        mean_ = _per_coord(mean, k, "init.mean")
        std_ = _per_coord(std, k, "init.std")
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
            lo = mean_ - np.sqrt(3.0) * std_ if low is None else _per_coord(low, k, "init.low")
            hi = mean_ + np.sqrt(3.0) * std_ if high is None else _per_coord(high, k, "init.high")
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


# ----------------------------------------------------------------------------- config rules


def resolve_grid_config(solver: dict, init: dict, train: dict, *, k: int, given_solver: set,
                        given_grid: set) -> None:
    """The grid's config rules, called by ``_config`` for solver.kind = "grid" (in place).

    Fills [solver.grid] (cells, bounds as one entry per axis; limiter None for
    upwind), sets solver.M = None (unused) and raises ``ConfigError`` for:
    k > 3, solver.M given, cells / bounds lists of the wrong length, an unknown
    limiter or a limiter with the upwind scheme, cfl above the scheme's limit,
    a point init outside the box, train.method = "adaptive".
    """
    if k > MAX_K:
        raise ConfigError(f'solver.kind = "grid": the grid solver needs k <= {MAX_K} parameters '
                          f"per particle, this model has k = {k} (k = 2d+1 for neuron with bias, "
                          "2d without, d^2 for linear)")
    if "M" in given_solver:
        raise ConfigError(f"solver.M = {solver['M']}: not used by the grid solver (solver.kind = "
                          '"grid" has solver.L depth slices and solver.grid.cells cells); remove it')
    solver["M"] = None
    grid = solver["grid"]
    cells = grid["cells"]
    if isinstance(cells, list) and len(cells) != k:
        raise ConfigError(f"solver.grid.cells = {fmt(cells)}: give one integer or a list of "
                          f"k = {k} (one per axis)")
    grid["cells"] = [cells] * k if isinstance(cells, int) else cells
    bounds = grid["bounds"]
    if isinstance(bounds[0], list):
        if len(bounds) != k:
            raise ConfigError(f"solver.grid.bounds = {fmt(bounds)}: give one [low, high] pair or "
                              f"a list of k = {k} pairs (one per axis)")
    else:
        bounds = [list(bounds) for _ in range(k)]
    grid["bounds"] = bounds
    if grid["scheme"] == "upwind":
        if "limiter" in given_grid:
            raise ConfigError(f"solver.grid.limiter = {fmt(grid['limiter'])}: only used with "
                              'solver.grid.scheme = "muscl" (the scheme is "upwind")')
        grid["limiter"] = None
    try:
        FiniteVolume(grid["scheme"], grid["limiter"], grid["cfl"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if train["method"] not in GRID_METHODS:
        raise ConfigError(f"train.method = {fmt(train['method'])}: the grid solver takes "
                          "CFL-limited SSP Runge-Kutta substeps; allowed are "
                          + ", ".join(f'"{m}"' for m in GRID_METHODS))
    if init["kind"] == "point":
        box = Grid.box(grid["cells"], bounds, k)
        try:
            box.cell_of(_per_coord(init["mean"], k, "init.mean"))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def grid_config_warnings(config: dict) -> list[str]:
    """One-line warnings about valid but questionable grid settings (``config_warnings``)."""
    solver, init = config["solver"], config["init"]
    if solver["kind"] != "grid" or init["kind"] != "point":
        return []
    g = solver["grid"]
    k = len(g["cells"])
    grid = Grid.box(g["cells"], g["bounds"], k)
    mean = _per_coord(init["mean"], k, "init.mean")
    centre = np.array([grid.axes[a][i] for a, i in enumerate(grid.cell_of(mean))])
    if np.all(np.abs(centre - mean) <= 1e-12 * np.asarray(grid.widths)):
        return []
    return [(f"init.mean = {fmt(init['mean'])} is not a cell centre: the point mass sits in the "
            f"cell centred at {fmt([float(c) for c in centre])}; choose solver.grid.cells and "
            "bounds with a centre there (e.g. an odd number of cells in a box symmetric about it)")]


def wall_mass_warning(values: dict, s: float) -> str | None:
    """The CLI's one-line warning when a record's wall_mass exceeds WALL_MASS_WARNING, else None."""
    wall = values.get("wall_mass")
    if wall is None or not wall > WALL_MASS_WARNING:
        return None
    return (f"wall_mass = {wall:.3g} at s = {s:.6g} exceeds {WALL_MASS_WARNING:g}: mass is "
            "reaching the walls of the grid box (zero-flux walls hold it back, which changes the "
            "flow); widen solver.grid.bounds")


def grid_arrays(grid: Grid, times) -> dict:
    """The fixed arrays a grid run file stores: /grid/t (depth time of each slice) and
    /grid/axis_a (cell centres per axis)."""
    out = {"grid/t": np.asarray(times, dtype=np.float64)}
    for a, axis in enumerate(grid.axes):
        out[f"grid/axis_{a}"] = axis
    return out
