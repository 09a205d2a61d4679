"""Finite networks side by side with the mean-field flow (``wflow compare``).

A comparison takes one run config: its data, model, initial particles Theta(0)
(L, M, k) and training horizon S. The *mean-field run* is ``integrate`` on
that config (the particle gradient flow, whatever ``train.method``). The
*finite networks* are the same ResNet (same Problem, same depth
discretization, same Theta(0)) trained by optax optimizers on the objective
the flow descends,

    J(Theta) = E(Theta) / alpha^2  [+ (lambda(s) / (2 L M)) |Theta|^2 when train.l2 > 0],

with E the data fit and alpha = ``model.scale`` (``_problem``); the loss and
its gradient come from ``depth.loss_and_grad`` (for the layered ResNet, the
hand-written discrete adjoint), nothing is re-implemented. Each optimizer's
step count i is mapped to a training time s(i) = i * ds_step:

* ``sgd`` (``optax.sgd(lr)``): Theta <- Theta - lr grad J. The particle
  flow's explicit Euler step of size h is exactly this with lr = L M h (the
  velocity is -(L M) grad J), so ds_step = lr / (L M) and with the default
  lr = L M h (h = S / n the flow's step) SGD and ``train.method = "euler"``
  are one trajectory (tested to 1e-10 relative in float64).
* ``momentum`` (``optax.sgd(lr, momentum=beta, nesterov)``): heavy-ball
  momentum accumulates the gradient with weight 1 / (1 - beta) once the
  gradient varies slowly, so it follows the same gradient flow with the
  effective step lr / (1 - beta): ds_step = lr / ((1 - beta) L M); default
  lr = (1 - beta) L M h, i.e. the same time grid as the flow. Curves are
  plotted against this s; they leave the flow's curve where the momentum
  transient (memory ~ 1 / (1 - beta) steps) or the loss' curvature makes the
  quasi-static argument fail.
* ``adam`` (``optax.adam(lr, b1, b2, eps)``): Adam's update is invariant to
  the scale of the gradient and moves every coordinate by about lr per step,
  which is how far a particle with an O(1) velocity moves in a flow step
  ds = lr. So ds_step = lr (the learning rate *is* the training-time step in
  particle units, independent of L and M); default lr = h. Adam is not a
  discretization of the Wasserstein gradient flow (it is a preconditioned,
  sign-like flow), so its curve is compared at equal particle displacement
  budget, not expected to coincide.
* ``minibatch`` (``optax.sgd(lr)`` on batches of ``batch_size`` samples,
  reshuffled every epoch with a key from the seed, the last incomplete
  batch of an epoch dropped): each step is an unbiased estimate of a
  full-batch SGD step, so ds_step = lr / (L M) as for SGD; it runs
  ``epochs`` epochs of floor(N / batch_size) steps (default: just enough
  steps to reach S).

Every optimizer runs until its mapped time reaches S (the number of steps is
ceil(S / ds_step)). At ``records`` + 1 evenly spaced steps of every run
(the first and last included) the comparison evaluates, with the public API:
loss E, training accuracy (labelled data), test loss / accuracy (held-out
data, ``data.test_n``), the relative parameter movement
|Theta(s) - Theta(0)| / |Theta(0)| (Frobenius norms over all particles;
absolute when Theta(0) = 0), and the gap to the shallow ensemble
(``_blocks.ensemble_gap``: RMS output gap and loss gap). With block
reordering the movement compares every block with its own initial value:
min over slice permutations pi of |Theta(s) - Theta(0)[pi]| (an assignment
problem over the L slices, solved exactly by ``scipy.optimize.
linear_sum_assignment``), so that relocating blocks is not counted as
movement.

Optional studies of the same config: ``scales`` (the mean-field flow for
every residual scale alpha: the lazy vs mean-field picture, with the slope of
log final movement against log alpha) and ``reorder`` (the mean-field flow
with every block-reordering mode for each of ``seeds``: final train / test
loss and accuracy per mode and seed).

Compare file (HDF5, ``write_compare``; names are the contract)::

    /               attrs: format = "wflow-compare", format_version = 1, wflow_version,
                           config (resolved TOML), seed, created_utc, jax_version, backend,
                           runs (names of the run groups, "meanfield" first)
    /data/x, /data/y [, /data/x_test, /data/y_test]
    /<run>/s, /<run>/step, /<run>/loss, /<run>/movement, /<run>/gap_output,
    /<run>/gap_loss [, accuracy, test_loss, test_accuracy]     (n_eval,)
    /<run>/prediction (N, d_out)  final predictions [, /<run>/test_prediction]
           attrs: kind, status, time_mapping, ds_per_step, steps, wall_time and the
           optimizer's hyper-parameters
    /scales/alpha (n_a,), /scales/s (n_eval,), /scales/<metric> (n_a, n_eval),
           attrs movement_slope (least-squares slope of log final movement vs log alpha)
    /reorder/modes (n_m,), /reorder/seeds (n_seeds,), /reorder/s (n_eval,),
    /reorder/<metric> (n_m, n_seeds, n_eval)

``<run>`` is "meanfield" and every name in ``[compare] optimizers``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if TYPE_CHECKING:  # optax and h5py are imported where they are used (a light `import wflow`)
    import h5py
    import optax

from ._blocks import REORDERS, Reordering, ensemble_gap
from ._build import build_run
from ._depth import DepthDiscretization
from ._flow import Regularization, finite
from ._integrate import Schedule, integrate
from ._problem import Problem
from ._schema import (
    ConfigError,
    Key,
    bool_key,
    choices_key,
    float_key,
    fmt,
    int_key,
    ints_key,
    numbers_key,
)

__all__ = ["COMPARE_KEYS", "OPTIMIZERS", "OPTIMIZER_KEYS", "SGD", "Adam", "CompareResult",
           "Minibatch", "Momentum", "Trajectory", "evaluation_steps", "meanfield_trajectory",
           "run_compare", "train_network", "write_compare"]

FORMAT = "wflow-compare"
FORMAT_VERSION = 1
MAX_STEPS = 10**9


# ----------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class SGD:
    """Full-batch gradient descent, ``optax.sgd(learning_rate)``; s = step * lr / (L M)."""

    learning_rate: float
    name: ClassVar[str] = "sgd"
    time_mapping: ClassVar[str] = "s = step * learning_rate / (L M)"

    def transform(self) -> optax.GradientTransformation:
        import optax

        return optax.sgd(self.learning_rate)

    def ds_per_step(self, L: int, M: int) -> float:
        return self.learning_rate / (L * M)

    def n_steps(self, time: float, L: int, M: int, N: int) -> int:
        return _steps_to(time, self.ds_per_step(L, M))

    def batch(self, problem: Problem, key, n) -> Problem:
        return problem


@dataclass(frozen=True)
class Momentum(SGD):
    """Heavy ball, ``optax.sgd(lr, momentum, nesterov)``; s = step * lr / ((1 - momentum) L M)."""

    momentum: float = 0.9
    nesterov: bool = False
    name: ClassVar[str] = "momentum"
    time_mapping: ClassVar[str] = "s = step * learning_rate / ((1 - momentum) L M)"

    def transform(self):
        import optax

        return optax.sgd(self.learning_rate, momentum=self.momentum, nesterov=self.nesterov)

    def ds_per_step(self, L, M):
        return self.learning_rate / ((1.0 - self.momentum) * L * M)


@dataclass(frozen=True)
class Adam(SGD):
    """``optax.adam(lr, b1, b2, eps)``; s = step * lr (moves each coordinate ~lr per step)."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    name: ClassVar[str] = "adam"
    time_mapping: ClassVar[str] = "s = step * learning_rate"

    def transform(self):
        import optax

        return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)

    def ds_per_step(self, L, M):
        return self.learning_rate


@dataclass(frozen=True)
class Minibatch(SGD):
    """``optax.sgd(lr)`` on shuffled batches; s = step * lr / (L M) (unbiased full-batch step).

    ``epochs`` of floor(N / batch_size) steps (None: as many steps as reach S);
    ``shuffle``: a new permutation of the samples every epoch, from ``key``
    (fold_in(key, epoch)); without it the batches are consecutive samples.
    """

    batch_size: int = 32
    epochs: int | None = None
    shuffle: bool = True
    name: ClassVar[str] = "minibatch"

    def steps_per_epoch(self, N: int) -> int:
        return N // self.batch_size

    def n_steps(self, time, L, M, N):
        if self.epochs is not None:
            return self.epochs * self.steps_per_epoch(N)
        return super().n_steps(time, L, M, N)

    def batch(self, problem, key, n):
        N, B = problem.n, self.batch_size
        per_epoch = N // B
        epoch, position = n // per_epoch, n % per_epoch
        if self.shuffle:
            order = jax.random.permutation(jax.random.fold_in(key, epoch), N)
        else:
            order = jnp.arange(N)
        idx = lax.dynamic_slice_in_dim(order, position * B, B)
        return problem.replace(x=problem.x[idx], y=problem.y[idx])


OPTIMIZERS: dict[str, type[SGD]] = {c.name: c for c in (SGD, Momentum, Adam, Minibatch)}


def _steps_to(time: float, ds: float) -> int:
    return max(1, math.ceil(time / ds - 1e-9))


def evaluation_steps(n_steps: int, records: int) -> np.ndarray:
    """The steps at which a run is evaluated: ``records`` + 1 evenly spaced, first and last included.

    The same rule as ``Schedule.snapshot_steps`` (so the mean-field run's
    snapshots fall on them).
    """
    return np.unique(np.round(np.linspace(0, n_steps, records + 1)).astype(np.int64))


# ----------------------------------------------------------------------------- trajectories


class Trajectory(NamedTuple):
    """One run of a comparison evaluated at its evaluation steps.

    ``values`` maps metric names (loss, movement, gap_output, gap_loss and, where
    defined, accuracy, test_loss, test_accuracy) to (n_eval,) arrays; ``theta``
    is the final state; ``attrs`` the run's description (kind, time mapping,
    hyper-parameters).
    """

    name: str
    status: str  # "complete" or "diverged"
    step: np.ndarray  # (n_eval,)
    s: np.ndarray  # (n_eval,) mapped training time
    values: dict
    theta: np.ndarray
    wall_time: float
    attrs: dict


def metric_names(problem: Problem) -> tuple[str, ...]:
    """The metrics ``_metrics`` returns for this problem, in order."""
    names = ("loss",) + (("accuracy",) if problem.classification else ())
    if problem.has_test:
        names += ("test_loss",) + (("test_accuracy",) if problem.classification else ())
    return names + ("movement", "gap_output", "gap_loss")


@eqx.filter_jit
def _metrics(problem: Problem, depth: DepthDiscretization, theta, theta0) -> dict:
    gap = ensemble_gap(problem, depth, theta)
    out = {"loss": gap.loss_network}
    if problem.classification:
        out["accuracy"] = problem.accuracy(depth.predict(problem, theta), problem.y)
    if problem.has_test:
        prediction = depth.predict(problem, theta, problem.x_test)
        out["test_loss"] = problem.fit(prediction, problem.y_test)
        if problem.classification:
            out["test_accuracy"] = problem.accuracy(prediction, problem.y_test)
    norm0 = jnp.linalg.norm(theta0)
    out["movement"] = jnp.linalg.norm(theta - theta0) / jnp.where(norm0 > 0, norm0, 1.0)
    out["gap_output"] = gap.output
    out["gap_loss"] = gap.loss
    return out


@eqx.filter_jit
def _predict(problem, depth, theta, x):
    return depth.predict(problem, theta, x)


def _collect(problem, depth, thetas, theta0, reordering: Reordering | None = None) -> dict:
    rows = [_metrics(problem, depth, th, theta0) for th in thetas]
    out = {name: np.asarray([float(r[name]) for r in rows]) for name in metric_names(problem)}
    if reordering is not None and reordering.active:
        out["movement"] = np.asarray([block_movement(th, theta0) for th in thetas])
    return out


def block_movement(theta, theta0) -> float:
    """min over slice permutations pi of |Theta - Theta0[pi]| / |Theta0| (relocation is free).

    The squared distance separates over slices, so the minimum is the linear
    assignment problem with cost C[l, l'] = |Theta_l - Theta0_l'|^2.
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(theta, np.float64).reshape(theta.shape[0], -1)
    b = np.asarray(theta0, np.float64).reshape(theta0.shape[0], -1)
    cost = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=2)
    rows, cols = linear_sum_assignment(cost)
    norm0 = np.linalg.norm(b)
    return float(np.sqrt(cost[rows, cols].sum()) / (norm0 if norm0 > 0 else 1.0))


def meanfield_trajectory(problem: Problem, depth: DepthDiscretization, schedule: Schedule,
                         theta0: jax.Array, *, records: int = 50,
                         regularization: Regularization | None = None,
                         reordering: Reordering | None = None, key: jax.Array | None = None,
                         name: str = "meanfield") -> Trajectory:
    """The particle flow (``integrate``) evaluated at ``evaluation_steps(n, records)``.

    ``integrate`` runs with ``schedule`` except that its snapshots are the
    evaluation steps (its history records are not used); the metrics are
    evaluated on those snapshots.
    """
    n = schedule.n_steps
    sched = dataclasses.replace(schedule, record_every=n, snapshots=records + 1)
    steps, thetas = [], []

    def on_record(rec):
        if rec.snapshot is not None:
            steps.append(rec.step)
            thetas.append(jnp.asarray(rec.snapshot))

    t0 = time.perf_counter()
    result = integrate(problem, depth, sched, theta0=theta0, regularization=regularization,
                       reordering=reordering, key=key, callback=on_record)
    wall = time.perf_counter() - t0
    theta0 = jnp.asarray(theta0)
    values = _collect(problem, depth, thetas, theta0, reordering)
    steps = np.asarray(steps, np.int64)
    attrs = {"kind": "particle flow (integrate)", "method": schedule.method,
             "time_mapping": "s = step * h, h = train.time / n_steps", "ds_per_step": schedule.step,
             "steps": int(result.state.step)}
    return Trajectory(name, "complete" if result.status == "complete" else "diverged", steps,
                      steps * schedule.step, values, np.asarray(result.state.measure), wall, attrs)


@eqx.filter_jit
def _advance(problem, depth, optimizer, l2, reordering, theta, state, key, step0, n):
    """Up to n optimizer steps from global step step0; stops early on a non-finite step."""
    import optax

    L, M, _ = theta.shape
    tx = _transform(optimizer, l2, L, M)

    def body(carry):
        theta, state, i, _ = carry
        step = step0 + i
        theta, state = reordering.apply(problem, (theta, state), step)
        loss, g = depth.loss_and_grad(optimizer.batch(problem, key, step), theta)
        if problem.scale != 1.0:
            g = problem.objective_weight * g  # the objective E / alpha^2
        updates, new_state = tx.update(g, state, theta)
        new = optax.apply_updates(theta, updates)
        ok = finite(loss, new)
        keep = lambda a, b: jnp.where(ok, a, b)
        return (keep(new, theta), jax.tree_util.tree_map(keep, new_state, state),
                i + ok.astype(i.dtype), ok)

    def cond(carry):
        return (carry[2] < n) & carry[3]

    theta, state, i, ok = lax.while_loop(cond, body, (theta, state, jnp.int32(0), jnp.bool_(True)))
    return theta, state, i, ok


def _transform(optimizer, l2: tuple, L: int, M: int) -> optax.GradientTransformation:
    """The optimizer, after the gradient of (lambda(s) / (2 L M)) |Theta|^2 when l2 > 0."""
    import optax

    reg, ds = l2
    if reg.l2 == 0:
        return optimizer.transform()
    decay = lambda count: reg.l2_at(count * ds) / (L * M)
    return optax.chain(optax.add_decayed_weights(decay), optimizer.transform())


def train_network(problem: Problem, depth: DepthDiscretization, theta0: jax.Array, optimizer,
                  *, time: float, records: int = 50, regularization: Regularization | None = None,
                  reordering: Reordering | None = None, key: jax.Array | None = None) -> Trajectory:
    """Train the finite network Theta (L, M, k) with ``optimizer`` (one of ``OPTIMIZERS``).

    Args:
        problem, depth: what is trained (``depth.loss_and_grad`` gives E and dE/dTheta).
        theta0: initial parameters (their dtype is the precision).
        optimizer: ``SGD``, ``Momentum``, ``Adam`` or ``Minibatch``.
        time: horizon S in mapped training time (module docstring).
        records: evaluation points (``evaluation_steps``).
        regularization: its ``l2`` (any schedule, evaluated at the mapped time) adds
            (lambda(s) / (2 L M)) |Theta|^2 to the objective; temperature must be 0.
        reordering: block reordering before every K-th step (parameters and the
            optimizer's moments are permuted together).
        key: minibatch shuffling key (default ``PRNGKey(0)``).

    Returns:
        ``Trajectory`` with the mapped times s = step * ds_step.
    """
    reg = regularization or Regularization()
    if reg.temperature > 0:
        raise ValueError(f"train.temperature = {reg.temperature}: the finite networks are "
                         "trained without noise; compare needs train.temperature = 0")
    theta0 = jnp.asarray(theta0)
    L, M, _ = theta0.shape
    ds = optimizer.ds_per_step(L, M)
    n = optimizer.n_steps(time, L, M, problem.n)
    if n > MAX_STEPS:
        raise ValueError(f"compare.{optimizer.name}.learning_rate = {optimizer.learning_rate!r}: "
                         f"needs {n:.3g} steps to reach train.time; at most {MAX_STEPS:.0e}")
    key = jax.random.PRNGKey(0) if key is None else key
    reordering = reordering or Reordering()
    l2 = (reg, ds)
    theta = theta0
    state = _transform(optimizer, l2, L, M).init(theta0)
    eval_steps = evaluation_steps(n, records)
    steps, thetas, step, status = [], [], 0, "complete"
    t0 = _clock()
    for target in eval_steps:
        target = int(target)
        if target > step:
            theta, state, done, ok = _advance(problem, depth, optimizer, l2, reordering, theta,
                                              state, key, jnp.int32(step), jnp.int32(target - step))
            step += int(done)
            if not bool(ok):
                status = "diverged"
                break
        steps.append(step)
        thetas.append(theta)
    time_now = _clock()
    values = _collect(problem, depth, thetas, theta0, reordering)
    if status == "complete" and not np.all(np.isfinite(values["loss"])):
        status = "diverged"
    attrs = {"kind": optimizer.name, "time_mapping": optimizer.time_mapping, "ds_per_step": ds,
             "steps": step, **{f.name: v for f in dataclasses.fields(optimizer)
                               if (v := getattr(optimizer, f.name)) is not None}}
    steps = np.asarray(steps, np.int64)
    return Trajectory(optimizer.name, status, steps, steps * ds, values, np.asarray(theta),
                      time_now - t0, attrs)


def _clock() -> float:
    return time.perf_counter()


# ----------------------------------------------------------------------------- config


# The [compare] section and the optimizer sub-tables (the reference: docs/config-reference.md).
COMPARE_KEYS: dict[str, Key] = {
    "optimizers": choices_key(list(OPTIMIZERS), OPTIMIZERS, min_items=0, single=False).describe(
        "finite networks trained by `wflow compare` beside the flow (may be empty)",
        "all four"),
    "records": int_key(50, 1, 100_000).describe(
        "evaluation points along every run (first and last step included)"),
    "scales": numbers_key([], lo=0.0, strict=True, per_coordinate=False, unique=True).describe(
        "residual scales alpha of the mean-field-vs-lazy sweep (empty: no sweep)"),
    "reorder": choices_key([], REORDERS, min_items=0, single=False).describe(
        "reorder modes of the block-reordering study (Lu et al. 2020; empty: no study)"),
    "seeds": ints_key([], lo=0, hi=2**32 - 1, min_items=0, single=False).describe(
        "seeds of the block-reordering study", "[seed]"),
}


def _learning_rate(shown: str) -> Key:
    return float_key(None, 0.0, strict=True).describe(
        "learning rate; by default the one whose step equals the flow's step h = "
        "train.time / steps", shown)


def _fraction(default: float, doc: str) -> Key:
    return float_key(default, 0.0, hi=1.0, hi_strict=True).describe(doc)


OPTIMIZER_KEYS: dict[str, dict[str, Key]] = {
    "sgd": {"learning_rate": _learning_rate("L M h")},
    "momentum": {"learning_rate": _learning_rate("(1 - momentum) L M h"),
                 "momentum": _fraction(0.9, "`optax.sgd` momentum"),
                 "nesterov": bool_key(False).describe("Nesterov momentum")},
    "adam": {"learning_rate": _learning_rate("h"),
             "b1": _fraction(0.9, "`optax.adam` b1"), "b2": _fraction(0.999, "`optax.adam` b2"),
             "eps": float_key(1e-8, 0.0, strict=True).describe("`optax.adam` eps")},
    "minibatch": {"learning_rate": _learning_rate("L M h"),
                  "batch_size": int_key(32, 1).describe(
                      "samples per batch (the last partial batch of an epoch is dropped)"),
                  "epochs": int_key(None, 1).describe("passes over the data",
                                                      "enough to reach train.time"),
                  "shuffle": bool_key(True).describe("reshuffle the data every epoch")},
}


def default_learning_rate(name: str, L: int, M: int, h: float, table: dict) -> float:
    """The learning rate whose mapped time step equals the flow's step h (module docstring)."""
    if name == "adam":
        return h
    if name == "momentum":
        return (1.0 - table["momentum"]) * L * M * h
    return L * M * h


def build_optimizers(config: dict) -> list:
    """The optimizers ``[compare]`` asks for, defaults resolved; ``ConfigError`` on bad values."""
    section = config["compare"]
    L, M, N = config["solver"]["L"], config["solver"]["M"], config["data"]["n"]
    h = Schedule(config["train"]["time"], config["train"]["dt"]).step
    for name in OPTIMIZERS:
        if name in section and name not in section["optimizers"]:
            raise ConfigError(f"[compare.{name}]: not used: {fmt(name)} is not in "
                              f"compare.optimizers = {fmt(section['optimizers'])}")
    out = []
    for name in section["optimizers"]:
        table = {k: spec.default for k, spec in OPTIMIZER_KEYS[name].items()}
        table.update(section.get(name, {}))
        if table["learning_rate"] is None:
            table["learning_rate"] = default_learning_rate(name, L, M, h, table)
        if name == "minibatch" and table["batch_size"] > N:
            raise ConfigError(f"compare.minibatch.batch_size = {table['batch_size']}: must be "
                              f"<= the number of training samples data.n = {N}")
        opt = OPTIMIZERS[name](**table)
        n = opt.n_steps(config["train"]["time"], L, M, N)
        if n > MAX_STEPS:
            raise ConfigError(f"compare.{name}.learning_rate = {table['learning_rate']!r}: needs "
                              f"{n:.3g} steps to reach train.time; at most {MAX_STEPS:.0e}")
        out.append(opt)
    return out


# ----------------------------------------------------------------------------- the comparison


class CompareResult(NamedTuple):
    """Everything ``write_compare`` stores (module docstring)."""

    config: dict
    data: dict  # x, y [, x_test, y_test] as NumPy arrays
    runs: list  # Trajectory: "meanfield" first, then the optimizers
    predictions: dict  # run name -> {"prediction": (N, d_out)[, "test_prediction"]}
    scales: list  # (alpha, Trajectory) of the alpha sweep
    reorder: dict  # (mode, seed) -> Trajectory of the reordering study


def _setup_for(config: dict, **changes) -> Any:
    cfg = copy.deepcopy(config)
    for name, value in changes.items():
        section, _, key = name.rpartition(".")
        (cfg[section] if section else cfg)[key] = value
    return build_run(cfg)


def _reordering(config: dict, mode: str | None = None) -> Reordering:
    train = config["train"]
    return Reordering(mode or train["reorder"], train["reorder_every"], config["seed"])


def run_compare(config: dict, log: Callable[[str], None] | None = None) -> CompareResult:
    """Run the comparison a resolved config with a ``[compare]`` section describes.

    Raises ``ConfigError`` (before any training) on a bad combination of keys.
    ``log`` receives one line per finished run.
    """
    log = log or (lambda line: None)
    if "compare" not in config:
        raise ConfigError("[compare]: the config has no [compare] section (wflow compare needs "
                          "one, e.g. [compare] optimizers = [\"sgd\", \"adam\"])")
    if config["train"]["temperature"] > 0:
        raise ConfigError(f"train.temperature = {config['train']['temperature']!r}: compare trains "
                          "the finite networks without noise; it needs train.temperature = 0")
    section = config["compare"]
    optimizers = build_optimizers(config)
    setup = build_run(config)
    records = section["records"]
    problem, depth = setup.problem, setup.depth
    reordering = _reordering(config)
    runs, predictions = [], {}

    def predict(theta, x=None):
        return np.asarray(_predict(problem, depth, jnp.asarray(theta), x))

    def finish(traj):
        runs.append(traj)
        pred = {"prediction": predict(traj.theta)}
        if problem.has_test:
            pred["test_prediction"] = predict(traj.theta, problem.x_test)
        predictions[traj.name] = pred
        log(_summary(traj))

    finish(meanfield_trajectory(problem, depth, setup.schedule, setup.measure0, records=records,
                                regularization=setup.regularization, reordering=reordering,
                                key=setup.key))
    shuffle_key = jax.random.fold_in(jax.random.PRNGKey(config["seed"]), 4)
    for opt in optimizers:
        finish(train_network(problem, depth, setup.measure0, opt, time=setup.schedule.time,
                             records=records, regularization=setup.regularization,
                             reordering=reordering, key=shuffle_key))

    scales = []
    for alpha in section["scales"]:
        s = _setup_for(config, **{"model.scale": alpha})
        traj = meanfield_trajectory(s.problem, s.depth, s.schedule, s.measure0, records=records,
                                    regularization=s.regularization, reordering=reordering,
                                    key=s.key, name=f"alpha={alpha:g}")
        scales.append((alpha, traj))
        log(_summary(traj))

    study = {}
    for seed in section["seeds"] or [config["seed"]]:
        if not section["reorder"]:
            break
        for mode in section["reorder"]:
            s = _setup_for(config, seed=seed, **{"train.reorder": mode})
            traj = meanfield_trajectory(
                s.problem, s.depth, s.schedule, s.measure0, records=records,
                regularization=s.regularization, reordering=Reordering(
                    mode, config["train"]["reorder_every"], seed),
                key=s.key, name=f"reorder={mode} seed={seed}")
            study[(mode, seed)] = traj
            log(_summary(traj))

    data = {"x": np.asarray(problem.x), "y": np.asarray(problem.y)}
    if problem.has_test:
        data["x_test"], data["y_test"] = np.asarray(problem.x_test), np.asarray(problem.y_test)
    return CompareResult(config, data, runs, predictions, scales, study)


def _summary(traj: Trajectory) -> str:
    v = traj.values
    parts = [f"{traj.name}: {traj.status}", f"s={traj.s[-1]:.4g}", f"loss={v['loss'][-1]:.4e}"]
    for name in ("test_loss", "accuracy", "test_accuracy", "movement"):
        if name in v:
            parts.append(f"{name}={v[name][-1]:.4g}")
    parts.append(f"wall={traj.wall_time:.1f}s")
    return "  ".join(parts)


def movement_slope(scales: list) -> float:
    """Least-squares slope of log(final movement) against log(alpha) (nan with < 2 points)."""
    pts = [(a, t.values["movement"][-1]) for a, t in scales
           if t.status == "complete" and t.values["movement"][-1] > 0]
    if len(pts) < 2:
        return math.nan
    a, m = np.log(np.asarray(pts)).T
    return float(np.polyfit(a, m, 1)[0])


def reorder_table(result: CompareResult) -> list[tuple[str, dict]]:
    """Per reorder mode: {metric: (mean, std, n)} of the final values over seeds.

    Metrics: loss, accuracy, test_loss, test_accuracy (where defined) and, when
    "none" is among the modes, ``loss_ratio`` = final loss / final loss of the
    plain run with the same seed (a paired comparison: same data, same start).
    std is the population standard deviation over seeds.
    """
    modes = list(dict.fromkeys(mode for mode, _ in result.reorder))
    seeds = list(dict.fromkeys(seed for _, seed in result.reorder))
    rows = []
    for mode in modes:
        trajs = [result.reorder[(mode, seed)] for seed in seeds]
        stats = {}
        for name in trajs[0].values:
            if name in ("movement", "gap_output", "gap_loss"):
                continue
            final = np.asarray([t.values[name][-1] for t in trajs])
            stats[name] = (float(np.mean(final)), float(np.std(final)), len(final))
        if "none" in modes:
            ratio = np.asarray([t.values["loss"][-1] / result.reorder[("none", seed)].values["loss"][-1]
                                for t, seed in zip(trajs, seeds, strict=True)])
            stats["loss_ratio"] = (float(np.mean(ratio)), float(np.std(ratio)), len(ratio))
        rows.append((mode, stats))
    return rows


# ----------------------------------------------------------------------------- the file


def _write_trajectory(g: h5py.Group, traj: Trajectory) -> None:
    g.create_dataset("s", data=np.asarray(traj.s, np.float64))
    g.create_dataset("step", data=traj.step)
    for name, v in traj.values.items():
        g.create_dataset(name, data=np.asarray(v, np.float64))
    g.attrs["status"] = traj.status
    g.attrs["wall_time"] = float(traj.wall_time)
    for name, v in traj.attrs.items():
        g.attrs[name] = v


def _stack(trajs: list, name: str, n: int) -> np.ndarray:
    """(len(trajs), n) with NaN after a run's last evaluation (a diverged run stops early)."""
    out = np.full((len(trajs), n), np.nan)
    for i, t in enumerate(trajs):
        v = t.values[name]
        out[i, : len(v)] = v
    return out


def write_compare(path: str, result: CompareResult, config_text: str) -> None:
    """Write the compare file atomically and durably (``_io.commit_h5``: a temporary file in
    the same folder, fsync, rename; a kill leaves the old file or the new one)."""
    from h5py import string_dtype

    from . import __version__
    from ._io import commit_h5

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def build(f):
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["wflow_version"] = __version__
        f.attrs["config"] = config_text
        f.attrs["seed"] = int(result.config["seed"])
        f.attrs["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        f.attrs["jax_version"] = jax.__version__
        f.attrs["backend"] = jax.default_backend()
        f.attrs["runs"] = [t.name for t in result.runs]
        d = f.create_group("data")
        for name, a in result.data.items():
            d.create_dataset(name, data=a)
        for traj in result.runs:
            g = f.create_group(traj.name)
            _write_trajectory(g, traj)
            for name, a in result.predictions[traj.name].items():
                g.create_dataset(name, data=a)
        if result.scales:
            g = f.create_group("scales")
            alphas = [a for a, _ in result.scales]
            trajs = [t for _, t in result.scales]
            longest = max(trajs, key=lambda t: len(t.s))
            g.create_dataset("alpha", data=np.asarray(alphas, np.float64))
            g.create_dataset("s", data=np.asarray(longest.s, np.float64))
            for name in trajs[0].values:
                g.create_dataset(name, data=_stack(trajs, name, len(longest.s)))
            g.attrs["status"] = [t.status for t in trajs]
            g.attrs["movement_slope"] = movement_slope(result.scales)
        if result.reorder:
            g = f.create_group("reorder")
            modes = list(dict.fromkeys(m for m, _ in result.reorder))
            seeds = list(dict.fromkeys(s for _, s in result.reorder))
            trajs = list(result.reorder.values())
            longest = max(trajs, key=lambda t: len(t.s))
            n = len(longest.s)
            g.create_dataset("modes", data=np.asarray(modes, dtype=string_dtype()))
            g.create_dataset("seeds", data=np.asarray(seeds, np.int64))
            g.create_dataset("s", data=np.asarray(longest.s, np.float64))
            g.attrs["every"] = int(result.config["train"]["reorder_every"])
            for name in trajs[0].values:
                g.create_dataset(name, data=np.stack([
                    _stack([result.reorder[(m, s)] for s in seeds], name, n) for m in modes]))

    commit_h5(path, build, fresh=True, seal_data=True)  # checksums of attributes and datasets


def check_compare_file(path: str) -> dict:
    """Root attributes of a compare file whose checksums hold (``_io.verify_file``);
    ``ValueError`` with one line otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
    fmt_ = attrs.get("format")
    if isinstance(fmt_, bytes):
        fmt_ = fmt_.decode()
    if fmt_ != FORMAT:
        raise ValueError(f"{path}: not a wflow compare file (format = {fmt_!r}, expected {FORMAT!r})")
    from ._io import verify_file

    verify_file(path)  # RunFileError is a ValueError
    return attrs
