"""The time loop in training time s: one ``integrate`` owns stepping, recording and stopping.

It is the same loop for every measure representation: the solver step lives
in a ``Flow`` (``_flow.ParticleFlow`` for particles Theta (L, M, k),
``_grid.GridFlow`` for a density on a theta-grid), which knows nothing of the
loop; ``integrate`` picks the flow from the type of the initial measure.

The horizon S is split into n = ceil(S / dt) equal steps of size S / n (<= dt).
Steps are grouped into chunks ending at every record step (multiples of
``record_every``, and the last step) and every snapshot step (``snapshots``
evenly spaced, first and last included); each chunk is one compiled call
(``lax.while_loop`` with a dynamic trip count, so it compiles once). After each
chunk the loop evaluates the flow's diagnostics (loss, stationarity residual,
...), checks divergence and hands a ``Record`` to the callback, which may ask
to stop. With ``method = "adaptive"`` each chunk is one adaptive solve.

Numerical failure is data, not an exception: a step that produces a
non-finite loss or velocity is not applied, the chunk stops there with
``ok = False``, and ``integrate`` returns status ``"diverged"`` with the last
finite state. A loss above ``divergence_factor`` times the initial loss is
also reported as divergence.

Numerical health. Without noise the exact flow never increases the loss
(the regularized energy with ``l2 > 0``: ``Flow.monotone``). For the
fixed-step methods the loop compares that quantity at consecutive records;
a rise beyond round-off (``increase_tolerance``) means the step is above the
method's stability limit. The first one triggers a ``StabilityWarning`` --
also handed to the callback as ``Record.warning`` -- with the largest stable
step estimated at that state (``Flow.stable_step``: the stepper's
``stability_limit`` / |lambda_max| -- 2 for euler and heun, 2.51 for ssprk3 --
with lambda_max of the drift's Jacobian by power iteration).
``Schedule.on_increase = "stop"`` ends the run
there with status ``"unstable"`` instead. ``adaptive`` is not checked: its
error control allows rises of the order of its tolerances.

A flow may batch independent runs (``wflow.study``'s ``EnsembleFlow``): its
diagnostics are then arrays with a leading run axis, and the batch counts as
diverged only when every run has (a run that diverged alone carries
non-finite values, which its owner reads from the records). A flow whose
``snapshot`` returns None stores no snapshots. Batched flows are not checked
for rises (their ``monotone`` is None).

Why a run may not converge: ds too large (Euler is stable only for
ds < 2 / (largest Hessian eigenvalue of E in the velocity scaling); halve
``dt`` or use ``adaptive``); a degenerate initial measure
(docs/theory.md, "Degenerate start": all mass
at a stationary point never moves); too small a width M for the data.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._blocks import Reordering
from ._depth import DepthDiscretization
from ._flow import Flow, Measure, Regularization, make_flow
from ._problem import Problem
from ._steppers import STEPPERS, get_method

STATUSES = ("running", "complete", "diverged", "unstable", "interrupted")
ON_INCREASE = ("warn", "stop")


class StabilityWarning(RuntimeWarning):
    """The loss (energy) of a noise-free flow rose between records: the step is too large."""


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
    on_increase: str = "warn"  # "warn" | "stop" (module docstring, numerical health)

    def __post_init__(self):
        if not (math.isfinite(self.time) and self.time >= 0):
            raise ValueError(f"train.time = {self.time!r}: must be a finite number >= 0")
        if not (math.isfinite(self.dt) and 0 < self.dt):
            raise ValueError(f"train.dt = {self.dt!r}: must be a finite number > 0")
        get_method(self.method)  # ValueError naming the allowed methods
        if self.record_every < 1:
            raise ValueError(f"train.record_every = {self.record_every!r}: must be an integer >= 1")
        if self.snapshots < 2:
            raise ValueError(f"train.snapshots = {self.snapshots!r}: must be an integer >= 2")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"train.rtol/atol = {self.rtol}/{self.atol}: both must be > 0")
        if not self.divergence_factor > 1:
            raise ValueError(f"train.divergence_factor = {self.divergence_factor}: must be > 1")
        if self.on_increase not in ON_INCREASE:
            raise ValueError(f"train.on_increase = {self.on_increase!r}: allowed are "
                             f"{', '.join(ON_INCREASE)}")

    @property
    def n_steps(self) -> int:
        """ceil(S / dt); 0 for S = 0 (no training: the initial state is the only record)."""
        return 0 if self.time == 0 else max(1, math.ceil(self.time / self.dt - 1e-9))

    @property
    def step(self) -> float:
        """The step actually taken, S / n_steps (<= dt; dt when nothing is trained)."""
        return self.time / self.n_steps if self.n_steps else self.dt

    def record_steps(self) -> np.ndarray:
        n = self.n_steps
        return np.unique(np.append(np.arange(0, n + 1, self.record_every), n))

    def snapshot_steps(self) -> np.ndarray:
        return np.unique(np.round(np.linspace(0, self.n_steps, self.snapshots)).astype(np.int64))

    def boundaries(self) -> np.ndarray:
        return np.union1d(self.record_steps(), self.snapshot_steps())


class FlowState(NamedTuple):
    """Everything needed to continue a run: the measure, the step counter, the PRNG key.

    ``measure`` is the particle array Theta (L, M, k) or a ``GridDensity``.
    """

    measure: Any
    step: int
    key: jax.Array  # uint32[2], drives the Langevin noise


class Record(NamedTuple):
    """What the callback sees at each chunk boundary."""

    step: int
    s: float
    values: dict  # the flow's diagnostics by name (``Flow.history_names``): floats, or arrays for
    #               a batched flow
    wall_time: float
    history: bool  # a history record (record_every / first / last)
    snapshot: np.ndarray | None  # the snapshot array at snapshot steps, else None
    key: np.ndarray  # the Langevin PRNG key at this step: (snapshot, step, key) resumes the run
    measure: Any = None  # the measure at this step (device arrays): (measure, step, key) resumes
    warning: str | None = None  # a StabilityWarning's text, at the first rise of the loss

    @property
    def loss(self) -> float:
        return self.values["loss"]

    @property
    def stationarity(self) -> float:
        return self.values["stationarity"]


class FlowResult(NamedTuple):
    state: FlowState
    status: str  # "complete", "diverged", "unstable" or "interrupted"
    history: dict  # s, wall_time and the flow's history names: (n,) arrays (this call's records)
    snapshot_s: np.ndarray  # (n_snap,)
    snapshots: np.ndarray  # (n_snap, *snapshot shape)


POLL_SECONDS = 1.0  # wall time between two calls of integrate's ``poll``


class _Pacer:
    """Runs a chunk of fixed steps in pieces of about ``POLL_SECONDS`` each, calling ``poll``
    between them; without ``poll``, in one piece. The steps and their order are the same either
    way (the compiled loop takes its trip count as an argument), so the numbers are too.

    With ``donate`` the measure's buffers are given to each call, which updates them in place
    (``integrate``'s ``donate``)."""

    def __init__(self, poll, donate=False):
        self.poll, self.donate = poll, donate
        self.per_step = None  # seconds per step, measured on pieces after the first

    def advance(self, flow, method, h, dtype, measure, key, step, target):
        """(measure, key, step reached, ok): up to ``target``, or fewer steps if ``poll`` asked
        to stop (ok and reached < target) or a step was not finite (ok False)."""
        while True:
            n = target - step
            if self.poll is not None:
                n = 1 if self.per_step is None else min(n, max(1, int(POLL_SECONDS
                                                                         / self.per_step)))
            t0 = time.perf_counter()
            args = (flow, method, jnp.asarray(h, dtype), key, jnp.int32(step), jnp.int32(n))
            if self.donate:
                measure, key, done, ok = _advance_fixed_donating(args, measure)
            else:
                measure, key, done, ok = _advance_fixed(flow, method, args[2], measure, *args[3:])
            ok, done = bool(ok), int(done)
            step += done
            if not ok or step >= target or self.poll is None:
                return measure, key, step, ok
            elapsed = time.perf_counter() - t0
            if done and self.per_step is not None:  # the first piece includes the compilation
                self.per_step = elapsed / done
            elif done:
                self.per_step = min(elapsed / done, POLL_SECONDS)
            if self.poll(step):
                return measure, key, step, True


def _fixed_steps(flow: Flow, method, h, measure, key, step0, n):
    """Up to n fixed steps from step0; stops early (ok = False) on a non-finite step."""
    h = jnp.asarray(h, h.dtype)

    def body(carry):
        measure, key, i, _ = carry
        new, key, ok = flow.step(method, measure, key, step0 + i, h)
        measure = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, measure)
        return measure, key, i + ok.astype(i.dtype), ok

    def cond(carry):
        _, _, i, ok = carry
        return (i < n) & ok

    measure, key, i, ok = lax.while_loop(cond, body, (measure, key, jnp.int32(0), jnp.bool_(True)))
    return measure, key, i, ok


_advance_fixed = eqx.filter_jit(_fixed_steps)
# the same, given the measure's buffers (its last argument) to write the new measure into:
# no second copy of the measure while the chunk runs
_advance_fixed_donating = eqx.filter_jit(
    lambda args, measure: _fixed_steps(*args[:3], measure, *args[3:]),
    donate="all-except-first")


@eqx.filter_jit
def _advance_adaptive(flow: Flow, tols, h, measure, s0, s1):
    return flow.adaptive(measure, s0, s1, h, *tols)


@eqx.filter_jit
def _diagnostics(flow: Flow, measure, s):
    return flow.diagnostics(measure, s)


def _host(value):
    """A diagnostic on the host: a float for a scalar, else a NumPy array (batched flows)."""
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else value


def integrate(
    problem: Problem,
    depth: DepthDiscretization,
    schedule: Schedule,
    *,
    theta0=None,
    regularization: Regularization | None = None,
    reordering: Reordering | None = None,
    key: jax.Array | None = None,
    state: FlowState | None = None,
    initial_loss: float | None = None,
    wall_offset: float = 0.0,
    callback: Callable[[Record], bool | None] | None = None,
    poll: Callable[[int], bool | None] | None = None,
    donate: bool = False,
    keep_history: bool = True,
) -> FlowResult:
    """Run the gradient flow from ``theta0`` (or resume from ``state``) to s = S.

    Args:
        problem, depth: what is trained and how depth is discretized.
        schedule: horizon, step, method, recording (``Schedule``).
        theta0: the initial measure: particles Theta (L, M, k) (the dtype sets
            the precision) or a ``GridDensity``.
        regularization: L2 weight schedule and temperature (default: none).
        reordering: block reordering of the depth slices every K steps (particles
            only; default: none; ``_blocks.Reordering``).
        key: PRNG key for the Langevin noise (default ``PRNGKey(0)``).
        state: a ``FlowState`` to resume from instead of ``theta0``; records at
            steps <= state.step are not repeated.
        initial_loss: E at s = 0 for the divergence test when resuming.
        wall_offset: wall time already spent (resumed runs).
        callback: called with each ``Record``; returning True stops the run
            with status "interrupted" (the state is then resumable).
        poll: called with the step reached between records, about every
            ``POLL_SECONDS`` of wall time (fixed-step methods: a chunk between two records
            is then run as several calls of the same compiled loop, with the same numbers);
            returning True stops the run there with status "interrupted" (resumable from
            the returned state; no record is made). For progress bars and for stopping a
            long chunk at a signal.
        donate: fixed-step methods update the measure in place: its buffers (``theta0``'s,
            or ``state``'s, at the first chunk) are given to the compiled loop, which holds
            then one copy of the measure instead of two (the caller must not read ``theta0``,
            ``state`` or a callback's ``Record.measure`` after the next chunk began; for a
            flow whose rise is watched, the measure before the rise is kept and not given).
        keep_history: False: the records go to ``callback`` only and the result's history is
            empty (a caller that keeps what it needs from large per-record values, such as a
            batch's particles, does not hold every record's copy until the end).

    Warns:
        StabilityWarning: once, at the first rise of ``flow.monotone`` beyond
            round-off (fixed-step methods; module docstring).

    Returns:
        ``FlowResult`` with the final state, status and this call's records.
    """
    if state is None:
        if theta0 is None:
            raise ValueError("integrate needs theta0 or state")
        state = FlowState(theta0, 0, jax.random.PRNGKey(0) if key is None else key)
    measure, step, key = state
    problem, measure, flow, dtype = _start(problem, depth, measure, regularization, reordering,
                                           schedule.method)
    h = schedule.step
    names = ("s",) + flow.history_names + ("wall_time",)
    history = {name: [] for name in names}
    snap_s, snaps = [], []
    rec_steps = set(schedule.record_steps().tolist())
    snap_steps = set(schedule.snapshot_steps().tolist())
    t_start = time.perf_counter()

    def emit(step, measure, key, values, diverged=False, warning=None):
        """Record this boundary and ask the callback; True means stop.

        A diverged boundary is a history record only: no snapshot of a blown-up state.
        """
        wall = wall_offset + time.perf_counter() - t_start
        is_hist = diverged or step in rec_steps
        snap = flow.snapshot(measure) if step in snap_steps and not diverged else None  # may be None
        if is_hist and keep_history:
            for name, val in {"s": step * h, **values, "wall_time": wall}.items():
                history[name].append(val)
        if snap is not None:
            snap_s.append(step * h)
            snaps.append(snap)
        rec = Record(step, step * h, values, wall, is_hist, snap, np.asarray(key), measure, warning)
        return bool(callback(rec)) if callback is not None else False

    def result(status):
        hist = {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}
        if snaps:
            stack = np.stack(snaps)
        else:
            one = flow.snapshot(measure)
            stack = None if one is None else np.zeros((0,) + one.shape, one.dtype)
        return FlowResult(FlowState(measure, step, key), status, hist,
                          np.asarray(snap_s, np.float64), stack)

    def diagnostics(measure, step):
        values = _diagnostics(flow, measure, jnp.asarray(step * h, dtype))
        return {name: _host(values[name]) for name in flow.history_names}

    values = diagnostics(measure, step)
    if step == 0:
        initial_loss = values["loss"]
        if np.all(~np.isfinite(initial_loss)):
            emit(0, measure, key, values)
            return result("diverged")
        if emit(0, measure, key, values):
            return result("interrupted")
    if initial_loss is None:
        threshold = math.inf
    else:
        initial = np.asarray(initial_loss, np.float64)
        threshold = np.where(initial > 0, schedule.divergence_factor * initial, np.inf)
    fixed = schedule.method in STEPPERS  # else the adaptive solver
    watched = flow.monotone if fixed else None  # (compile_ahead decides the same way)
    y_max = float(jnp.max(jnp.abs(problem.y))) if watched else 0.0
    previous = (step, values, measure) if watched else None
    values = None  # as after every record below
    warned = False
    pacer = _Pacer(poll, donate=donate and watched is None)

    for target in schedule.boundaries():
        target = int(target)
        if target <= step:
            continue
        if not fixed:
            measure, ok = _advance_adaptive(flow, (schedule.rtol, schedule.atol),
                                            jnp.asarray(h, dtype), measure,
                                            jnp.asarray(step * h, dtype),
                                            jnp.asarray(target * h, dtype))
            ok = bool(ok)
            reached = target if ok else step
        else:
            measure, key, reached, ok = pacer.advance(flow, schedule.method, h, dtype, measure,
                                                      key, step, target)
            if ok and reached < target:  # poll asked to stop between two records
                step = reached
                return result("interrupted")
        step = reached
        values = diagnostics(measure, step)
        loss = np.asarray(values["loss"])
        # every run of a batch non-finite or exploded (a single run: that run)
        if (not ok) or np.all(~np.isfinite(loss) | (loss > threshold)):
            emit(step, measure, key, values, diverged=True)
            return result("diverged")
        warning = None
        if watched and not warned:
            (step0, before, measure0), after = previous, values
            if after[watched] - before[watched] > increase_tolerance(before[watched], dtype, y_max):
                warned = True
                warning = _rise_message(flow, schedule, watched, before[watched], after[watched],
                                        step0 * h, step * h, measure0)
                warnings.warn(warning, StabilityWarning, stacklevel=2)
        previous = (step, values, measure) if watched else None
        if warning is not None and schedule.on_increase == "stop":
            emit(step, measure, key, values, warning=warning)
            return result("unstable")
        if emit(step, measure, key, values, warning=warning):
            return result("interrupted")
        values = None  # the callback has this record's values; do not hold them through a chunk
    return result("complete")


def _start(problem: Problem, depth: DepthDiscretization, measure, regularization, reordering,
           method: str):
    """The flow ``integrate`` runs and the arguments its compiled programs get:
    (problem, measure, flow, dtype), the measure placed on the depth's devices."""
    if not isinstance(measure, Measure):
        measure = jnp.asarray(measure)
    problem, measure = depth.place(problem, measure)  # one device: as is; many: split
    flow = make_flow(problem, depth, measure, regularization or Regularization(),
                     reordering or Reordering())
    flow.check(measure, method)
    dtype = jax.tree_util.tree_leaves(measure)[0].dtype
    return problem, measure, eqx.tree_at(lambda f: f.problem, flow, problem.astype(dtype)), dtype


def compile_ahead(
    problem: Problem,
    depth: DepthDiscretization,
    schedule: Schedule,
    *,
    theta0,
    regularization: Regularization | None = None,
    reordering: Reordering | None = None,
    key: jax.Array | None = None,
    donate: bool = False,
) -> None:
    """Compile the programs that ``integrate`` with these arguments runs, without running
    them: its records' diagnostics and its chunk of fixed steps (or the adaptive solve).

    A later ``integrate`` with arguments of the same shapes, dtypes and static settings finds
    them compiled (JAX's cache) and starts at once. Safe to call from another thread while a
    computation runs (a study compiles its next block this way while the current one
    trains). Nothing is read from the arrays but their shapes and dtypes, and nothing is
    donated: ``theta0`` may be given to ``integrate`` afterwards.
    """
    _, measure, flow, dtype = _start(problem, depth, theta0, regularization, reordering,
                                     schedule.method)
    key = jax.random.PRNGKey(0) if key is None else key
    zero, h = jnp.asarray(0.0, dtype), jnp.asarray(schedule.step, dtype)
    _diagnostics.lower(flow, measure, zero).compile()
    if schedule.method not in STEPPERS:
        _advance_adaptive.lower(flow, (schedule.rtol, schedule.atol), h, measure, zero,
                                zero).compile()
        return
    args = (flow, schedule.method, h, key, jnp.int32(0), jnp.int32(1))
    if donate and flow.monotone is None:  # as integrate's _Pacer
        _advance_fixed_donating.lower(args, measure).compile()
    else:
        _advance_fixed.lower(flow, schedule.method, h, measure, *args[3:]).compile()


def increase_tolerance(value: float, dtype, y_max: float) -> float:
    """Largest rise of the loss (energy) E between records that round-off explains.

    E = (1/2N) sum |r_i|^2 with residuals r_i computed to an absolute error of
    about c eps (1 + max|y|) (eps of the run's dtype, c ~ sqrt(L) <= 64 for the
    accumulation over layers), so E carries an error of about
    64 eps (E + (1 + max|y|) sqrt(2 E)).
    """
    eps = float(jnp.finfo(dtype).eps)
    value = abs(value)
    return 64.0 * eps * (value + (1.0 + y_max) * math.sqrt(2.0 * value))


def _rise_message(flow, schedule, name, before, after, s0, s1, measure) -> str:
    """The warning text; the stable step is estimated at ``measure``, the state at s0 (before
    the rise: after it the iterates may already oscillate far from the flow's path)."""
    what = "loss" if name == "loss" else "regularized energy (/history/energy)"
    text = (f"the {what} rose from {before:.6g} to {after:.6g} between s = {s0:.6g} and "
            f"s = {s1:.6g}, beyond round-off (the exact flow never increases it): ")
    h = schedule.step
    estimate = flow.stable_step(measure, s0, schedule.method)
    if estimate is not None and estimate[0] < h:
        stable, rho = estimate
        limit = STEPPERS[schedule.method].stability_limit
        return text + (f"train.dt = {h:.3g} is above the stability limit of {schedule.method} "
                       f"here, dt < {stable:.3g} (= {limit} / {rho:.4g}, the "
                       f"largest eigenvalue of the velocity Jacobian at s = {s0:.6g}, by power "
                       f"iteration); use train.dt <= {0.9 * stable:.2g} or "
                       f'train.method = "adaptive"')
    return text + (f"the step train.dt = {h:.3g} is too large for {schedule.method} somewhere "
                   f'on the path; use a smaller train.dt or train.method = "adaptive"')
