"""The grid: the Eulerian finite-volume solver for the density rho(theta, t).

The mathematics: docs/theory.md, "Discretizations" (finite volumes on a grid).

The PDE, per depth slice l = 0..n_t-1 (``solver.L`` slices),

    d_s rho_l = -div_theta J_l,   J_l = rho_l v_l - tau grad_theta rho_l,
    v_l(theta, s) = -grad_theta V_l(theta) - lambda(s) theta,

on a uniform box grid in theta in R^k (k <= 3) with zero flux through the box
walls. rho is stored as cell averages (n_t, *cells), and every slice has unit
mass sum_c rho_c |C| = 1.

One concept per module:

* ``geometry.py``: the box of cells (``Grid``);
* ``finite_volume.py``: the scheme (``FiniteVolume``: upwind or MUSCL with a
  limiter from ``wflow._limiters.LIMITERS``), face fluxes, ``tendency``,
  the CFL rate ``max_rate`` and ``positivity_limit``;
* ``flow.py``: the density (``GridDensity``, a ``Measure``) and its solver step
  (``GridFlow``, a ``Flow``): CFL-limited substeps of the SSP steppers of
  ``wflow._steppers.STEPPERS`` (``GRID_METHODS``), ``wall_mass``;
* ``initial.py``: the initial densities (``init_density``);
* ``config.py``: the config rules (``resolve_grid_config``, called by
  ``_config``), warnings and the arrays a grid run file stores.
"""

from .config import (
    WALL_MASS_WARNING,
    grid_arrays,
    grid_config_warnings,
    resolve_grid_config,
    wall_mass_warning,
)
from .finite_volume import (
    DEFAULT_CFL,
    SCHEMES,
    UPWIND_LIMIT,
    FiniteVolume,
    max_rate,
    positivity_limit,
    tendency,
)
from .flow import GRID_METHODS, MAX_SUBSTEPS, GridDensity, GridFlow, wall_mass
from .geometry import MAX_K, Grid
from .initial import INIT_KINDS, MIN_BOX_MASS, init_density

__all__ = ["DEFAULT_CFL", "GRID_METHODS", "INIT_KINDS", "MAX_K", "MAX_SUBSTEPS", "MIN_BOX_MASS",
           "SCHEMES", "UPWIND_LIMIT", "WALL_MASS_WARNING", "FiniteVolume", "Grid", "GridDensity",
           "GridFlow", "grid_arrays", "grid_config_warnings", "init_density", "max_rate",
           "positivity_limit", "resolve_grid_config", "tendency", "wall_mass"]
