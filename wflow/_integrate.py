"""The time loop in training time s: one ``integrate`` owns stepping, recording and stopping.

The particle system is the gradient flow (SPEC §1-2)

    d theta_{l,m} / ds = v_{l,m}(Theta) - lambda(s) theta_{l,m}  [+ sqrt(2 tau) dW/ds]

with v = -(M / w_l) dE/dtheta (``DepthDiscretization.evaluate``). Methods:

* ``euler``: explicit Euler, theta += ds v  (= gradient descent with learning
  rate L M ds); with tau > 0, Euler-Maruyama.
* ``heun``: explicit trapezoid (2nd order); with tau > 0, stochastic Heun for
  additive noise (the same Gaussian increment in predictor and corrector).
* ``adaptive``: diffrax Tsit5 with a PID controller (``rtol``, ``atol``)
  between consecutive record times; deterministic only (tau = 0).

The horizon S is split into n = ceil(S / dt) equal steps of size S / n (<= dt).
Steps are grouped into chunks ending at every record step (multiples of
``record_every``, and the last step) and every snapshot step (``snapshots``
evenly spaced, first and last included); each chunk is one compiled call
(``lax.while_loop`` with a dynamic trip count, so it compiles once). After each
chunk the loop evaluates loss and stationarity residual, checks divergence and
hands a ``Record`` to the callback, which may ask to stop.

Numerical failure is data, not an exception: a step that produces a
non-finite loss or velocity is not applied, the chunk stops there with
``ok = False``, and ``integrate`` returns status ``"diverged"`` with the last
finite state. A loss above ``divergence_factor`` times the initial loss is
also reported as divergence.

Why a run may not converge: ds too large (Euler is stable only for
ds < 2 / (largest Hessian eigenvalue of E in the velocity scaling); halve
``dt`` or use ``adaptive``); a degenerate initial measure (SPEC §6: all mass
at a stationary point never moves); too small a width M for the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._depth import DepthDiscretization
from ._problem import Problem

METHODS = ("euler", "heun", "adaptive")
L2_SCHEDULES = ("constant", "inverse", "exponential")
STATUSES = ("running", "complete", "diverged", "interrupted")


@dataclass(frozen=True)
class Schedule:
    """Training-time discretization and recording (``[train]`` in a config)."""

    time: float
    dt: float
    method: str = "euler"
    record_every: int = 10
    snapshots: int = 5
    rtol: float = 1e-4  # adaptive only
    atol: float = 1e-6  # adaptive only
    divergence_factor: float = 1e6

    def __post_init__(self):
        if not (math.isfinite(self.time) and self.time > 0):
            raise ValueError(f"train.time = {self.time!r}: must be a finite number > 0")
        if not (math.isfinite(self.dt) and 0 < self.dt):
            raise ValueError(f"train.dt = {self.dt!r}: must be a finite number > 0")
        if self.method not in METHODS:
            raise ValueError(f"train.method = {self.method!r}: allowed are {', '.join(METHODS)}")
        if self.record_every < 1:
            raise ValueError(f"train.record_every = {self.record_every!r}: must be an integer >= 1")
        if self.snapshots < 2:
            raise ValueError(f"train.snapshots = {self.snapshots!r}: must be an integer >= 2")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"train.rtol/atol = {self.rtol}/{self.atol}: both must be > 0")
        if not self.divergence_factor > 1:
            raise ValueError(f"train.divergence_factor = {self.divergence_factor}: must be > 1")

    @property
    def n_steps(self) -> int:
        return max(1, math.ceil(self.time / self.dt - 1e-9))

    @property
    def step(self) -> float:
        """The step actually taken, S / n_steps (<= dt)."""
        return self.time / self.n_steps

    def record_steps(self) -> np.ndarray:
        n = self.n_steps
        return np.unique(np.append(np.arange(0, n + 1, self.record_every), n))

    def snapshot_steps(self) -> np.ndarray:
        return np.unique(np.round(np.linspace(0, self.n_steps, self.snapshots)).astype(np.int64))

    def boundaries(self) -> np.ndarray:
        return np.union1d(self.record_steps(), self.snapshot_steps())


@dataclass(frozen=True)
class Regularization:
    """L2 weight lambda(s) and temperature tau (both default 0).

    lambda(s) = l2 (constant), l2 / (1 + s / l2_decay) (inverse) or
    l2 exp(-s / l2_decay) (exponential).
    """

    l2: float = 0.0
    l2_schedule: str = "constant"
    l2_decay: float = 1.0
    temperature: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"train.l2 = {self.l2!r}: must be a finite number >= 0")
        if self.l2_schedule not in L2_SCHEDULES:
            raise ValueError(
                f"train.l2_schedule = {self.l2_schedule!r}: allowed are {', '.join(L2_SCHEDULES)}")
        if not (math.isfinite(self.l2_decay) and self.l2_decay > 0):
            raise ValueError(f"train.l2_decay = {self.l2_decay!r}: must be a finite number > 0")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"train.temperature = {self.temperature!r}: must be a finite number >= 0")

    def l2_at(self, s):
        if self.l2_schedule == "constant":
            return self.l2 * jnp.ones_like(s)
        if self.l2_schedule == "inverse":
            return self.l2 / (1.0 + s / self.l2_decay)
        return self.l2 * jnp.exp(-s / self.l2_decay)


class FlowState(NamedTuple):
    """Everything needed to continue a run: particles, step counter, PRNG key."""

    theta: jax.Array  # (L, M, k)
    step: int
    key: jax.Array  # uint32[2], drives the Langevin noise


class Record(NamedTuple):
    """What the callback sees at each chunk boundary."""

    step: int
    s: float
    loss: float
    stationarity: float
    wall_time: float
    history: bool  # a history record (record_every / first / last)
    snapshot: np.ndarray | None  # theta (L, M, k) at snapshot steps, else None
    key: np.ndarray  # the Langevin PRNG key at this step: (snapshot, step, key) resumes the run


class FlowResult(NamedTuple):
    state: FlowState
    status: str  # "complete", "diverged" or "interrupted"
    history: dict  # s, loss, stationarity, wall_time: (n,) arrays (this call's records)
    snapshot_s: np.ndarray  # (n_snap,)
    snapshots: np.ndarray  # (n_snap, L, M, k)


def _velocity(problem, depth, reg: Regularization, theta, s):
    ev = depth.evaluate(problem, theta)
    v = ev.velocity
    if reg.l2 > 0:
        v = v - reg.l2_at(s).astype(theta.dtype) * theta
    return ev.loss, v


def _finite(*xs):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


@eqx.filter_jit
def _advance_fixed(problem, depth, reg, method, h, theta, key, step0, n):
    """Up to n fixed steps from step0; stops early (ok = False) on a non-finite step."""
    h = jnp.asarray(h, theta.dtype)
    noise = reg.temperature > 0
    amp = jnp.sqrt(2.0 * reg.temperature * h).astype(theta.dtype)

    def body(carry):
        theta, key, i, _ = carry
        s = (step0 + i) * h
        loss, v = _velocity(problem, depth, reg, theta, s)
        if noise:
            key, sub = jax.random.split(key)
            dw = amp * jax.random.normal(sub, theta.shape, theta.dtype)
        else:
            dw = jnp.zeros((), theta.dtype)
        new = theta + h * v + dw
        if method == "heun":
            loss1, v1 = _velocity(problem, depth, reg, new, s + h)
            new = theta + 0.5 * h * (v + v1) + dw
            ok = _finite(loss, v, loss1, v1)
        else:
            ok = _finite(loss, v)
        theta = jnp.where(ok, new, theta)
        return theta, key, i + ok.astype(i.dtype), ok

    def cond(carry):
        _, _, i, ok = carry
        return (i < n) & ok

    theta, key, i, ok = lax.while_loop(cond, body, (theta, key, jnp.int32(0), jnp.bool_(True)))
    return theta, key, i, ok


@eqx.filter_jit
def _advance_adaptive(problem, depth, reg, schedule_tols, h, theta, s0, s1):
    """theta(s1) from theta(s0) by diffrax Tsit5 + PID control of the particle ODE."""
    rtol, atol = schedule_tols
    term = diffrax.ODETerm(lambda s, th, _: _velocity(problem, depth, reg, th, s)[1])
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=s0, t1=s1, dt0=h, y0=theta,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=100_000, throw=False,
    )
    new = sol.ys[-1]
    ok = (sol.result == diffrax.RESULTS.successful) & _finite(new)
    return jnp.where(ok, new, theta), ok


@eqx.filter_jit
def _diagnostics(problem, depth, theta):
    ev = depth.evaluate(problem, theta)
    return ev.loss, ev.stationarity


def integrate(
    problem: Problem,
    depth: DepthDiscretization,
    schedule: Schedule,
    *,
    theta0: jax.Array | None = None,
    regularization: Regularization = Regularization(),
    key: jax.Array | None = None,
    state: FlowState | None = None,
    initial_loss: float | None = None,
    wall_offset: float = 0.0,
    callback: Callable[[Record], bool | None] | None = None,
) -> FlowResult:
    """Run the particle gradient flow from ``theta0`` (or resume from ``state``) to s = S.

    Args:
        problem, depth: what is trained and how depth is discretized.
        schedule: horizon, step, method, recording (``Schedule``).
        theta0: initial particles (L, M, k); the dtype sets the precision.
        regularization: L2 weight schedule and temperature.
        key: PRNG key for the Langevin noise (default ``PRNGKey(0)``).
        state: a ``FlowState`` to resume from instead of ``theta0``; records at
            steps <= state.step are not repeated.
        initial_loss: E at s = 0 for the divergence test when resuming.
        wall_offset: wall time already spent (resumed runs).
        callback: called with each ``Record``; returning True stops the run
            with status "interrupted" (the state is then resumable).

    Returns:
        ``FlowResult`` with the final state, status and this call's records.
    """
    if state is None:
        if theta0 is None:
            raise ValueError("integrate needs theta0 or state")
        state = FlowState(jnp.asarray(theta0), 0,
                          jax.random.PRNGKey(0) if key is None else key)
    theta, step, key = state
    if theta.ndim != 3 or theta.shape[2] != problem.feature.k:
        raise ValueError(
            f"theta has shape {theta.shape}: must be (L, M, k) with k = {problem.feature.k}")
    if regularization.temperature > 0 and schedule.method == "adaptive":
        raise ValueError("train.temperature > 0 needs train.method = 'euler' or 'heun' "
                         "(adaptive integration is for the deterministic flow)")
    problem = problem.astype(theta.dtype)
    h = schedule.step
    history = {"s": [], "loss": [], "stationarity": [], "wall_time": []}
    snap_s, snaps = [], []
    rec_steps = set(schedule.record_steps().tolist())
    snap_steps = set(schedule.snapshot_steps().tolist())
    t_start = time.perf_counter()

    def emit(step, theta, key, loss, stat, diverged=False):
        """Record this boundary and ask the callback; True means stop.

        A diverged boundary is a history record only: no snapshot of a blown-up state.
        """
        wall = wall_offset + time.perf_counter() - t_start
        is_hist = diverged or step in rec_steps
        snap = np.asarray(theta) if step in snap_steps and not diverged else None
        if is_hist:
            for name, val in zip(history, (step * h, loss, stat, wall)):
                history[name].append(val)
        if snap is not None:
            snap_s.append(step * h)
            snaps.append(snap)
        rec = Record(step, step * h, loss, stat, wall, is_hist, snap, np.asarray(key))
        return bool(callback(rec)) if callback is not None else False

    def result(status):
        hist = {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}
        shape = (0,) + tuple(theta.shape)
        stack = np.stack(snaps) if snaps else np.zeros(shape, np.asarray(theta).dtype)
        return FlowResult(FlowState(theta, step, key), status, hist,
                          np.asarray(snap_s, np.float64), stack)

    loss, stat = (float(v) for v in _diagnostics(problem, depth, theta))
    if step == 0:
        initial_loss = loss
        if not math.isfinite(loss):
            emit(0, theta, key, loss, stat)
            return result("diverged")
        if emit(0, theta, key, loss, stat):
            return result("interrupted")
    threshold = (schedule.divergence_factor * initial_loss
                 if initial_loss is not None and initial_loss > 0 else math.inf)

    for target in schedule.boundaries():
        target = int(target)
        if target <= step:
            continue
        if schedule.method == "adaptive":
            theta, ok = _advance_adaptive(problem, depth, regularization,
                                          (schedule.rtol, schedule.atol),
                                          jnp.asarray(h, theta.dtype), theta,
                                          jnp.asarray(step * h, theta.dtype),
                                          jnp.asarray(target * h, theta.dtype))
            ok = bool(ok)
            reached = target if ok else step
        else:
            theta, key, done, ok = _advance_fixed(
                problem, depth, regularization, schedule.method,
                jnp.asarray(h, theta.dtype), theta, key,
                jnp.int32(step), jnp.int32(target - step))
            ok = bool(ok)
            reached = step + int(done)
        step = reached
        loss, stat = (float(v) for v in _diagnostics(problem, depth, theta))
        if (not ok) or (not math.isfinite(loss)) or loss > threshold:
            emit(step, theta, key, loss, stat, diverged=True)
            return result("diverged")
        if emit(step, theta, key, loss, stat):
            return result("interrupted")
    return result("complete")
