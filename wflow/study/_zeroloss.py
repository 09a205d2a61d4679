"""``wflow study zero-loss``: does the flow reach zero loss? Full support against delta_0.

For each initial measure of ``study.inits`` (``init.kind`` variants with
[init]'s mean and std; "point" at mean 0 is delta_0,
docs/theory.md, "Degenerate start") one run of the
config's [solver] / [train] is made, and at every record the history holds

    loss           E(s)
    stationarity   int int |grad_theta V|^2 rho dtheta dt (= -dE/ds for the layered flow)
    sup_grad_v     max over the depth slices l and the query points q of
                   |grad_theta V_l(q)|: an estimate of sup over the box [-box, box]^k
                   of |grad_theta V| (from below: a finite design). The query
                   points are theta = 0 and ``box_points`` points uniform in the
                   box (numpy generator SeedSequence([seed, 0xB0C5])), the same in
                   every slice (``/box/query``).
    grad_v_origin  max_l |grad_theta V_l(0)|
    tail_mass      fraction of particles with |theta|_2 > tail_radius

Why these: at a stationary point the residual vanishes; it is a *global*
minimizer (E = 0 for data a network family can fit) when in addition
grad_theta V = 0 on the whole support, and a full-support density keeps its
full support along the flow, which forces grad V = 0 everywhere. delta_0 with
tanh (sigma(0) = 0) is stationary (F = 0, grad V(0) = 0: residual and
|grad V(0)| exactly 0, E constant) but not a minimizer: grad V does not vanish
away from 0, so sup over the box stays positive. A full-support start drives
E, the residual and sup |grad V| down together; the tail mass shows whether
mass stays spread out (support stays full) or collapses.

Each run is resumable like ``wflow run``: its state (particles, step, key) is
saved at every snapshot and when interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._build import build_run
from .._flow import Flow, Measure, ParticleFlow
from .._init_particles import init_particles
from .._integrate import FlowState, integrate
from ._file import config_text, resume_study, write_study

__all__ = ["ProbedFlow", "ProbedParticles", "ZeroLossState", "box_query", "run_zero_loss"]

_BOX_TAG = 0xB0C5
HISTORY = ("loss", "stationarity", "sup_grad_v", "grad_v_origin", "tail_mass")


def box_query(seed: int, k: int, box: float, n: int) -> np.ndarray:
    """(n + 1, k): theta = 0 followed by n points uniform in [-box, box]^k (module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _BOX_TAG]))
    return np.concatenate([np.zeros((1, k)), rng.uniform(-box, box, size=(n, k))])


class ProbedFlow(ParticleFlow):
    """The particle flow with the zero-loss diagnostics (module docstring) in its history."""

    history_names: ClassVar[tuple[str, ...]] = HISTORY

    def check(self, m, method):
        ParticleFlow.check(self, m.theta, method)

    def step(self, method, m, key, n, h):
        theta, key, ok = ParticleFlow.step(self, method, m.theta, key, n, h)
        return eqx.tree_at(lambda p: p.theta, m, theta), key, ok

    def adaptive(self, m, s0, s1, h0, rtol, atol):
        theta, ok = ParticleFlow.adaptive(self, m.theta, s0, s1, h0, rtol, atol)
        return eqx.tree_at(lambda p: p.theta, m, theta), ok

    def diagnostics(self, m, s):
        ev = self.depth.evaluate(self.problem, m.theta)
        _, G = self.depth.first_variation_gradient(self.problem, m.theta, m.query)
        norms = jnp.sqrt(jnp.sum(G * G, axis=-1))  # (L, Q)
        radius = jnp.sqrt(jnp.sum(m.theta * m.theta, axis=-1))
        return {"loss": ev.loss, "stationarity": ev.stationarity,
                "sup_grad_v": jnp.max(norms), "grad_v_origin": jnp.max(norms[:, 0]),
                "tail_mass": jnp.mean((radius > m.tail_radius).astype(m.theta.dtype))}

    def weighted(self, m):
        return m.theta, None

    def snapshot(self, m):
        return np.asarray(m.theta)

    def restore(self, like, array):
        return eqx.tree_at(lambda p: p.theta, like, jnp.asarray(array, like.theta.dtype))


class ProbedParticles(Measure):
    """Particles theta (L, M, k) with the query points (Q, k) and tail radius of the diagnostics."""

    theta: jax.Array
    query: jax.Array
    tail_radius: float = eqx.field(static=True, default=3.0)

    flow_type: ClassVar[type[Flow]] = ProbedFlow


class ZeroLossState:
    """Every array of a zero-loss study file (``_file`` docstring): one group per initial
    measure, ``runs[name]`` = {"history/loss": ..., "state/step": ..., ...}."""

    def __init__(self, problem, query: jax.Array):
        self.problem, self.query = problem, query
        self.runs: dict[str, dict] = {}
        self.wall = 0.0

    def arrays(self) -> dict:
        out = {"box/query": np.asarray(self.query), "data/x": np.asarray(self.problem.x),
               "data/y": np.asarray(self.problem.y)}
        for name, r in self.runs.items():
            for key, v in r.items():
                out[f"runs/{name}/{key}"] = v
        return out

    def load(self, data: dict, inits) -> None:
        self.wall = float(data["attrs"].get("wall_time", 0.0))
        for name in inits:
            pre = f"runs/{name}/"
            if pre + "state/step" in data:
                self.runs[name] = {k[len(pre):]: v for k, v in data.items() if k.startswith(pre)}


def run_zero_loss(config: dict, study: dict, path: str, *, resume: bool = False,
                  should_stop: Callable[[], bool] | None = None, progress: bool = True,
                  stop_after: int | None = None) -> str:
    """Run (or resume) every initial measure of the study into ``path``; returns the status.

    "complete", or "interrupted" when ``should_stop()`` became true or ``stop_after``
    records were made (a test hook). The file is rewritten at every snapshot (the
    checkpoint) and at the end.
    """
    setup = build_run(config)
    k = setup.problem.feature.k
    query = jnp.asarray(box_query(config["seed"], k, study["box"], study["box_points"]),
                        setup.measure0.dtype)
    text = config_text(config, study)
    state = ZeroLossState(setup.problem, query)
    if resume:
        state.load(resume_study(path, text, "zero-loss"), study["inits"])
    attrs = {"kind": "zero-loss", "config": text, "seed": config["seed"]}

    def checkpoint(status):
        write_study(path, {**attrs, "status": status, "wall_time": state.wall}, state.arrays())

    checkpoint("running")
    status = _run_inits(config, setup, study, state, checkpoint, should_stop, progress,
                        stop_after)
    checkpoint(status)
    return status


def _run_inits(config, setup, study, state: ZeroLossState, checkpoint, should_stop, progress,
               stop_after) -> str:
    """Run the initial measures not complete yet, in order; returns the status."""
    from tqdm import tqdm

    n = setup.schedule.n_steps
    done = sum(int(r["state/step"]) for r in state.runs.values())
    bar = tqdm(total=n * len(study["inits"]), initial=done, disable=not progress, unit="step",
               dynamic_ncols=True, desc="study zero-loss", leave=True)
    n_records = 0

    def stop() -> bool:
        nonlocal n_records
        n_records += 1
        return bool((should_stop and should_stop())
                    or (stop_after is not None and n_records >= stop_after))

    try:
        for i, name in enumerate(study["inits"]):
            r = state.runs.get(name)
            if r is not None and r["state/status"] == "complete":
                continue
            status = _run_init(config, setup, study, state, name, checkpoint,
                               _Progress(bar, name, i * n), stop,
                               poll=lambda step: bool(should_stop and should_stop()))
            if status == "interrupted":
                return "interrupted"
    finally:
        bar.close()
    return "complete"


class _Progress:
    """Moves the study's bar to one run's step (its steps follow the previous runs')."""

    def __init__(self, bar, name: str, base: int):
        self.bar, self.name, self.base = bar, name, base

    def __call__(self, rec) -> None:
        self.bar.update(rec.step + self.base - self.bar.n)
        self.bar.set_postfix_str(f"{self.name}: s={rec.s:.4g} loss={rec.loss:.3e}")


def _run_init(config, setup, study, state: ZeroLossState, name: str, checkpoint, progress,
              stop, poll=None) -> str:
    """The run of one initial measure, from the start or from its saved state; its status.
    ``stop()`` is asked at records, ``poll(step)`` between them (``integrate``)."""
    problem, depth, schedule = setup.problem, setup.depth, setup.schedule
    init, solver = config["init"], config["solver"]
    root = jax.random.PRNGKey(config["seed"])
    theta0 = init_particles(name, jax.random.fold_in(root, 1), solver["L"], solver["M"],
                            problem.feature.k, mean=init["mean"], std=init["std"],
                            low=init["low"], high=init["high"], dtype=setup.measure0.dtype)
    m0 = ProbedParticles(theta0, state.query, study["tail_radius"])
    flow = ProbedFlow(problem, depth, setup.regularization)
    r = state.runs.get(name)
    if r is None:
        r = state.runs[name] = _new_record(theta0, setup.key)
        start, initial_loss, offset = None, None, 0.0
    else:
        start, initial_loss, offset = _resume_record(r, flow, m0, schedule.step)
    t0 = time.perf_counter()

    def on_record(rec):
        if rec.history:
            for c, v in {"s": rec.s, **rec.values, "wall_time": rec.wall_time}.items():
                r[f"history/{c}"] = np.append(r[f"history/{c}"], v)
        if rec.step == 0 and rec.history:
            r["state/initial_loss"] = np.float64(rec.loss)
        if rec.snapshot is not None:
            r["snapshots/s"] = np.append(r["snapshots/s"], rec.s)
            r["snapshots/theta"] = np.concatenate([r["snapshots/theta"], rec.snapshot[None]])
            r["state/theta"], r["state/step"] = rec.snapshot, np.int64(rec.step)
            r["state/key"] = np.asarray(rec.key, np.uint32)
            checkpoint("running")
        progress(rec)
        return stop()

    result = integrate(problem, depth, schedule, theta0=m0, state=start,
                       regularization=setup.regularization, key=setup.key,
                       initial_loss=initial_loss, wall_offset=offset, callback=on_record,
                       poll=poll)
    state.wall += time.perf_counter() - t0
    final = result.state
    r["state/theta"] = flow.snapshot(final.measure)
    r["state/step"] = np.int64(final.step)
    r["state/key"] = np.asarray(final.key, np.uint32)
    r["state/status"] = result.status
    if result.status == "diverged":
        print(f"wflow: warning: the {name} run diverged at s = {final.step * schedule.step:g}"
              "; try a smaller train.dt", flush=True)
    return result.status


def _new_record(theta0, key) -> dict:
    """The empty arrays of a run that has not started."""
    r = {f"history/{c}": np.zeros(0) for c in ("s",) + HISTORY}
    r["history/wall_time"] = np.zeros(0)
    r["snapshots/s"] = np.zeros(0)
    r["snapshots/theta"] = np.zeros((0,) + theta0.shape, np.asarray(theta0).dtype)
    r["state/theta"] = np.asarray(theta0)
    r["state/step"] = np.int64(0)
    r["state/key"] = np.asarray(key, np.uint32)
    r["state/initial_loss"] = np.float64(np.nan)
    r["state/status"] = "running"
    return r


def _resume_record(r: dict, flow, m0, dt: float):
    """Drop a saved run's records after its saved state; (FlowState, initial loss, wall offset)."""
    step = int(r["state/step"])
    keep = r["history/s"] <= step * dt + 1e-12 if step > 0 else \
        np.zeros(r["history/s"].shape, bool)
    for c in ("s",) + HISTORY + ("wall_time",):
        r[f"history/{c}"] = r[f"history/{c}"][keep]
    ks = r["snapshots/s"] <= step * dt + 1e-12 if step > 0 else \
        np.zeros(r["snapshots/s"].shape, bool)
    r["snapshots/s"], r["snapshots/theta"] = r["snapshots/s"][ks], r["snapshots/theta"][ks]
    start = FlowState(flow.restore(m0, r["state/theta"]), step, jnp.asarray(r["state/key"]))
    initial_loss = float(r["state/initial_loss"]) if step > 0 else None
    offset = float(r["history/wall_time"][-1]) if len(r["history/wall_time"]) else 0.0
    return start, initial_loss, offset
