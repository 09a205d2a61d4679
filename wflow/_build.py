"""From a resolved config to the library objects a run needs (``build_run``).

Reads the data and init files on the way and turns every failure into a
one-line ``ConfigError``; nothing here writes a file.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._data import DataError, make_dataset
from ._depth import ContinuousDepth, DepthDiscretization, LayeredDepth
from ._features import make_feature
from ._flow import Flow, Regularization, make_flow
from ._integrate import Schedule
from ._measures import init_particles
from ._problem import Problem
from ._schema import ConfigError, fmt

__all__ = ["RunSetup", "build_run", "check_start", "dtype_of"]


class RunSetup(NamedTuple):
    """The library objects a config describes (``build_run``)."""

    problem: Problem
    depth: DepthDiscretization
    schedule: Schedule
    regularization: Regularization
    measure0: Any  # particles Theta (L, M, k) in the run's precision, or a GridDensity
    key: jax.Array  # Langevin key fold_in(PRNGKey(seed), 2)
    arrays: dict  # fixed arrays the run file stores besides data and snapshots (grid axes)

    @property
    def flow(self) -> Flow:
        """The solver step that moves ``measure0`` (particles or grid)."""
        return make_flow(self.problem, self.depth, self.measure0, self.regularization)


def dtype_of(config: dict):
    """The run's floating dtype; enables JAX float64 when the config asks for it."""
    if config["solver"]["precision"] == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


def _culprit(config: dict, section: str) -> str:
    """The key that sets the magnitude of the data (section "data") or initial particles."""
    c = config[section]
    if section == "data":
        if c["kind"] == "file":
            return "data.path"
        if c["noise"] > 0 and c["kind"] in ("teacher", "sine", "circles"):
            return "data.noise"
        return "data.teacher_std" if c["kind"] == "teacher" else "data.kind"
    if c["kind"] == "file":
        return "init.path"
    if c["kind"] == "uniform" and (c["low"] is not None or c["high"] is not None):
        return "init.low" if c["low"] is not None and np.max(np.abs(c["low"])) > np.max(
            np.abs(c["high"] if c["high"] is not None else 0.0)) else "init.high"
    if c["kind"] == "point" or np.max(np.abs(c["mean"])) > np.max(np.abs(c["std"])):
        return "init.mean"
    return "init.std"


def _check_representable(config: dict, section: str, arrays: dict, dtype) -> None:
    """Every value finite in float64 and in the run's dtype; else ConfigError naming the key."""
    limit = float(jnp.finfo(dtype).max)
    name = jnp.dtype(dtype).name
    for what, array in arrays.items():
        a = np.asarray(array)
        if a.size == 0:
            continue
        big = float(np.max(np.abs(a.astype(np.float64))))
        if not np.isfinite(big) or big > limit:
            key = _culprit(config, section)
            value = config[section][key.split(".")[1]]
            shown = value if isinstance(value, str) else fmt(value)
            size = "non-finite values" if not np.isfinite(big) else f"values up to {big:.3g}"
            raise ConfigError(f"{key} = {shown}: gives {what} with {size}, which {name} "
                              f"(solver.precision) cannot hold (largest {limit:.3g})")


def check_start(setup: RunSetup) -> dict:
    """The diagnostics at the start (E, ...); ConfigError if the loss is not finite there.

    Runs the time loop's own compiled diagnostics (so ``integrate`` reuses them):
    a non-finite loss at s = 0 means the data or the initial particles make the
    network's output overflow in the run's precision -- bad input, not a divergence.
    """
    import equinox as eqx

    from ._integrate import _diagnostics

    measure = setup.measure0
    dtype = jax.tree_util.tree_leaves(measure)[0].dtype
    flow = setup.flow
    flow = eqx.tree_at(lambda f: f.problem, flow, setup.problem.astype(dtype))
    values = _diagnostics(flow, measure, jnp.asarray(0.0, dtype))
    values = {name: float(values[name]) for name in flow.history_names}
    if not np.isfinite(values["loss"]):
        raise ConfigError(f"the loss at s = 0 is {values['loss']} in {jnp.dtype(dtype).name}: the "
                          "data or the initial particles make the network's output overflow; "
                          "reduce the scale of init.std / init.mean (or init.path) or of the data "
                          "(data.noise, data.teacher_std, data.path), or use solver.precision = "
                          '"float64"')
    return values


def build_run(config: dict) -> RunSetup:
    """Build problem, depth, schedule, regularization, initial particles and key.

    Reads the data / init files and checks their shapes; every failure is a
    ``ConfigError``. ``solver.precision = "float64"`` switches on JAX's x64
    mode first (before any array is made).
    """
    dtype = dtype_of(config)
    seed = config["seed"]
    data, model, init, solver, train = (config[s] for s in ("data", "model", "init", "solver",
                                                              "train"))
    try:
        feature = make_feature(model["feature"], model["dim"], model["activation"], model["bias"],
                               model["sharpness"])
        x, y = make_dataset(
            data["kind"], n=data["n"], dim=data["dim"], seed=seed, feature=feature,
            out_dim=data["out_dim"], noise=data["noise"], path=data["path"],
            teacher_width=data["teacher_width"], teacher_depth=data["teacher_depth"],
            teacher_std=data["teacher_std"],
            classes=None if data["classes"] is None else tuple(data["classes"]),
        )
        if x.shape[1] != data["dim"]:
            raise ConfigError(f"data.dim = {data['dim']}: the data have d_in = {x.shape[1]}")
        if y.shape[1] != data["out_dim"]:
            raise ConfigError(f"data.out_dim = {data['out_dim']}: the data have d_out = "
                              f"{y.shape[1]}")
        _check_representable(config, "data", {"inputs x": x, "targets y": y}, dtype)
        problem = Problem(feature, jnp.asarray(np.asarray(x, dtype)), jnp.asarray(np.asarray(y, dtype)))
        if solver["depth"] == "layers":
            depth: DepthDiscretization = LayeredDepth()
        else:
            depth = ContinuousDepth(adjoint=solver["adjoint"], solver=solver["ode_solver"],
                                    rtol=solver["rtol"], atol=solver["atol"])
        schedule = Schedule(train["time"], train["dt"], train["method"], train["record_every"],
                            train["snapshots"], train["rtol"], train["atol"],
                            train["divergence_factor"], train["on_increase"])
        regularization = Regularization(train["l2"], train["l2_schedule"], train["l2_decay"],
                                        train["temperature"])
        root = jax.random.PRNGKey(seed)
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            # an overflow in the cast is reported below as one line naming the key
            warnings.simplefilter("ignore", RuntimeWarning)
            theta0 = init_particles(init["kind"], jax.random.fold_in(root, 1), solver["L"],
                                    solver["M"], feature.k, mean=init["mean"], std=init["std"],
                                    low=init["low"], high=init["high"], path=init["path"],
                                    dtype=dtype)
        _check_representable(config, "init", {"initial particles": theta0}, dtype)
        key = jax.random.fold_in(root, 2)
    except ConfigError:
        raise
    except (DataError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return RunSetup(problem, depth, schedule, regularization, theta0, key, {})
