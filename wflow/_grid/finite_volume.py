"""The finite-volume scheme: face fluxes, the tendency d rho / ds and the CFL rate.

The PDE per depth slice, d_s rho_l = -div_theta J_l with J_l = rho_l v_l -
tau grad_theta rho_l (``wflow/_grid/__init__.py``), on a ``Grid`` with zero
flux through the box walls; rho is stored as cell averages (n_t, *cells).

**Fluxes** (dimension by dimension, unsplit). At the interior face j + 1/2
between cells j and j + 1 along axis a, with the normal velocity v_{j+1/2},

    F_{j+1/2} = v+ rho^L_{j+1/2} + v- rho^R_{j+1/2} - tau (rho_{j+1} - rho_j) / h_a,

v+ = max(v, 0), v- = min(v, 0); the wall faces carry F = 0, and
d rho_j / ds = -sum_a (F_{j+1/2} - F_{j-1/2}) / h_a (``tendency``). The face
states are

* ``upwind``: rho^L = rho_j, rho^R = rho_{j+1} (first order);
* ``muscl``: rho^L = rho_j + sigma_j / 2, rho^R = rho_{j+1} - sigma_{j+1} / 2
  with the limited slope sigma_j = phi(rho_j - rho_{j-1}, rho_{j+1} - rho_j)
  of the limiter ``solver.grid.limiter`` (the registry ``wflow._limiters.LIMITERS``:
  minmod, van Leer, ...); sigma = 0 in the first and last cell of every axis
  (second order in the interior, first order next to the walls, where a
  well-sized box has no mass).

Mass: the update is in flux form, so every slice's mass changes only by
round-off (the interior fluxes cancel in pairs, the wall fluxes are 0).

**Positivity.** With

    R(u) = max_cells [ sum_a (max(v_{j+1/2}, 0) + max(-v_{j-1/2}, 0)) / h_a
                       + 2 tau sum_a 1 / h_a^2 ]      (``max_rate``),

the largest rate at which any cell can lose mass (advective outflow through
its faces plus the diffusive bound), a forward-Euler step of size dt keeps
rho >= 0 when dt R <= c_max = ``positivity_limit(scheme, limiter)``: the face
states of cell j lie in [0, c rho_j] (c = 1 upwind; c = 1 + k/2 for a
limiter with |phi(a, b)| <= k min(|a|, |b|), ``wflow/_limiters/base.py``), so
the mass it loses in one step is at most dt c R rho_j, and c_max = 1 / c:
1 (upwind), 2/3 (minmod), 1/2 (van Leer). The same bounds make the Euler
step total-variation diminishing in 1-D, which is why they are also the
stability limits; ``cfl`` above them is refused. The SSP time steppers keep
the bound stage by stage (``flow.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from .._limiters import LIMITERS
from .geometry import Grid

SCHEMES = ("upwind", "muscl")
UPWIND_LIMIT = 1.0         # upwind's positivity limit: its face states are rho_j, c = 1
DEFAULT_CFL = 0.4          # below every scheme's limit (1, 2/3, 1/2): safe by default


def positivity_limit(scheme: str, limiter: str | None = None) -> float:
    """Largest cfl for which a forward-Euler step (hence every SSP stage) keeps rho >= 0:
    1 for upwind, the limiter's ``positivity_limit`` for MUSCL (module docstring)."""
    if scheme == "upwind":
        return UPWIND_LIMIT
    if scheme != "muscl" or limiter not in LIMITERS:
        raise ValueError(f"no positivity limit for scheme = {scheme!r} with limiter = "
                         f"{limiter!r}: schemes are {', '.join(SCHEMES)}, MUSCL limiters "
                         f"{', '.join(LIMITERS)}")
    return LIMITERS[limiter].positivity_limit


@dataclass(frozen=True)
class FiniteVolume:
    """The finite-volume scheme (``[solver.grid]`` scheme, limiter, cfl); static.

    ``scheme``: "upwind" (first order) or "muscl" (second order with ``limiter``,
    a name in ``LIMITERS``: "minmod", "vanleer", ...; ``limiter`` is None for
    upwind). ``cfl``: the fraction of the forward-Euler positivity bound a
    substep uses (dt = cfl C / R for a stepper with SSP coefficient C,
    ``flow.py``); 0 < cfl <= ``limit`` = ``positivity_limit(scheme, limiter)``
    (1 upwind, 2/3 minmod, 1/2 van Leer), default 0.4.
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


def _face_fluxes(rho: jax.Array, v: jax.Array, axis: int, h: float, fv: FiniteVolume,
                 tau: float) -> jax.Array:
    """F at the n - 1 interior faces along array axis ``axis`` (module docstring)."""
    n = rho.shape[axis]

    def part(x, start, stop):
        return lax.slice_in_dim(x, start, stop, axis=axis)

    left, right = part(rho, 0, n - 1), part(rho, 1, n)
    if fv.scheme == "muscl":
        d = right - left  # rho_{j+1} - rho_j at the interior faces
        inner = LIMITERS[fv.limiter].slope(part(d, 0, n - 2), part(d, 1, n - 1))
        zero = jnp.zeros_like(part(rho, 0, 1))
        slope = jnp.concatenate([zero, inner, zero], axis=axis)
        # max(., 0) only removes round-off: the limited states lie in [0, c rho_j] exactly
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
