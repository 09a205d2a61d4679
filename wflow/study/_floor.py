"""The reference's own error (its *floor*), measured for every reference kind.

A limit study measures finite networks against a reference that has an error of its own;
once a finite network's error is of that size, the error says nothing about the finite
network. ``reference_floor`` estimates the reference's error in each metric at each study
time, (T,) per metric, stored as ``/reference/floor/<metric>``:

* "continuous": one run (the largest shape of the sweep, repetition 0) is redone in
  continuous depth at 10x tighter solver.rtol and solver.atol and with its steps clipped at
  twice as many points (the depth nodes and the midpoints between them); the floor is the
  metric between the two. The ODE solver's global error is about proportional to its
  tolerance, or, where the node spacing limits the steps, to h^p (Tsit5: p = 5), so the
  second run's error is 10-32x smaller and the difference estimates the reference's error
  to within ~10%.
* "particles": the reference's error is its sampling error, and two independent references
  of the same law disagree by sqrt(2) times it (a metric of order q, i.e. ~ distance^q:
  2^(q/2) times). When the repetitions share one limit (the same data and maps; they differ
  in their draws only) and there are at least ``PAIRS_FROM`` of them, the references the
  study already has are those independent draws: the floor is the disagreement d of
  repetition r's reference with repetition r + 1's (cyclically), RMS over r, divided by
  2^(q/2). No extra run: the floor costs the metrics only (it used to cost as much as the
  reference). Otherwise (random maps per repetition, or fewer repetitions) the reference's
  reference_M particles are split into two halves of reference_M / 2, each trained on its
  own; a half's error is 2^(q/2) times the full reference's (the distance ~ 1 / sqrt(M)),
  so the floor is d / 2^q, RMS over the repetitions. Metrics that pair each particle
  with its twin (``coupling``) have no floor here (NaN): independent references have no
  pairing.
* "grid": the grid reference of repetition 0 is redone with half the cells per axis (cell
  width r h, r = n / floor(n / 2)); with the scheme's order q (upwind 1, muscl 2) the error
  is e(h) ~ C h^q, so |u_h - u_rh| = (r^q - 1) e(h) (Richardson) and the floor is
  d / (r^q - 1).

``_sweep.fit_limit`` flags the points within 3x of the floor and leaves them out of the
fits; the table prints the floor, the figures draw it as a band.
"""

from __future__ import annotations

import math

import numpy as np

from .._depth import ContinuousDepth
from ._limit import Block, BlockResult, LimitSetup, Member, _split, grid_values, run_block
from ._metrics import STUDY_METRICS, Runs

__all__ = ["SCHEME_ORDER", "reference_floor", "shares_one_limit"]

SCHEME_ORDER = {"upwind": 1, "muscl": 2}
"""Order of accuracy in the cell width of the grid's finite-volume schemes (``wflow._grid``)."""

TIGHTER = 10.0  # the "continuous" floor: rtol and atol divided by this
PAIRS_FROM = 4  # the "particles" floor from the repetitions' own references from this many on


def reference_floor(setup: LimitSetup, reference: BlockResult | None, key, on_progress=None,
                    should_stop=None, halves: bool | None = None) -> dict[str, np.ndarray] | None:
    """{metric: (T,)} the reference's own error (module docstring).

    ``reference``: the stored "particles" / "grid" reference (one row per repetition;
    None for "continuous"); ``key``: the PRNG key of the extra runs; ``on_progress(fraction)``
    is called as the extra runs train (fraction of all of them); returns None when
    ``should_stop()`` became true during them (nothing is kept: a resumed study redoes the
    floor). ``halves``: for "particles", force (True) or forbid (False) the two-halves
    estimate; None chooses (module docstring).
    """
    kind = setup.study["reference"]
    runs = _Runs(on_progress, should_stop)
    if kind == "particles":
        if halves is None:
            halves = not shares_one_limit(setup)
        out = (_halves if halves else _pairs)(setup, reference, key, runs)
        return None if runs.stopped else out
    out = {"continuous": _continuous, "grid": _grid}[kind](setup, reference, key, runs)
    return None if runs.stopped else out


class _Runs:
    """Progress and stop requests over the floor's extra runs (``progress(lo, hi)``: a run
    that covers the fractions [lo, hi] of the floor's work)."""

    def __init__(self, on_progress, should_stop):
        self.on_progress, self.should_stop = on_progress, should_stop
        self.stopped = False

    def progress(self, lo: float, hi: float):
        if self.on_progress is None:
            return None
        return lambda frac: self.on_progress(lo + (hi - lo) * frac)


def _metrics(setup: LimitSetup, run: BlockResult, ref: BlockResult, dims, twins=False) -> dict:
    """The metrics between two versions of the reference. ``twins``: the second one's particles
    are the first one's twins (the same initial particles: "continuous"); otherwise a metric
    reading twins gives NaN (two independent references have no pairing)."""
    a = Runs.of(run, dims, setup.random_embedding, settings=setup.study)
    b = Runs.of(ref, dims, setup.random_embedding, settings=setup.study,
                twins=ref.particles if twins else None)
    return {m: STUDY_METRICS[m].compute(a, b) for m in setup.study["metrics"]}


def _continuous(setup: LimitSetup, reference, key, runs: _Runs) -> dict | None:
    st = setup.study
    L, M, D = st["L"][-1], st["M"][-1], setup.dims[-1]
    index = (len(st["L"]) - 1, len(st["M"]) - 1, len(setup.dims) - 1)
    block = Block(L, M, D, (Member(index, L, M, D, 0),), 1)
    c = setup.continuous
    # 10x tighter tolerances and twice the forced steps: the depth nodes clip the solver's
    # steps, and where the node spacing already meets both tolerances the two runs would take
    # the very same steps (a floor of exactly 0); halving the clipped steps cuts a
    # p-th-order solver's error 2^p-fold (Tsit5: 32), so the difference is the error.
    tight = ContinuousDepth(adjoint=c.adjoint, solver=c.solver, rtol=c.rtol / TIGHTER,
                            atol=c.atol / TIGHTER, max_steps=c.max_steps * 4, subdivide=2)
    normal = run_block(setup, block, c, key, runs.progress(0.0, 1 / 3), runs.should_stop)
    fine = None if normal is None else run_block(setup, block, tight, key,
                                                 runs.progress(1 / 3, 1.0), runs.should_stop)
    if fine is None:  # stopped (the tight run costs about twice the normal one)
        runs.stopped = True
        return None
    return {m: e[0] for m, e in _metrics(setup, normal, fine, (D,), twins=True).items()}


def shares_one_limit(setup: LimitSetup) -> bool:
    """Whether the repetitions' "particles" references are independent draws of one law with
    one limit, at least ``PAIRS_FROM`` of them: the same maps (none, or equal) for all."""
    S, Dr = setup.study["seeds"], setup.reference_shape()[2]
    if S < PAIRS_FROM:
        return False
    first = setup.maps(Dr, 0)
    for r in range(1, S):
        for a, b in zip(first, setup.maps(Dr, r)):
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                return False
    return True


def _per_order(d: dict, halves: bool) -> dict:
    """{metric: (T,)} the floor from the disagreements d (S, T) of pairs of independent
    references (module docstring): RMS over the pairs / 2^(q/2), and / 2^(q/2) more for
    halves."""
    out = {}
    for m, e in d.items():
        q = STUDY_METRICS[m].order
        scale = 2.0 ** (q / 2) * (2.0 ** (q / 2) if halves else 1.0)
        out[m] = np.sqrt(np.mean(e * e, axis=0)) / scale
    return out


def _pairs(setup: LimitSetup, reference, key, runs: _Runs) -> dict | None:
    """The repetitions' own references, r against r + 1 (cyclically): no extra run."""
    S, Dr = setup.study["seeds"], setup.reference_shape()[2]
    nxt = np.roll(np.arange(S), -1)
    other = BlockResult(*(None if v is None else v[nxt] for v in reference))
    if runs.on_progress is not None:
        runs.on_progress(1.0)
    return _per_order(_metrics(setup, reference, other, (Dr,) * S), halves=False)


def _halves(setup: LimitSetup, reference, key, runs: _Runs) -> dict | None:
    """Two halves of every repetition's reference particles, each trained on its own."""
    Lr, Mr, Dr = setup.reference_shape()
    S, half = setup.study["seeds"], Mr // 2
    members = [Member((-1, -1, -1), Lr, half, Dr, r, h) for r in range(S) for h in (1, 2)]
    rows: dict[tuple[int, int], dict] = {}
    budget = setup.study["memory"] * 2**30
    import jax

    blocks = _split(setup, members, Lr, half, Dr, budget, reference=True)
    for i, block in enumerate(blocks):
        res = run_block(setup, block, setup.reference_depth(), jax.random.fold_in(key, i),
                        runs.progress(i / len(blocks), (i + 1) / len(blocks)), runs.should_stop)
        if res is None:
            runs.stopped = True
            return None
        for j, m in enumerate(block.members):
            rows[(m.rep, m.half)] = {q: None if v is None else v[j:j + 1]
                                     for q, v in res._asdict().items()}
    first = BlockResult(**{q: _stack([rows[(r, 1)][q] for r in range(S)]) for q in rows[(0, 1)]})
    second = BlockResult(**{q: _stack([rows[(r, 2)][q] for r in range(S)]) for q in rows[(0, 2)]})
    return _per_order(_metrics(setup, first, second, (Dr,) * S), halves=True)  # d: (S, T)


def _stack(parts):
    return None if parts[0] is None else np.concatenate(parts, axis=0)


def _grid(setup: LimitSetup, reference, key, runs: _Runs) -> dict | None:
    st = setup.study
    g = st["grid"]
    cells = list(g["cells"])
    coarse = [max(n // 2, 1) for n in cells]
    r = cells[0] / coarse[0]
    order = SCHEME_ORDER[g["scheme"]]
    coarse_setup = setup._replace(study={**st, "grid": {**g, "cells": coarse}})
    D = setup.dims[-1]
    block = Block(st["reference_L"], math.prod(coarse), D,
                  (Member((-1, -1, -1), st["reference_L"], math.prod(coarse), D, 0),), 1,
                  reference=True)
    out = grid_values(coarse_setup, block, key, runs.progress(0.0, 1.0), runs.should_stop)
    if out is None:
        runs.stopped = True
        return None
    res, _ = out
    fine = BlockResult(*(None if v is None else v[:1] for v in reference))
    d = _metrics(setup, fine, res, (D,))
    return {m: e[0] / (r ** order - 1.0) for m, e in d.items()}
