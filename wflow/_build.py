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

from ._blocks import Reordering
from ._data import DataError, is_labelled, make_dataset, make_test_set
from ._depth import ContinuousDepth, DepthDiscretization, LayeredDepth
from ._features import FEATURES, BlockError, check_values
from ._flow import Flow, Regularization, make_flow
from ._grid import FiniteVolume, Grid, grid_arrays, init_density
from ._integrate import Schedule
from ._model import feature_from_config
from ._init_particles import init_particles
from ._problem import Problem, random_embedding, random_readout, sequence_maps
from ._schema import ConfigError, fmt
from ._sharding import shard_depth

__all__ = ["RunSetup", "build_run", "check_start", "dtype_of", "random_maps"]


class RunSetup(NamedTuple):
    """The library objects a config describes (``build_run``)."""

    problem: Problem
    depth: DepthDiscretization
    schedule: Schedule
    regularization: Regularization
    measure0: Any  # particles Theta (L, M, k) in the run's precision, or a GridDensity
    key: jax.Array  # Langevin key fold_in(PRNGKey(seed), 2)
    arrays: dict  # fixed arrays the run file stores besides data and snapshots (grid axes)
    reordering: Reordering = Reordering()  # block reordering (train.reorder)

    @property
    def flow(self) -> Flow:
        """The solver step that moves ``measure0`` (particles or grid)."""
        return make_flow(self.problem, self.depth, self.measure0, self.regularization,
                         self.reordering)


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
    for what, tree in arrays.items():
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]
        leaves = [a for a in leaves if a.size and np.issubdtype(a.dtype, np.number)]
        if not leaves:
            continue
        big = max(float(np.max(np.abs(a.astype(np.float64)))) for a in leaves)
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
    """Build problem, depth, schedule, regularization, initial measure and key.

    The initial measure is particles Theta (L, M, k) or, for solver.kind = "grid",
    a ``GridDensity`` (then ``arrays`` holds /grid/t and /grid/axis_a).

    Reads the data / init files and checks their shapes; every failure is a
    ``ConfigError``. ``solver.precision = "float64"`` switches on JAX's x64
    mode first (before any array is made).
    """
    dtype = dtype_of(config)
    seed = config["seed"]
    data, model, init, solver, train = (config[s] for s in ("data", "model", "init", "solver",
                                                              "train"))
    try:
        tokens = data["tokens"]
        feature = feature_from_config(model, tile=solver["tile"], tokens=tokens)
        data_args = {
            "n": data["n"], "dim": data["dim"], "seed": seed, "feature": feature,
            "out_dim": data["out_dim"], "noise": data["noise"], "path": data["path"],
            "teacher_width": data["teacher_width"], "teacher_depth": data["teacher_depth"],
            "teacher_std": data["teacher_std"],
            "classes": None if data["classes"] is None else tuple(data["classes"]),
            "tokens": tokens,
        }
        x, y = make_dataset(data["kind"], test_n=data["test_n"], **data_args)
        if x.shape[-1] != data["dim"]:
            raise ConfigError(f"data.dim = {data['dim']}: the data have d_in = {x.shape[-1]}")
        if tokens is not None and x.shape[1:] != (tokens, data["dim"]):
            raise ConfigError(f"data.tokens = {tokens}: the data have x of shape {x.shape}")
        x = x.reshape(x.shape[0], -1)  # sequences flattened (N, n d_in): _features.attention
        if y.shape[1] != data["out_dim"]:
            raise ConfigError(f"data.out_dim = {data['out_dim']}: the data have d_out = "
                              f"{y.shape[1]}")
        _check_representable(config, "data", {"inputs x": x, "targets y": y}, dtype)
        arrays = {}
        x_test = y_test = None
        if data["test_n"] > 0:
            xt, yt = make_test_set(data["kind"], test_n=data["test_n"], **data_args)
            xt = xt.reshape(xt.shape[0], -1)
            _check_representable(config, "data", {"test inputs": xt, "test targets": yt}, dtype)
            arrays = {"data/x_test": np.asarray(xt, dtype), "data/y_test": np.asarray(yt, dtype)}
            x_test, y_test = (jnp.asarray(a) for a in arrays.values())
        problem = Problem(feature, jnp.asarray(np.asarray(x, dtype)), jnp.asarray(np.asarray(y, dtype)),
                          scale=model["scale"], x_test=x_test, y_test=y_test,
                          classification=is_labelled(data["kind"], y),
                          **dict(zip(("embedding", "readout_matrix"),
                                     random_maps(model, seed, data["dim"], y.shape[1], dtype,
                                                 tokens=tokens))))
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
            if solver["kind"] == "grid":
                g = solver["grid"]
                grid = Grid.box(g["cells"], g["bounds"], feature.k)
                theta0 = init_density(init["kind"], grid, solver["L"], mean=init["mean"],
                                      std=init["std"], low=init["low"], high=init["high"],
                                      path=init["path"], dtype=dtype,
                                      fv=FiniteVolume(g["scheme"], g["limiter"], g["cfl"]))
                arrays.update(grid_arrays(grid, depth.times(solver["L"])))
            else:
                theta0 = init_particles(init["kind"], jax.random.fold_in(root, 1), solver["L"],
                                        solver["M"], feature.k, mean=init["mean"],
                                        std=init["std"], low=init["low"], high=init["high"],
                                        path=init["path"], dtype=dtype,
                                        reflection=(feature.reflection if init["symmetric"]
                                                    else None))
        _check_representable(config, "init", {"initial state": theta0}, dtype)
        Theta, _ = make_flow(problem, depth, theta0, regularization).weighted(theta0)
        _check_block_values(config, problem, Theta)
        key = jax.random.fold_in(root, 2)
        reordering = Reordering(train["reorder"], train["reorder_every"], seed)
        # Many devices: split the data or the particles (one device: depth unchanged).
        depth = shard_depth(depth, devices=solver["devices"], shard=solver["shard"],
                            N=problem.n, M=Theta.shape[1], L=Theta.shape[0], d=feature.d,
                            k=feature.k)
    except ConfigError:
        raise
    except (DataError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if problem.embedding is not None:
        arrays["model/embedding"] = np.asarray(problem.embedding)
    if problem.readout_matrix is not None:
        arrays["model/readout"] = np.asarray(problem.readout_matrix)
    return RunSetup(problem, depth, schedule, regularization, theta0, key, arrays, reordering)


def _check_block_values(config, problem: Problem, Theta) -> None:
    """A user's block is finite at the initial particles (a grid's cell centres), Theta
    (L, M, k). The shipped blocks are finite wherever theta is, so they are not evaluated."""
    if type(problem.feature) in FEATURES.values():
        return
    try:
        check_values(problem.feature, problem.embed(problem.x), Theta)
    except BlockError as e:
        raise ConfigError(f"model.feature = {fmt(config['model']['feature'])}: {e}") from None


def random_maps(model: dict, seed: int, d_in: int, d_out: int, dtype, stream: int = 0,
                dim: int | None = None, tokens: int | None = None):
    """(A, C): the fixed embedding and readout a ``[model]`` table asks for, as JAX arrays of
    ``dtype`` (``dtype`` None: float64 NumPy arrays; an array None = pad / coordinates); ``dim`` overrides ``model.dim``, ``stream`` picks the
    repetition (``_problem.random_embedding``). With ``tokens`` (sequence data; d_in per token)
    they are the token-by-token maps of ``_problem.sequence_maps``, never None."""
    d = model["dim"] if dim is None else dim
    A = random_embedding(seed, d, d_in, stream) if model["embedding"] == "random" else None
    C = random_readout(seed, d, d_out, stream) if model["readout"] == "random" else None
    if tokens is not None:
        A, C = sequence_maps(tokens, d, d_in, d_out, model["readout_token"], A, C)
    if dtype is None:  # float64 NumPy, whatever JAX's x64 mode
        return tuple(None if a is None else np.asarray(a, np.float64) for a in (A, C))
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in (A, C))
