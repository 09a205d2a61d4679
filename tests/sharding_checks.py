"""Multi-device checks, run by ``test_sharding.py`` in a subprocess with forced host devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharding_checks.py layered weighted

JAX fixes its device count when it starts, so these checks cannot run in the
pytest process. Each named check compares a run split over every visible
device (``ShardedDepth``, modes "data" and "particles") with the plain
single-device run from the same arrays, in float64, and reports norm-wise
relative differences max|a - b| / max|b|. The last line printed is
``RESULT <json>``.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import wflow
from wflow._sharding import ShardedDepth, make_mesh

MODES = ("data", "particles")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def setup(N=64, d=2, L=8, M=16):
    feature = wflow.Neuron(d=d)
    x, y = wflow.make_dataset("teacher", n=N, dim=d, seed=0, feature=feature)
    problem = wflow.Problem(feature, jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64))
    theta0 = wflow.init_particles("gaussian", jax.random.PRNGKey(1), L=L, M=M, k=feature.k,
                                  dtype=jnp.float64)
    return problem, theta0


def compare_runs(depth, steps=100, dt=0.01) -> dict:
    """``steps`` Euler steps on one device and split over all devices, both modes."""
    problem, theta0 = setup()
    schedule = wflow.Schedule(time=steps * dt, dt=dt, record_every=10)
    one = wflow.integrate(problem, depth, schedule, theta0=theta0)
    out = {"steps": one.state.step, "loss_start": float(one.history["loss"][0]),
           "loss_end": float(one.history["loss"][-1])}
    for mode in MODES:
        split = ShardedDepth(depth, make_mesh(), mode)
        many = wflow.integrate(problem, split, schedule, theta0=theta0)
        out[mode] = {
            "status": many.status,
            "steps": many.state.step,
            "spec": str(many.state.measure.sharding.spec),
            "theta": rel(many.state.measure, one.state.measure),
            "loss": rel(many.history["loss"], one.history["loss"]),
            "stationarity": rel(many.history["stationarity"], one.history["stationarity"]),
            "snapshots": rel(many.snapshots, one.snapshots),
        }
    return out


def weighted(depth) -> dict:
    """A weighted measure (grid cells are weighted particles): loss, velocity, residual, grad V."""
    problem, theta = setup(M=32)
    L, M, _ = theta.shape
    omega = jax.random.uniform(jax.random.PRNGKey(3), (L, M), jnp.float64, 0.5, 1.5)
    omega = omega / jnp.sum(omega, axis=1, keepdims=True)
    query = jax.random.normal(jax.random.PRNGKey(4), (5, theta.shape[2]), jnp.float64)
    one_ev = jax.jit(depth.evaluate)(problem, theta, omega)
    one_fv = jax.jit(depth.first_variation_gradient)(problem, theta, query, omega)
    out = {}
    for mode in MODES:
        split = ShardedDepth(depth, make_mesh(), mode)
        p, th = split.place(problem, theta)
        _, w = split.place(problem, omega[:, :, None])
        w = w[:, :, 0]
        ev = jax.jit(split.evaluate)(p, th, w)
        fv = jax.jit(split.first_variation_gradient)(p, th, query, w)
        out[mode] = {"loss": rel(ev.loss, one_ev.loss), "velocity": rel(ev.velocity, one_ev.velocity),
                     "stationarity": rel(ev.stationarity, one_ev.stationarity),
                     "fv_loss": rel(fv[0], one_fv[0]), "fv_grad": rel(fv[1], one_fv[1])}
    return out


def products() -> dict:
    """What other features add on top of the depth: a grid density moved by the finite-volume
    flow (its weighted view split like particles), and particles with a residual scale
    alpha = 2, a held-out set and random block reordering."""
    d_feature = wflow.Neuron(d=1, bias=False)
    x, y = wflow.make_dataset("teacher", n=32, dim=1, seed=0, feature=d_feature)
    grid_problem = wflow.Problem(d_feature, jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64))
    grid = wflow.Grid.box(8, [-3.0, 3.0], d_feature.k)  # 64 cells: divisible by 4 devices
    density = wflow.init_density("gaussian", grid, 4, std=0.8, dtype=jnp.float64)
    grid_schedule = wflow.Schedule(time=0.5, dt=0.05, method="heun", record_every=5)

    problem, theta0 = setup()
    xt, yt = wflow.make_dataset("teacher", n=16, dim=2, seed=5, feature=problem.feature)
    problem = wflow.Problem(problem.feature, problem.x, problem.y, scale=2.0,
                            x_test=jnp.asarray(xt, jnp.float64), y_test=jnp.asarray(yt, jnp.float64))
    schedule = wflow.Schedule(time=0.5, dt=0.01, record_every=10)
    reordering = wflow.Reordering("random", 5, seed=3)

    depth = wflow.LayeredDepth()
    one_grid = wflow.integrate(grid_problem, depth, grid_schedule, theta0=density)
    one = wflow.integrate(problem, depth, schedule, theta0=theta0, reordering=reordering)
    out = {}
    for mode in MODES:
        split = ShardedDepth(depth, make_mesh(), mode)
        many_grid = wflow.integrate(grid_problem, split, grid_schedule, theta0=density)
        many = wflow.integrate(problem, split, schedule, theta0=theta0, reordering=reordering)
        out[mode] = {
            "grid_status": many_grid.status == one_grid.status == "complete",
            "grid_rho": rel(many_grid.state.measure.rho, one_grid.state.measure.rho),
            "grid_loss": rel(many_grid.history["loss"], one_grid.history["loss"]),
            "grid_wall_mass": rel(many_grid.history["wall_mass"], one_grid.history["wall_mass"]),
            "status": many.status == one.status == "complete",
            "theta": rel(many.state.measure, one.state.measure),
            "loss": rel(many.history["loss"], one.history["loss"]),
            "test_loss": rel(many.history["test_loss"], one.history["test_loss"]),
        }
    return out


CHECKS = {
    "layered": lambda: compare_runs(wflow.LayeredDepth()),
    "continuous": lambda: compare_runs(wflow.ContinuousDepth()),
    "backsolve": lambda: compare_runs(wflow.ContinuousDepth(adjoint="backsolve")),
    "weighted": lambda: weighted(wflow.LayeredDepth()),
    "weighted-continuous": lambda: weighted(wflow.ContinuousDepth()),
    "products": products,
}


def main(names):
    result = {"devices": len(jax.devices())}
    for name in names:
        result[name] = CHECKS[name]()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
