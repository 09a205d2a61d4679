"""What the application layer needs from the grid: config rules, CLI warnings, run-file arrays.

``resolve_grid_config`` (called by ``_config`` for solver.kind = "grid") and
``grid_config_warnings`` check and complete ``[solver.grid]``;
``wall_mass_warning`` is the CLI's line when mass reaches the box walls;
``grid_arrays`` are the fixed arrays a grid run file stores.
"""

from __future__ import annotations

import numpy as np

from .._init_particles import per_coord
from .._schema import ConfigError, fmt
from .finite_volume import FiniteVolume
from .flow import GRID_METHODS
from .geometry import MAX_K, Grid

WALL_MASS_WARNING = 1e-3   # the CLI warns once when wall_mass exceeds this


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
            box.cell_of(per_coord(init["mean"], k, "init.mean"))
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
    mean = per_coord(init["mean"], k, "init.mean")
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
