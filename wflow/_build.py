"""From a resolved config to the library objects a run needs (``build_run``).

Reads the data and init files on the way and turns every failure into a
one-line ``ConfigError``; nothing here writes a file.
"""

from __future__ import annotations

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
from ._problem import Problem, random_embedding, random_readout
from ._schema import ConfigError

__all__ = ["RunSetup", "build_run", "dtype_of", "random_maps"]


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
        problem = Problem(feature, jnp.asarray(np.asarray(x, dtype)), jnp.asarray(np.asarray(y, dtype)),
                          *random_maps(model, seed, x.shape[1], y.shape[1], dtype))
        if solver["depth"] == "layers":
            depth: DepthDiscretization = LayeredDepth()
        else:
            depth = ContinuousDepth(adjoint=solver["adjoint"], solver=solver["ode_solver"],
                                    rtol=solver["rtol"], atol=solver["atol"])
        schedule = Schedule(train["time"], train["dt"], train["method"], train["record_every"],
                            train["snapshots"], train["rtol"], train["atol"],
                            train["divergence_factor"])
        regularization = Regularization(train["l2"], train["l2_schedule"], train["l2_decay"],
                                        train["temperature"])
        root = jax.random.PRNGKey(seed)
        theta0 = init_particles(init["kind"], jax.random.fold_in(root, 1), solver["L"], solver["M"],
                                feature.k, mean=init["mean"], std=init["std"], low=init["low"],
                                high=init["high"], path=init["path"], dtype=dtype)
        key = jax.random.fold_in(root, 2)
    except ConfigError:
        raise
    except (DataError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    arrays = {}
    if problem.embedding is not None:
        arrays["model/embedding"] = np.asarray(problem.embedding)
    if problem.readout_matrix is not None:
        arrays["model/readout"] = np.asarray(problem.readout_matrix)
    return RunSetup(problem, depth, schedule, regularization, theta0, key, arrays)


def random_maps(model: dict, seed: int, d_in: int, d_out: int, dtype, stream: int = 0,
                dim: int | None = None):
    """(A, C): the fixed random embedding and readout a ``[model]`` table asks for (None = pad /
    coordinates), as arrays of ``dtype``; ``dim`` overrides ``model.dim``, ``stream`` picks the
    repetition (``_problem.random_embedding``)."""
    d = model["dim"] if dim is None else dim
    A = C = None
    if model["embedding"] == "random":
        A = jnp.asarray(random_embedding(seed, d, d_in, stream), dtype)
    if model["readout"] == "random":
        C = jnp.asarray(random_readout(seed, d, d_out, stream), dtype)
    return A, C
