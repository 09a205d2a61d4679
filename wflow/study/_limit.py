"""``wflow study limit``: finite ResNets against their mean-field limit, over a grid of shapes.

For every shape (L, M[, D]) of the sweep and every repetition r (``seeds``),
a finite network is drawn and trained by the flow, and at each study time s
the quantities its selected metrics need (its loss E, output g(z(1; x_i)),
final hidden state z(1; x_i)) are compared with a reference's by each metric of
``study.metrics`` (``_metrics``: e.g. ``loss`` |E - E_ref|, ``output`` the RMS over
the samples of |g - g_ref|).

Sampling (``study.sampling``): "iid" draws M particles per layer
independently (theta_{l,m} ~ rho_ini); "shared" draws M particles once and
uses them in every layer (rho_ini independent of t), so that the L-dependence
is the depth discretization alone.

References (``study.reference``):

* "continuous": the *same* initial particles of each (shape, repetition) in
  continuous depth (``ContinuousDepth``, solver.* ODE settings), trained by the
  same flow: the L -> infinity limit at that width; the error is the depth
  error alone (~ a / L).
* "particles": one large run per repetition, ``reference_M`` particles in
  each of ``reference_L`` slices (state dimension ``reference_dim``), in
  ``reference_depth`` (continuous by default; "layers" makes it the finite
  network of that shape, as in Chaintron, Chizat and Maass): the limit in both
  L and M, up to the reference's own error. Its random maps are the
  repetition's (nested in D), its particles are independent of the sweep's.
* "grid": the density itself, moved by the grid solver (``wflow._grid``, k <=
  3) on the [study.grid] box with ``reference_L`` slices in ``reference_depth``,
  from init's law as exact cell averages: the limit in both L and M with no
  sampling noise, up to the grid's discretization error (cell width h, the
  scheme's order). It is deterministic, so it is computed once, or once per
  repetition with random maps (each repetition's maps), through the generic
  measure path ``measure_values``. The study file keeps the grid's wall mass at
  every study time (``reference/wall_mass``; above 1e-3 the box is too small
  and a warning is printed).

Repetition r of shape (L, M, D) draws its particles from NumPy's PCG64 seeded
by SeedSequence([seed, 1, r, 0, L, M, D]) (the reference: tag 0x5EF instead of
0; with shared sampling L -> 0: every depth of the sweep discretizes the same
measure, ``_particles``) and its random maps from stream r
(``_problem.random_embedding``); the data are the config's, the same for all.

Speed: runs of equal compiled shape are trained together as one ``Batch``
(vmap over its members, or a loop over them in continuous depth; ``integrate``
as the time loop), and shapes are padded
onto a few compiled shapes (``plan``): zero-weight particles pad M, zero
coordinates pad D (exact, see ``_batch``). The padding ladder minimizes an
estimate of run time plus compile time; the batch size of a block is limited
by ``study.memory``.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._build import dtype_of, random_maps
from .._data import DataError, make_dataset
from .._depth import ContinuousDepth, LayeredDepth
from .._flow import Regularization
from .._init_particles import per_coord
from .._integrate import Schedule, compile_ahead, integrate
from .._model import feature_from_config
from .._problem import Problem
from .._preflight import heap_size, release_free_memory
from .._schema import ConfigError
from .._steppers import STEPPERS, get_method
from ._batch import Batch, forward_values
from ._keys import time_steps
from ._metrics import QUANTITIES, STUDY_METRICS, Runs

__all__ = ["Block", "BlockResult", "LimitSetup", "Member", "block_bytes", "block_errors",
           "build_limit", "compile_block", "grid_reference", "grid_values", "make_batch",
           "measure_values", "plan", "run_block"]

# Cost model of the planner, measured on a 2-core CPU (benchmarks/README.md):
# seconds per unit L * M * D * N of one member-step, and seconds to compile one
# block shape (training chunk + forward).
SECONDS_PER_UNIT = 7e-10
SECONDS_PER_COMPILE = 2.5
# Bytes one member needs, in units of its particle array: the theta-sized arrays one step
# of the method holds (``step_copies``, the run preflight's count), less the copy a study
# saves by training a fixed-step method in place (``integrate(donate=True)``). XLA's memory
# analysis of a block's chunk, member's theta = 1, donated: euler 1 + 1.25 (temporaries),
# heun 1 + 3.28, ssprk3 1 + 4.3; counted: 4, 6, 8.
def memory_factor(method: str) -> float:
    return float(get_method(method).step_copies - (method in STEPPERS))


_REFERENCE_TAG = 0x5EF


@dataclass(frozen=True)
class Member:
    """One run: shape index (iL, iM, iD), its sizes, and the repetition r.

    ``half`` h in (1, 2): the run of the h-th half (M particles) of the "particles"
    reference's reference_M particles (the reference's error floor, ``_floor``); 0 otherwise.
    """

    index: tuple[int, int, int]
    L: int
    M: int
    D: int
    rep: int
    half: int = 0


@dataclass(frozen=True)
class Block:
    """Members trained together at one compiled (padded) shape.

    ``size`` is the compiled member count; members beyond ``len(members)`` are
    copies of the last one whose results are dropped (every block of a
    bucket then shares one compilation).
    """

    L: int
    M: int
    D: int
    members: tuple[Member, ...]
    size: int
    reference: bool = False  # a block of the "particles" reference

    @property
    def cost(self) -> float:
        """Relative cost (units L M D of one step, summed over the compiled members)."""
        return float(self.size) * self.L * self.M * self.D


class LimitSetup(NamedTuple):
    config: dict
    study: dict
    x: np.ndarray  # (N, d_in), float64
    y: np.ndarray  # (N, d_out)
    dtype: object
    dims: list[int]  # the swept D, or [model.dim]
    schedule: Schedule | None  # None when every time is 0 (forward passes only)
    steps: list[int]  # step index of each study time
    regularization: Regularization
    depth: LayeredDepth | ContinuousDepth  # the finite networks' depth
    continuous: ContinuousDepth  # the solver's continuous-depth settings

    @property
    def random_embedding(self) -> bool:
        return self.config["model"]["embedding"] == "random"

    @property
    def tokens(self) -> int | None:
        """Tokens per sample of sequence data (None: vectors)."""
        return self.config["data"].get("tokens")

    def feature(self, D: int):
        m = self.config["model"]
        return feature_from_config(m, dim=D, tokens=self.tokens)

    def maps(self, D: int, rep: int):
        """(A, C) of repetition ``rep`` at state dimension D, float64 NumPy (None: pad /
        coordinates): the random maps, or a sequence's token maps (``_build.random_maps``)."""
        data = self.config["data"]
        A, C = random_maps(self.config["model"], self.config["seed"], data["dim"],
                           self.y.shape[1], None, stream=rep, dim=D, tokens=self.tokens)
        return (None if A is None else np.asarray(A)), (None if C is None else np.asarray(C))

    def k(self, D: int) -> int:
        return self.feature(D).k

    def reference_shape(self) -> tuple[int, int, int]:
        s = self.study
        D = s["reference_dim"] if s["reference_dim"] is not None else self.dims[-1]
        return s["reference_L"], s["reference_M"], D

    def reference_depth(self):
        return self.continuous if self.study["reference_depth"] == "continuous" else LayeredDepth()

    @property
    def random_maps(self) -> bool:
        m = self.config["model"]
        return m["embedding"] == "random" or m["readout"] == "random"

    @property
    def carries_twins(self) -> bool:
        """Whether the "particles" reference carries the sweep's twins: a selected metric reads
        them (``Runs.twins``, declared by ``needs`` containing "particles" and ``twins``) and
        no D is swept (a twin lives in the reference's coordinates)."""
        st = self.study
        return (st["reference"] == "particles" and st["dims"] is None
                and any(STUDY_METRICS[m].twins for m in st["metrics"]))

    @property
    def n_twins(self) -> int:
        """Twin columns per reference slice (``twin_layout``); 0 without twins."""
        return twin_layout(self)[1] if self.carries_twins else 0

    @property
    def quantities(self) -> tuple[str, ...]:
        """The per-run quantities kept at the study times: those the selected metrics need,
        and the loss (stored for every run, ``/values/loss``)."""
        need = {"loss"}.union(*(STUDY_METRICS[m].needs for m in self.study["metrics"]))
        return tuple(q for q in QUANTITIES if q in need)


def build_limit(config: dict, study: dict) -> LimitSetup:
    """Data, schedule and depth objects of a limit study (``study`` from ``resolve_limit``)."""
    dtype = dtype_of(config)
    data, model, solver, train = (config[s] for s in ("data", "model", "solver", "train"))
    dims = study["dims"] or [model["dim"]]
    try:
        feature = feature_from_config(model, dim=dims[-1], tokens=data.get("tokens"))
        x, y = make_dataset(
            data["kind"], n=data["n"], dim=data["dim"], seed=config["seed"], feature=feature,
            out_dim=data["out_dim"], noise=data["noise"], path=data["path"],
            teacher_width=data["teacher_width"], teacher_depth=data["teacher_depth"],
            teacher_std=data["teacher_std"],
            classes=None if data["classes"] is None else tuple(data["classes"]),
            tokens=data.get("tokens"))
        x = x.reshape(x.shape[0], -1)  # sequences flattened (N, n d_in)
        regularization = Regularization(train["l2"], train["l2_schedule"], train["l2_decay"],
                                        train["temperature"])
        continuous = ContinuousDepth(adjoint=solver["adjoint"], solver=solver["ode_solver"],
                                     rtol=solver["rtol"], atol=solver["atol"])
    except (DataError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if data["kind"] == "teacher" and study["dims"] is not None:
        raise ConfigError("study.dims: teacher data are made by a network of state dimension "
                          "model.dim; sweep D with another data set (e.g. data.kind = \"gaussian\")")
    steps = time_steps(study["times"], train["dt"])
    schedule = None
    if max(steps) > 0:
        every = math.gcd(*[n for n in steps if n > 0])
        schedule = Schedule(max(study["times"]), train["dt"], train["method"], every, 2,
                            train["rtol"], train["atol"], train["divergence_factor"])
        # Schedule takes ceil(S/dt) equal steps of S/n: with S a multiple of dt that is dt.
        steps = [round(t / schedule.step) for t in study["times"]]
    depth = LayeredDepth() if solver["depth"] == "layers" else continuous
    return LimitSetup(config, study, x, y, dtype, dims, schedule, steps, regularization, depth,
                      continuous)


# ----------------------------------------------------------------------------- planning


def _ladders(values: list[int]) -> list[list[int]]:
    """For m = 1..n, the m bucket tops minimizing sum_v top(v) (top(v) = smallest top >= v)."""
    v = sorted(values)
    n = len(v)
    INF = float("inf")
    # f[c][j]: best cost of v[0..j] with c buckets, the last topped by v[j]
    f = [[INF] * n for _ in range(n + 1)]
    arg = [[-1] * n for _ in range(n + 1)]
    for j in range(n):
        f[1][j] = (j + 1) * v[j]
    for c in range(2, n + 1):
        for j in range(c - 1, n):
            for i in range(c - 1, j + 1):  # last bucket covers v[i..j]
                cost = f[c - 1][i - 1] + (j - i + 1) * v[j]
                if cost < f[c][j]:
                    f[c][j], arg[c][j] = cost, i
    out = []
    for m in range(1, n + 1):
        tops, j, c = [], n - 1, m
        while c >= 1:
            tops.append(v[j])
            if c == 1:
                break
            j, c = arg[c][j] - 1, c - 1
        out.append(sorted(tops))
    return out


def _top(ladder: list[int], v: int) -> int:
    return min(t for t in ladder if t >= v)


def member_bytes(setup: LimitSetup, L: int, M: int, D: int, reference: bool = False) -> float:
    """Estimated bytes of one member at (padded) shape (L, M, D): its particles and their
    copies in a step (``memory_factor``; a reference's twins are particles too), the layer
    states, and the kernel's (N, M) blocks (at most 8 of ``solver.tile`` elements, as in the
    run preflight)."""
    from .._preflight import _block

    item = np.dtype(setup.dtype).itemsize
    N = setup.x.shape[0]
    M = M + (setup.n_twins if reference else 0)
    neuron = setup.config["model"]["feature"] == "neuron" and not setup.tokens
    return (memory_factor(setup.config["train"]["method"]) * L * M * setup.k(D) * item
            + 4.0 * L * N * D * (setup.tokens or 1) * item
            + 8.0 * _block(N * (setup.tokens or 1), M, setup.config["solver"],
                           D if neuron else None) * item)


def block_bytes(setup: LimitSetup, block: Block) -> float:
    """Estimated bytes of a block: ``member_bytes`` of its padded shape times its size."""
    return member_bytes(setup, block.L, block.M, block.D, block.reference) * block.size


def plan(setup: LimitSetup) -> list[Block]:
    """The blocks of a study: reference blocks first, then the sweep, cheapest first."""
    study = setup.study
    Ls, Ms, Ds, S = study["L"], study["M"], setup.dims, study["seeds"]
    N = setup.x.shape[0]
    steps = (setup.schedule.n_steps if setup.schedule else 0) + len(setup.steps)
    kappa = sum(Ls) * N * max(steps, 1) * S * SECONDS_PER_UNIT
    ladders_M = _ladders(Ms)
    pad_D = study["dims"] is not None and setup.regularization.temperature == 0
    ladders_D = _ladders(Ds) if pad_D else [sorted(Ds)]
    best = None
    for lm, ld in itertools.product(ladders_M, ladders_D):
        A = sum(_top(lm, m) for m in Ms)
        B = sum(_top(ld, d) for d in Ds)
        cost = kappa * A * B + SECONDS_PER_COMPILE * len(lm) * len(ld) * len(Ls)
        if best is None or cost < best[0]:
            best = (cost, lm, ld)
    _, lm, ld = best
    budget = study["memory"] * 2**30
    blocks: list[Block] = []
    if study["reference"] == "grid":
        # deterministic: one run for all repetitions, or one per repetition's random maps
        Lr, D = study["reference_L"], Ds[-1]
        cells = math.prod(study["grid"]["cells"])
        members = [Member((-1, -1, -1), Lr, cells, D, r) for r in range(S)]
        groups = [[m] for m in members] if setup.random_maps else [members]
        blocks += [Block(Lr, cells, D, tuple(g), 1, reference=True) for g in groups]
    if study["reference"] == "particles":
        Lr, Mr, Dr = setup.reference_shape()
        members = [Member((-1, -1, -1), Lr, Mr, Dr, r) for r in range(S)]
        blocks += _split(setup, members, Lr, Mr, Dr, budget, reference=True)
    sweep: list[Block] = []
    for iL, L in enumerate(Ls):
        buckets: dict[tuple[int, int], list[Member]] = {}
        for (iM, M), (iD, D) in itertools.product(enumerate(Ms), enumerate(Ds)):
            top = (_top(lm, M), _top(ld, D))
            buckets.setdefault(top, []).extend(Member((iL, iM, iD), L, M, D, r) for r in range(S))
        for (Mp, Dp), members in buckets.items():
            sweep += _split(setup, members, L, Mp, Dp, budget)
    sweep.sort(key=lambda b: (b.L * b.M * b.D, b.L, b.M, b.D))
    return blocks + sweep


def _split(setup, members, L, M, D, budget, reference=False) -> list[Block]:
    need = member_bytes(setup, L, M, D, reference)
    if need > budget:
        raise ConfigError(
            f"study.memory = {setup.study['memory']!r}: one run of shape (L, M, D) = ({L}, {M}, {D}) "
            f"needs about {need / 2**30:.2f} GiB; raise study.memory (GiB) or shrink the shape")
    b_max = max(1, int(budget // need))
    n_blocks = math.ceil(len(members) / b_max)
    size = math.ceil(len(members) / n_blocks)
    return [Block(L, M, D, tuple(members[i:i + size]), size, reference)
            for i in range(0, len(members), size)]


# ----------------------------------------------------------------------------- running


def _particles(setup: LimitSetup, member: Member, reference: bool) -> np.ndarray:
    """Member's initial particles (L, M, k(D)) in the study's dtype (module docstring).

    Drawn with NumPy (PCG64 seeded by SeedSequence([seed, 1, r, tag, L, M, D]), tag =
    0x5EF for the reference, else 0; with shared sampling L is replaced by 0, so that every
    depth of the sweep uses the same M particles), not with ``jax.random``: a JAX sampler compiles once
    per array shape, which for hundreds of shapes costs more than the runs. The law is
    ``init_particles``': gaussian mean + std xi, uniform low + (high - low) u (default box
    mean +- sqrt(3) std), point: every particle at mean.
    """
    init, dt = setup.config["init"], np.dtype(setup.dtype)
    tag = _REFERENCE_TAG if reference else 0
    shared = setup.study["sampling"] == "shared"
    M = setup.reference_shape()[1] if member.half else member.M  # a half: draw all, keep half
    rng = np.random.default_rng(np.random.SeedSequence(
        [setup.config["seed"], 1, member.rep, tag, 0 if shared else member.L, M, member.D]))
    k = setup.k(member.D)
    shape = (1 if shared else member.L, M, k)
    mean = per_coord(init["mean"], k, "init.mean").astype(dt)
    std = per_coord(init["std"], k, "init.std").astype(dt)
    if init["kind"] == "gaussian":
        theta = rng.standard_normal(shape, dtype=dt)
        theta *= std
        theta += mean
    elif init["kind"] == "uniform":
        lo = mean - np.sqrt(3.0) * std if init["low"] is None else per_coord(init["low"], k, "init.low")
        hi = mean + np.sqrt(3.0) * std if init["high"] is None else per_coord(init["high"], k, "init.high")
        theta = rng.random(shape, dtype=dt)
        theta *= (hi - lo).astype(dt)
        theta += lo.astype(dt)
    else:  # point
        theta = np.broadcast_to(mean, shape)
    if member.half:
        theta = theta[:, (member.half - 1) * member.M: member.half * member.M]
    return np.broadcast_to(theta, (member.L, member.M, k))


def _pad_particles(setup: LimitSetup, theta: np.ndarray, D: int, Mp: int, Dp: int) -> np.ndarray:
    """(L, M, k(D)) -> (L, Mp, k(Dp)): the block's ``lift`` to Dp coordinates, then padding
    particles (copies of the last one, which the batch gives weight 0) (``_batch``)."""
    theta = setup.feature(D).lift(theta, Dp)
    M = theta.shape[1]
    return np.pad(theta, ((0, 0), (0, Mp - M), (0, 0)), mode="edge")


def _workers(n: int) -> int:
    """Threads for n independent draws: NumPy's generators release the GIL while they fill."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n, cores or 1))


def make_batch(setup: LimitSetup, block: Block) -> tuple[Problem, Batch]:
    """The shared problem (state dimension block.D) and the block's initial batch of members.

    The members' particles are drawn in parallel threads: each member has its own generator,
    so the numbers do not depend on the order, and NumPy's generators release the GIL while
    they fill (at M = D = 2000 one member's 4e8 normal draws take ~4 s). The slots past the
    real members repeat the last one.
    """
    members = list(block.members)
    dt = setup.dtype
    Mp, Dp = block.M, block.D
    twins = block.reference and setup.carries_twins and not members[0].half

    def particles(m: Member) -> np.ndarray:
        th = _particles(setup, m, block.reference)
        if (m.M, m.D) != (Mp, Dp):
            th = _pad_particles(setup, th, m.D, Mp, Dp)
        if twins:  # the sweep's initial particles of this repetition (``twin_layout``)
            th = _with_twins(setup, m.rep, th)
        return th

    with ThreadPoolExecutor(_workers(len(members))) as pool:
        thetas = list(pool.map(particles, members))
    thetas += thetas[-1:] * (block.size - len(members))
    members += members[-1:] * (block.size - len(members))
    theta = jnp.asarray(np.stack(thetas, axis=1) if len(thetas) > 1 else thetas[0][:, None], dt)
    del thetas
    W = None
    if any(m.M != Mp for m in members) or twins:
        weights = np.zeros((block.L, block.size, theta.shape[2]), dt)
        for j, m in enumerate(members):  # 1/M on a member's real particles, 0 on padding, twins
            weights[:, j, :m.M] = 1.0 / m.M
        W = jnp.asarray(weights, dt)
    embs, ros = [], []
    if setup.random_maps:  # each member's own maps, padded to the block's D
        for m in members:
            A, C = setup.maps(m.D, m.rep)
            if A is not None:
                embs.append(np.pad(A, ((0, Dp - m.D), (0, 0))))
            if C is not None:
                ros.append(np.pad(C, ((0, 0), (0, Dp - m.D))))
    A = jnp.asarray(np.stack(embs), dt) if embs else None
    C = jnp.asarray(np.stack(ros), dt) if ros else None
    # the shared problem carries member 0's maps (the batch swaps in each member's own), so
    # that a state dimension below d_in / d_out passes Problem's checks
    A0, C0 = (None, None) if setup.random_maps else setup.maps(Dp, 0)  # shared token maps
    A0 = A0 if A is None else A[0]
    C0 = C0 if C is None else C[0]
    problem = Problem(setup.feature(Dp), jnp.asarray(setup.x, dt), jnp.asarray(setup.y, dt),
                      embedding=None if A0 is None else jnp.asarray(A0, dt),
                      readout_matrix=None if C0 is None else jnp.asarray(C0, dt))
    return problem, Batch(theta, W, A, C, twins=twins, quantities=kept_quantities(setup))


def _with_twins(setup: LimitSetup, rep: int, theta: np.ndarray) -> np.ndarray:
    """A reference member's particles (L_ref, M_ref, k) with the twins of repetition ``rep``
    appended: (L_ref, M_ref + Q, k) (the batch gives them weight 0; unused twin columns
    repeat the slice's last particle)."""
    layout, Q = twin_layout(setup)
    Mr = theta.shape[1]
    out = np.concatenate([theta, np.repeat(theta[:, -1:], Q, axis=1)], axis=1)
    for (iL, iM), (j, col) in layout.items():
        L, M = setup.study["L"][iL], setup.study["M"][iM]
        th = _particles(setup, Member((iL, iM, 0), L, M, setup.dims[-1], rep), False)
        for l in range(L):
            out[j[l], Mr + col[l]: Mr + col[l] + M] = th[l]
    return out


class BlockResult(NamedTuple):
    """A block's quantities (``_metrics.QUANTITIES``) at the study times, real members only.

    float64 arrays, NaN where not reached; None for a quantity that no selected metric needs
    (``LimitSetup.quantities``; ``weights`` comes with ``particles``).
    """

    loss: np.ndarray | None  # (b, n_t)
    prediction: np.ndarray | None  # (b, n_t, N, d_out)
    state: np.ndarray | None  # (b, n_t, N, D_pad)
    particles: np.ndarray | None = None  # (b, n_t, L, M_pad, k_pad)
    weights: np.ndarray | None = None  # (b, n_t, L, M_pad)


def kept_quantities(setup: LimitSetup) -> tuple[str, ...]:
    """What a block keeps of every run at the study times ("loss" first): the selected
    metrics' quantities, and the weights with the particles."""
    return setup.quantities + (("weights",) if "particles" in setup.quantities else ())


def _empty(setup: LimitSetup, b: int, D: int, L: int, M: int, k: int) -> dict[str, np.ndarray]:
    """NaN arrays of the kept quantities of b runs of state dimension D, L slices of M points
    with k parameters, at the study times."""
    per_run = {"loss": (), "prediction": (setup.x.shape[0], setup.y.shape[1]),
               "state": (setup.x.shape[0], D), "particles": (L, M, k), "weights": (L, M)}
    return {q: np.full((b, len(setup.steps)) + per_run[q], np.nan) for q in kept_quantities(setup)}


_forward = eqx.filter_jit(lambda flow, batch: flow.diagnostics(batch, 0.0))
_forward_one = eqx.filter_jit(forward_values)


def run_block(setup: LimitSetup, block: Block, depth, key, on_progress=None,
              should_stop=None, prepared: tuple[Problem, Batch] | None = None
              ) -> BlockResult | None:
    """Train the block's members by the flow and record them at the study times.

    Returns None when ``should_stop()`` became true (the block is dropped).
    ``on_progress(fraction)`` is called with the fraction of the block's steps
    done so far. ``prepared``: the block's ``make_batch``, when it was built ahead.
    """
    problem, batch = make_batch(setup, block) if prepared is None else prepared
    b = len(block.members)
    L, _, Mc, k = batch.theta.shape  # Mc: the block's M, and the twins a reference carries
    kept = _empty(setup, b, block.D, L, Mc, k)
    where = {}
    for j, n in enumerate(setup.steps):
        where.setdefault(n, []).append(j)

    def keep(step, values):
        for j in where.get(step, []):
            for q, array in kept.items():
                array[:, j] = values[q][:b]

    result = BlockResult(**{q: kept.get(q) for q in BlockResult._fields})
    if setup.schedule is None:
        from .._flow import make_flow

        flow = make_flow(problem, depth, batch, setup.regularization)
        keep(0, {k: np.asarray(v) for k, v in _forward(flow, batch).items()})
        if on_progress:
            on_progress(1.0)
        return result
    # between the chunks' calls, keep at most one block's estimated memory free (``_Watch``)
    watch = _Watch(on_progress, should_stop, setup.schedule.n_steps,
                   keep=block_bytes(setup, block))

    def callback(rec):
        if rec.history:
            keep(rec.step, rec.values)
        return watch(rec.step)

    # donate: the batch is updated in place (its initial buffers are not read again here);
    # the records' values are kept by the callback, not also in the run's history
    run = integrate(problem, depth, setup.schedule, theta0=batch,
                    regularization=setup.regularization, key=key, callback=callback, poll=watch,
                    donate=True, keep_history=False)
    if run.status == "interrupted" and watch.stopped:
        return None
    return result


def compile_block(setup: LimitSetup, block: Block, depth, key,
                  prepared: tuple[Problem, Batch]) -> None:
    """Compile the programs ``run_block(setup, block, depth, key, prepared=prepared)`` runs,
    without running them (``integrate``'s ``compile_ahead``; the batch is not donated)."""
    if setup.schedule is not None:
        problem, batch = prepared
        compile_ahead(problem, depth, setup.schedule, theta0=batch,
                      regularization=setup.regularization, key=key, donate=True)


class _Watch:
    """Progress and stop requests of a block's training: ``integrate``'s callback (at records)
    and poll (between them, so that a long chunk moves the bar and stops within seconds).

    With ``keep`` (bytes) it also bounds the heap between the calls. Every call of the
    compiled chunk allocates its temporaries (2x theta) anew, 64-byte aligned, and glibc
    (before 2.38) serves an aligned request of a freed buffer's own size only from a larger
    hole: without the ``wflow`` command's aligned-reuse shim
    (``_wflow_entry.preload_aligned_reuse``) the heap grew by a few hundred MB per call (a
    reference block of theta = 1.6 GB reached 23.7 GB resident and was OOM-killed). So:

    * without the shim, when the heap has grown since the last check
      (``_preflight.heap_size``) and the allocator holds more than ``keep`` free, that
      memory is given back (``_preflight.release_free_memory``);
    * with it, the temporaries reuse their holes and the heap stops growing after the first
      calls (at M = D = 2000: 3.3, 6.5, 9.7 GB, then 6.5 GB at every later call); memory is
      given back only when the heap exceeds its size at the block's first check by more
      than ``keep``, so that warming up costs no second faulting-in of the same memory.

    A block's estimate (``member_bytes``) is its ``keep``.
    """

    def __init__(self, on_progress, should_stop, total: int, keep: float | None = None,
                 reuse: bool | None = None):
        self.on_progress, self.should_stop, self.total = on_progress, should_stop, total
        self.keep = keep
        if reuse is None:
            from _wflow_entry import aligned_reuse_counts

            reuse = aligned_reuse_counts() is not None
        self.reuse = reuse
        self.heap = None  # the heap's size after the last check (reuse: at the first check)
        self.stopped = False

    def __call__(self, step: int) -> bool:
        if self.keep is not None:
            self._bound_heap()
        if self.on_progress and self.total:
            self.on_progress(step / self.total)
        self.stopped = bool(self.should_stop and self.should_stop())
        return self.stopped

    def _bound_heap(self) -> None:
        heap = heap_size()
        if heap is None:  # not glibc >= 2.33: give back whatever is free beyond keep
            release_free_memory(keep=self.keep)
        elif self.reuse:
            if self.heap is None:
                self.heap = heap
            elif heap > self.heap + self.keep:
                release_free_memory(keep=self.keep)
                self.heap = heap_size()
        elif self.heap is None or heap > self.heap:
            release_free_memory(keep=self.keep)
            self.heap = heap_size()


def measure_values(setup: LimitSetup, problem: Problem, depth, measure0, key, *,
                   inspect=None, on_progress=None, should_stop=None) -> BlockResult | None:
    """Values of one run of *any* measure representation at the study times: (1, n_t, ...).

    The generic reference path: ``integrate`` is stopped at each study time by its callback
    (status "interrupted", a resumable ``FlowState``), the measure is read as weighted
    particles (``Flow.weighted``: particles, or grid cells as weighted points) and one forward
    pass (``_batch.forward_values``) gives the kept quantities; then the flow continues from
    that state. The grid
    reference is this function with ``measure0 = GridDensity(...)`` (``grid_reference``) and
    ``depth`` the reference's depth discretization.

    ``inspect(j, flow, measure)`` is called at study time j (e.g. to read the grid's wall
    mass); ``on_progress(fraction)`` after every record; returns None when ``should_stop()``
    became true (the run is dropped).
    """
    from .._flow import make_flow

    flow = make_flow(problem, depth, measure0, setup.regularization)
    Theta0, _ = flow.weighted(measure0)
    kept = _empty(setup, 1, problem.d, *Theta0.shape)
    watch = _Watch(on_progress, should_stop,
                   setup.schedule.n_steps if setup.schedule is not None else 0)
    state, initial = None, None

    def callback(rec, target):
        return watch(rec.step) or rec.step >= target

    for target in sorted(set(setup.steps)):
        if target > 0 and (state is None or state.step < target):
            result = integrate(problem, depth, setup.schedule, theta0=measure0, state=state,
                               regularization=setup.regularization, key=key,
                               initial_loss=initial, poll=watch,
                               callback=lambda rec, target=target: callback(rec, target))
            if initial is None and result.history["loss"].size:
                initial = float(result.history["loss"][0])
            if result.status == "diverged":
                break
            if watch.stopped and result.state.step < target:
                return None
            state = result.state
        measure = measure0 if state is None else state.measure
        values = _forward_one(flow, measure)
        for j, n in enumerate(setup.steps):
            if n == target:
                for q, array in kept.items():
                    array[0, j] = np.asarray(values[q])
                if inspect is not None:
                    inspect(j, flow, measure)
    if on_progress:
        on_progress(1.0)
    return BlockResult(**{q: kept.get(q) for q in BlockResult._fields})


def grid_reference(setup: LimitSetup, rep: int):
    """(problem, depth, GridDensity) of the grid reference of repetition ``rep``.

    The problem has state dimension model.dim and repetition ``rep``'s random maps (stream
    rep, as the sweep's members); the density is init's law as exact cell averages on the
    [study.grid] box (``init_density``) in every one of ``reference_L`` slices.
    """
    from .._grid import FiniteVolume, Grid, init_density

    st, init = setup.study, setup.config["init"]
    D, dt = setup.dims[-1], setup.dtype
    feature = setup.feature(D)
    g = st["grid"]
    grid = Grid.box(g["cells"], g["bounds"], feature.k)
    fv = FiniteVolume(g["scheme"], g.get("limiter"), g["cfl"])
    density = init_density(init["kind"], grid, st["reference_L"], mean=init["mean"],
                           std=init["std"], low=init["low"], high=init["high"], dtype=dt, fv=fv)
    A, C = setup.maps(D, rep)
    problem = Problem(feature, jnp.asarray(setup.x, dt), jnp.asarray(setup.y, dt),
                      embedding=None if A is None else jnp.asarray(A, dt),
                      readout_matrix=None if C is None else jnp.asarray(C, dt))
    return problem, setup.reference_depth(), density


def grid_values(setup: LimitSetup, block: Block, key, on_progress=None, should_stop=None):
    """The grid reference of a block's repetitions: (BlockResult (b, ...), wall mass (b, n_t)).

    One run (``measure_values``) serves every member of the block: they are the repetitions
    sharing it (all of them without random maps). Returns None when stopped.
    """
    from .._grid import wall_mass

    problem, depth, density = grid_reference(setup, block.members[0].rep)
    wall = np.full((1, len(setup.steps)), np.nan)

    def inspect(j, flow, measure):
        wall[0, j] = float(wall_mass(measure))

    res = measure_values(setup, problem, depth, density, key, inspect=inspect,
                         on_progress=on_progress, should_stop=should_stop)
    if res is None:
        return None
    b = len(block.members)
    tile = lambda a: None if a is None else np.repeat(a, b, axis=0)
    return BlockResult(*(tile(a) for a in res)), tile(wall)


def block_errors(setup: LimitSetup, block: Block, run: BlockResult, ref: BlockResult,
                 ref_index=None, ref_D: int | None = None) -> dict[str, np.ndarray]:
    """Errors (b, n_t) of a block's members against their references, one per selected metric.

    ``ref_index[j]`` is the row of ``ref`` that member j is compared with
    (None: row j, the "continuous" reference of the same member); ``ref_D`` is
    the reference's state dimension (None: the member's own D).
    """
    rows = np.arange(len(block.members)) if ref_index is None else np.asarray(ref_index)
    dims = tuple(m.D for m in block.members)
    runs = Runs.of(run, dims, setup.random_embedding, settings=setup.study)
    refd = BlockResult(*(None if a is None else a[rows] for a in ref))
    twins = None
    if ref.particles is not None:
        # the twins of member j: the "continuous" reference's own particles (row j), or the
        # passive points the "particles" reference carried for it
        twins = (refd.particles if ref_index is None
                 else twin_rows(setup, block, refd.particles) if setup.carries_twins else None)
    refs = Runs.of(refd, dims if ref_D is None else (ref_D,) * len(dims), setup.random_embedding,
                   twins=twins, settings=setup.study)
    return {name: STUDY_METRICS[name].compute(runs, refs) for name in setup.study["metrics"]}


def twin_layout(setup: LimitSetup) -> tuple[dict, int]:
    """Where the "particles" reference carries the twins of every sweep run.

    Layer l of a run with L layers is paired with the reference's slice
    j(l) = floor((l + 1/2) L_ref / L) (the slice at the middle of its depth interval
    [l / L, (l + 1) / L]); its M twins sit in that slice after the reference's own
    reference_M particles. Returns ({(iL, iM): (j (L,), first column (L,))}, Q) with Q the
    largest number of twin columns of a slice. The same for every repetition.
    """
    Lr = setup.study["reference_L"]
    used = np.zeros(Lr, int)
    layout = {}
    for iL, L in enumerate(setup.study["L"]):
        for iM, M in enumerate(setup.study["M"]):
            j = np.minimum(((np.arange(L) + 0.5) * Lr / L).astype(int), Lr - 1)
            col = np.empty(L, int)
            for l in range(L):
                col[l] = used[j[l]]
                used[j[l]] += M
            layout[(iL, iM)] = (j, col)
    return layout, int(used.max())


def twin_rows(setup: LimitSetup, block: Block, ref_particles: np.ndarray) -> np.ndarray:
    """The twins of the block's members, (b, n_t, L, M_pad, k), from the reference's particles
    (b, n_t, L_ref, M_ref + Q, k) taken at each member's repetition (``twin_layout``); padded
    particles get NaN twins (their weight is 0)."""
    layout, _ = twin_layout(setup)
    Mr = setup.reference_shape()[1]
    b, T = ref_particles.shape[:2]
    k = ref_particles.shape[-1]
    out = np.full((b, T, block.L, block.M, k), np.nan)
    for n, m in enumerate(block.members):
        j, col = layout[m.index[:2]]
        for l in range(m.L):
            out[n, :, l, :m.M] = ref_particles[n, :, j[l], Mr + col[l]: Mr + col[l] + m.M]
    return out
