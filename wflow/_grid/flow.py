"""The grid's solver step: ``GridDensity`` (a ``Measure``) moved by ``GridFlow`` (a ``Flow``).

**One physics kernel.** A cell is a weighted particle at its centre theta_c
with weight omega_c = rho_c |C| (``GridFlow.weighted``), so the grid's
forward pass, adjoint and loss are the particles' code
(``DepthDiscretization.loss/evaluate/first_variation_gradient`` with
``weights``), for layered and continuous depth alike. The velocity at the
cell faces is ``first_variation_gradient`` at the face centres: one forward
and one reverse pass per Runge-Kutta stage; the scheme
(``finite_volume.tendency``) turns it into d rho / ds.

**Time stepping and positivity.** One step of ``integrate`` (h = train.dt)
is a sequence of substeps (a ``lax.while_loop``) that lands exactly on the
step's end, hence on every record and snapshot time. A substep from state u
is one step of an SSP Runge-Kutta method of the registry
``wflow._steppers.STEPPERS`` (``euler``, ``heun`` = SSP-RK2, ``ssprk3`` =
SSP-RK3 of Shu and Osher, ...; ``GRID_METHODS``: those with
``positivity_limit`` > 0), applied by its generic Shu-Osher ``apply``: every
stage a convex combination of forward-Euler steps of size dt beta_ij /
alpha_ij with the velocity of their own stage. Its size is

    dt = remaining / ceil(remaining R(u) / (C cfl)),

with R the largest outflow rate (``finite_volume.max_rate``) and C the
stepper's SSP coefficient (``positivity_limit``: 1 for euler, heun and
ssprk3). Every Euler term then has size <= dt / C, so it keeps rho >= 0 when
(dt / C) R <= c_max, the scheme's forward-Euler limit
(``finite_volume.positivity_limit``), and so does the convex combination. The
velocity changes within the substep: a substep whose stages violate
dt R_stage <= C c_max with their own rate is rejected and repeated with the
larger rate. So rho >= 0 at every accepted substep for every scheme x stepper
and any 0 < cfl <= c_max (up to round-off of size 1e-16 rho when the bound
holds with equality).

What can go wrong: mass reaching the walls (the box is too small; recorded
as ``wall_mass`` and warned about by the CLI above 1e-3); very large
velocities in far corners of the box (neuron features: grad_w V grows like
|u|) make the substeps small; non-finite values stop the run as "diverged".
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._flow import Flow, Measure, finite
from .._steppers import METHODS, STEPPERS, get_method
from .finite_volume import FiniteVolume, max_rate, tendency
from .geometry import Grid

# The train.method values the grid takes: SSP steppers (positivity_limit > 0).
GRID_METHODS = tuple(name for name in METHODS if get_method(name).positivity_limit > 0)
MAX_SUBSTEPS = 2**20       # per step of integrate: beyond this the velocity is effectively infinite


def _as_particles(grid: Grid, rho: jax.Array):
    """A cell is a particle at its centre with weight rho_c |C|: (Theta (n_t, C, k), w (n_t, C))."""
    n_t = rho.shape[0]
    centres = grid.centres(rho.dtype)
    Theta = jnp.broadcast_to(centres, (n_t,) + centres.shape)
    return Theta, rho.reshape(n_t, -1) * jnp.asarray(grid.volume, rho.dtype)


class GridFlow(Flow):
    """The finite-volume gradient flow of a ``GridDensity`` (module docstring).

    ``step(method, density, key, n, h)`` advances s = n h -> (n + 1) h by
    CFL-limited SSP substeps; methods: ``GRID_METHODS``, the steppers with
    ``positivity_limit`` > 0 ("euler", "heun" = SSP-RK2, "ssprk3", ...);
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
        if get_method(method).positivity_limit <= 0:
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
        velocities) at (rho, s). Returns (new rho, largest stage rate R, ok).

        The stepper's generic ``apply`` with the forward-Euler step
        u + dt_e (d rho / ds)(u) at the stage's own velocity; its stages are
        written as increments of rho (``wflow/_steppers/base.py``), so inexact
        weights such as 1/3, 2/3 add no systematic round-off to the mass.
        """
        stepper = STEPPERS[method]
        tau = self.regularization.temperature
        times = stepper.stage_times

        def euler(u, j, dt_e):
            loss, v = first if j == 0 else self.face_velocities(grid, u, s + times[j] * dt)
            return u + dt_e * tendency(grid, fv, tau, u, v), (loss, max_rate(grid, tau, v))

        new, infos = stepper.apply(euler, rho, dt)
        rates = jnp.max(jnp.stack([rate for _, rate in infos]))
        return new, rates, finite(*[loss for loss, _ in infos], new)

    def march(self, method: str, density, s0, h):
        """From s0 to s0 + h by CFL-limited substeps landing exactly on s0 + h.

        Returns (density, substeps taken, substeps rejected, ok). The substep is
        dt = remaining / ceil(remaining R / (C cfl)), C the stepper's SSP coefficient;
        one whose stages exceed the positivity limit, dt R_stage > C c_max (module
        docstring), is redone with the larger rate; ok is False on non-finite values
        or after MAX_SUBSTEPS.
        """
        grid, fv = density.grid, density.fv
        dtype = density.rho.dtype
        ssp = STEPPERS[method].positivity_limit  # Euler terms of size <= dt / ssp
        cfl = jnp.asarray(ssp * fv.cfl, dtype)
        limit = jnp.asarray(ssp * fv.limit, dtype)
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
