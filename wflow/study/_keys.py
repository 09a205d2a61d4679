"""The ``[study]`` section: defaults and cross-key rules of the two study verbs.

The keys are declared (typed, with ``None`` defaults) in ``_config.SCHEMA["study"]``;
``load_config`` checks each key on its own. ``resolve_limit`` / ``resolve_zero_loss``
fill in the defaults and check what depends on other keys, raising ``ConfigError``
with one line (exit code 2 in the CLI). The resolved section is what the
study file stores.

The keys, their defaults and what they do: docs/config-reference.md, "[study]" (generated
from ``SCHEMA["study"]``, where the defaults these functions fill in are shown).
"""

from __future__ import annotations

import math

import numpy as np

from .._config import SCHEMA
from .._schema import ConfigError, check_table, fmt
from ._metrics import STUDY_METRICS

__all__ = ["LIMIT_KEYS", "ZERO_LOSS_KEYS", "resolve_limit", "resolve_zero_loss", "time_steps"]

LIMIT_KEYS = ("L", "M", "dims", "seeds", "times", "metrics", "sampling", "reference",
              "reference_M", "reference_L", "reference_dim", "reference_depth", "bootstrap",
              "memory", "grid", "sinkhorn_epsilon")
ZERO_LOSS_KEYS = ("inits", "box", "box_points", "tail_radius")
_REFERENCE_KEYS = ("reference_M", "reference_L", "reference_dim", "reference_depth")


def _section(config: dict) -> dict:
    if "study" in config:
        return dict(config["study"])
    return check_table("study", {}, SCHEMA["study"], {})[0]


def _reject(study: dict, keys, verb: str) -> None:
    for name in keys:
        if study.get(name) is not None:
            raise ConfigError(f"study.{name} = {fmt(study[name])}: not used by wflow study {verb}")


def _common(config: dict, verb: str) -> None:
    if config["solver"]["kind"] != "particles":
        raise ConfigError(f"solver.kind = {fmt(config['solver']['kind'])}: wflow study {verb} "
                          'trains particles (solver.kind = "particles")')
    if config["init"]["kind"] == "file":
        raise ConfigError('init.kind = "file": a study draws its own initial particles; use '
                          '"gaussian", "uniform" or "point"')


def time_steps(times, dt: float, key: str = "study.times") -> list[int]:
    """Step indices n_j = t_j / dt, checking that every time is a multiple of dt."""
    steps = []
    for t in times:
        n = t / dt
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ConfigError(f"{key} = {fmt(list(times))}: {t!r} is not a multiple of train.dt = "
                              f"{dt!r} (errors are taken after whole steps)")
        steps.append(round(n))
    return steps


def resolve_limit(config: dict) -> dict:
    """The [study] section of ``wflow study limit`` with every default filled in (module docstring)."""
    _common(config, "limit")
    study = _section(config)
    _reject(study, ZERO_LOSS_KEYS, "limit")
    solver, train, model, init = (config[s] for s in ("solver", "train", "model", "init"))
    out = {}
    out["L"] = sorted(study["L"] or [solver["L"]])
    out["M"] = sorted(study["M"] or [solver["M"]])
    dims = study["dims"]
    out["dims"] = sorted(dims) if dims is not None else None
    if dims is not None:
        for name in ("mean", "std", "low", "high"):
            if isinstance(init[name], list):
                raise ConfigError(f"init.{name} = {fmt(init[name])}: with study.dims the number of "
                                  "parameters k changes with D; give a scalar")
        if model["embedding"] == "pad" and min(dims) < config["data"]["dim"]:
            raise ConfigError(f"study.dims = {fmt(dims)}: with model.embedding = \"pad\" every D "
                              f"must be >= d_in = {config['data']['dim']}")
        if model["readout"] == "coordinates" and min(dims) < config["data"]["out_dim"]:
            raise ConfigError(f"study.dims = {fmt(dims)}: with model.readout = \"coordinates\" "
                              f"every D must be >= d_out = {config['data']['out_dim']}")
        from .._model import feature_from_config

        small = feature_from_config(model, dim=min(dims), tokens=config["data"].get("tokens"))
        try:
            small.lift(np.zeros((1, small.k)), max(dims))
        except NotImplementedError as e:
            raise ConfigError(f"study.dims = {fmt(dims)}: {e}; sweep one state dimension "
                              "(leave study.dims out) or define lift in the block") from None
    out["seeds"] = study["seeds"] if study["seeds"] is not None else 5
    times = study["times"]
    if times is None:
        times = [train["time"]]
    elif not isinstance(times, list):
        times = [times]
    if len(set(times)) != len(times):
        raise ConfigError(f"study.times = {fmt(times)}: the times must be distinct")
    times = sorted(float(t) for t in times)
    time_steps(times, train["dt"])
    out["times"] = times
    out["metrics"] = study["metrics"] or list(STUDY_METRICS)
    out["sampling"] = study["sampling"] or "iid"
    out.update(_reference_keys(config, study, out))
    out["bootstrap"] = study["bootstrap"] if study["bootstrap"] is not None else 200
    out["memory"] = study["memory"] if study["memory"] is not None else 4.0
    out["sinkhorn_epsilon"] = (study["sinkhorn_epsilon"] if study["sinkhorn_epsilon"] is not None
                               else default_sinkhorn_epsilon(config, out["dims"]))
    return out


def default_sinkhorn_epsilon(config: dict, dims) -> float:
    """0.05 x E|theta - theta'|^2 for two independent draws of the initial law (init.kind,
    mean, std, low, high), = 0.05 x 2 sum_j Var(theta_j) over the k parameters (k of the
    largest swept D); 0.05 x 2k for a point measure (no spread to scale by)."""
    from .._init_particles import per_coord
    from .._model import feature_from_config
    from ._metrics.sinkhorn import DEFAULT_RELATIVE_EPSILON

    init = config["init"]
    model = config["model"]
    k = feature_from_config(model, dim=max(dims) if dims else model["dim"],
                            tokens=config["data"].get("tokens")).k
    std = per_coord(init["std"], k, "init.std")
    if init["kind"] == "uniform":
        mean = per_coord(init["mean"], k, "init.mean")
        lo = mean - math.sqrt(3.0) * std if init["low"] is None else per_coord(init["low"], k, "init.low")
        hi = mean + math.sqrt(3.0) * std if init["high"] is None else per_coord(init["high"], k, "init.high")
        var = (hi - lo) ** 2 / 12.0
    elif init["kind"] == "gaussian":
        var = std ** 2
    else:
        var = np.full(k, 0.5)
    return float(DEFAULT_RELATIVE_EPSILON * 2.0 * np.sum(var))


def _reference_keys(config: dict, study: dict, sweep: dict) -> dict:
    """The resolved reference keys of ``wflow study limit`` (``sweep``: the resolved L, M and
    metrics): reference, and reference_M, reference_L, reference_dim, reference_depth or grid
    as the reference takes them."""
    dims = study["dims"]
    reference = study["reference"] or "continuous"
    out = {"reference": reference}
    if reference == "grid":
        out.update(_grid_reference(config, study, dims))
    elif study.get("grid") is not None:
        raise ConfigError(f"study.grid = {fmt(study['grid'])}: only used with study.reference = "
                          f'"grid" (study.reference is {fmt(reference)})')
    elif reference != "particles":
        for name in _REFERENCE_KEYS:
            if study[name] is not None:
                raise ConfigError(f"study.{name} = {fmt(study[name])}: only used with "
                                  f'study.reference = "particles" (study.reference is '
                                  f"{fmt(reference)})")
            out[name] = None
    else:
        out["reference_M"] = study["reference_M"] or 4 * max(sweep["M"])
        out["reference_L"] = study["reference_L"] or max(sweep["L"])
        if study["reference_dim"] is not None and dims is None:
            raise ConfigError(f"study.reference_dim = {study['reference_dim']}: only used with "
                              "study.dims (the reference has the state dimension model.dim)")
        out["reference_dim"] = (study["reference_dim"] or max(dims)) if dims is not None else None
        out["reference_depth"] = study["reference_depth"] or "continuous"
    if out["reference"] == "continuous" and config["solver"]["depth"] == "continuous":
        raise ConfigError('solver.depth = "continuous": with study.reference = "continuous" the '
                          'finite networks must be layered (solver.depth = "layers")')
    reads_state = [m for m in sweep["metrics"] if "state" in STUDY_METRICS[m].needs]
    if (reads_state and dims is not None and out["reference"] == "particles"
            and out["reference_dim"] < max(dims)):
        raise ConfigError(f"study.reference_dim = {out['reference_dim']}: the {reads_state[0]} "
                          "metric compares the first D coordinates of the states; it must be "
                          f">= max(dims) = {max(dims)}")
    return out


def resolve_zero_loss(config: dict) -> dict:
    """The [study] section of ``wflow study zero-loss`` with every default filled in."""
    _common(config, "zero-loss")
    study = _section(config)
    _reject(study, LIMIT_KEYS, "zero-loss")
    out = {"inits": study["inits"] or ["point", "gaussian"]}
    out["box"] = study["box"] if study["box"] is not None else 3.0
    out["box_points"] = study["box_points"] if study["box_points"] is not None else 2048
    out["tail_radius"] = study["tail_radius"] if study["tail_radius"] is not None else out["box"]
    if not math.isfinite(out["box"]):
        raise ConfigError(f"study.box = {fmt(out['box'])}: must be a finite number > 0")
    return out


def _grid_reference(config: dict, study: dict, dims) -> dict:
    """The resolved keys of ``study.reference = "grid"``: reference_L, reference_depth, grid.

    The reference is the grid solver (``wflow._grid``) on the [study.grid] box, started from
    init's density (exact cell averages), with ``reference_L`` depth slices in
    ``reference_depth``, trained by train.method / train.dt. Raises ConfigError for k > 3, a
    missing or invalid [study.grid], study.dims, the particle-only reference keys and a
    train.method the grid cannot take.
    """
    from .._grid import GRID_METHODS, MAX_K, FiniteVolume, Grid, init_density
    from .._model import feature_from_config

    model, init, train = config["model"], config["init"], config["train"]
    if dims is not None:
        raise ConfigError(f"study.dims = {fmt(dims)}: not used with study.reference = \"grid\" "
                          "(the grid reference has the state dimension model.dim, k <= "
                          f"{MAX_K})")
    for name in ("reference_M", "reference_dim"):
        if study[name] is not None:
            raise ConfigError(f"study.{name} = {fmt(study[name])}: only used with "
                              'study.reference = "particles" (the grid reference is sized by '
                              "[study.grid] and has the state dimension model.dim)")
    k = feature_from_config(model, tokens=config["data"].get("tokens")).k
    if k > MAX_K:
        raise ConfigError(f'study.reference = "grid": the grid solver needs k <= {MAX_K} '
                          f"parameters per particle, this model has k = {k} (k = d^2 for "
                          "linear, 2d + 1 for neuron with bias, 2d without)")
    if study.get("grid") is None:
        raise ConfigError('study.reference = "grid": needs a [study.grid] section (cells, bounds '
                          "and optionally scheme, limiter, cfl, as in [solver.grid]) giving the "
                          "theta-box of the reference")
    if train["method"] not in GRID_METHODS:
        raise ConfigError(f"train.method = {fmt(train['method'])}: the grid reference takes "
                          "CFL-limited SSP Runge-Kutta substeps; allowed with study.reference = "
                          '"grid" are ' + ", ".join(f'"{m}"' for m in GRID_METHODS))
    g = dict(study["grid"])

    def bad(e: Exception) -> ConfigError:
        return ConfigError(str(e).splitlines()[0].replace("solver.grid", "study.grid"))

    try:
        grid = Grid.box(g["cells"], g["bounds"], k)
        fv = FiniteVolume(g["scheme"], g["limiter"], g["cfl"])
        init_density(init["kind"], grid, 1, mean=init["mean"], std=init["std"], low=init["low"],
                     high=init["high"], dtype=np.float32, fv=fv)
    except (ValueError, TypeError) as e:  # DataError is a ValueError
        raise bad(e) from None
    resolved = {"cells": list(grid.cells), "bounds": [[lo, hi] for lo, hi in zip(grid.lo, grid.hi)],
                "scheme": fv.scheme, "limiter": fv.limiter, "cfl": fv.cfl}
    return {"reference_M": None, "reference_dim": None,
            "reference_L": study["reference_L"] or max(study["L"] or [config["solver"]["L"]]),
            "reference_depth": study["reference_depth"] or "continuous",
            "grid": {key: v for key, v in resolved.items() if v is not None}}
