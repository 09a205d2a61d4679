"""The exact reverse pass of an explicit Runge-Kutta solve, from its recorded steps.

``ContinuousDepth`` with ``adjoint = "checkpoint"`` differentiates the solver's own
arithmetic: the gradient of the computed z(1) with respect to the measure, every accepted
step backpropagated, the step sizes held fixed (diffrax stops gradients through its step-size
controller too). diffrax's ``RecursiveCheckpointAdjoint`` computes that gradient by storing
checkpoints of the step loop and, in the reverse pass, recomputing each step and each of its
stages before their VJP, while the cotangent of everything the vector field reads (here the
whole measure Theta (L, M, k)) is materialized and added at every stage. In a continuous-depth
reference (M = 16384, L = 8, N = 48) those full-size cotangents were about 60% of a gradient's
time, the recomputations most of the rest (the section
benchmarks/README.md, "The continuous-depth gradient from recorded steps (2026-12-07)").

Here the forward pass is diffrax's solver and step-size controller, driven by the same loop as
``diffrax.diffeqsolve`` (so z(1) is the same to the bit), and it records each accepted step:
its times t_n, t_{n+1}, its start y_n and its stages k_s = h f(t_s, Y_s) (diffrax's dense
information). The reverse pass is the adjoint of the Butcher tableau, step by step in reverse:

    y_{n+1} = y_n + sum_s b_s k_s,   Y_s = y_n + sum_{j<s} a_{sj} k_j,   k_s = h f(t_s, Y_s),
    dk_s = b_s lam + sum_{r>s} a_{rs} dY_r,   (dY_s, dparams) = VJP of h f(t_s, .) at Y_s,
    lam <- lam + sum_s dY_s,

with the stage inputs Y_s rebuilt from the recorded k (no vector-field evaluation), and each
stage's parameter cotangent added in place into the one or two slices it reads. An FSAL
solver's first stage is the previous step's last; its VJP is taken at (t_n, y_n), the same
point. A stage that reaches y_{n+1} neither directly nor through a later stage (b_s = 0 and
no a_{rs}: the FSAL stage) is skipped.

The record holds ``capacity`` steps, a ring: accepted step q sits at q mod capacity. A solve
that accepts more (tolerances much tighter than the depth grid asks for) is taken in segments of
``capacity`` steps: the forward pass also keeps the loop's state (y, the solver's and the
controller's states, the times) at the start of each segment, and the reverse pass, segment by
segment from the last, runs the same step loop again from that state to refill the record
before taking its adjoint. Each step beyond the first segment is then computed twice, as in
diffrax's checkpointed adjoint. At most ``checkpoints`` states are kept; a segment past them
starts from the last one kept and steps through the segments between.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from diffrax._term import WrapTerm  # what diffeqsolve wraps its terms in
from jax import lax

# Bytes the record of one solve may take, and bytes its checkpoints may take: a larger state
# gets fewer steps per segment and fewer checkpoints (the steps between recomputed).
RECORD_BYTES = 2**26
CHECKPOINT_BYTES = 2**24
# ``reverse_pass`` loops over a step's stages when one vector-field evaluation is smaller than
# this (N data points x D coordinates x M particles), and unrolls them from there on. Measured
# on the continuous study's reference (N = 48, D = 2, L = 8, 8 members, float32): the loop's
# step time over the unrolled one's 0.75 at M = 16, 0.83 at M = 64, 0.94 at M = 256, 1.08 at
# M = 1024 and 1.01-1.04 at M = 16384; it compiles in 15-50% less time at every M
# (benchmarks/README.md, "The reverse pass's stages: a loop for small problems (2026-12-08)").
LOOP_STAGES_BELOW = 2**15


def explicit_tableau(solver) -> diffrax.ButcherTableau | None:
    """The Butcher tableau of an explicit Runge-Kutta ``solver`` (None for any other)."""
    tab = getattr(solver, "tableau", None)
    if (not isinstance(tab, diffrax.ButcherTableau) or tab.a_diagonal is not None
            or not isinstance(solver, diffrax.AbstractERK)):
        return None
    return tab


def capacity(n_step_ts: int, max_steps: int, step_bytes: int) -> int:
    """Steps a record holds: 4 per interval of the depth grid and 16 more (a solve whose
    tolerances never bind takes one per interval), at most ``max_steps`` and at most
    ``RECORD_BYTES`` in all (at least one step)."""
    want = 4 * (n_step_ts + 1) + 16
    fit = RECORD_BYTES // max(step_bytes, 1)
    return int(max(1, min(want, fit, max_steps)))


def checkpoints(cap: int, max_steps: int, state_bytes: int) -> int:
    """Segment starts kept: one per segment of ``cap`` steps up to ``max_steps``, at most
    ``CHECKPOINT_BYTES`` in all (at least the initial state)."""
    want = -(-max_steps // cap)
    fit = CHECKPOINT_BYTES // max(state_bytes, 1)
    return int(max(1, min(want, fit)))


def _tableau_arrays(tab: diffrax.ButcherTableau):
    """(a (S, S) lower-triangular, b (S,), c (S,)) as diffrax embeds them."""
    S = tab.num_stages
    a = np.zeros((S, S))
    for i, row in enumerate(tab.a_lower):
        a[i + 1, : i + 1] = row
    c = np.zeros(S)
    c[0] = 0.0 if tab.c1 is None else tab.c1
    c[1:] = tab.c
    return a, np.asarray(tab.b_sol, dtype=np.float64), c


class RecordedSolve:
    """diffrax's step loop (``diffeqsolve``'s, without saving or events), recording its steps.

    ``vf(t, y, args)`` is the vector field. Built alike in a forward pass (``forward``) and in
    its reverse pass (``gradient``): both trace the same step, so a segment stepped again in
    the reverse pass takes the forward's steps to the same values.
    """

    def __init__(self, vf, solver, controller, t0, t1, y0, args, max_steps: int, cap: int):
        # as diffeqsolve prepares a solve: time direction folded into the term and the controller
        direction = jnp.where(t0 < t1, 1, -1)
        t0, t1 = t0 * direction, t1 * direction
        term = WrapTerm(diffrax.ODETerm(vf), direction)
        controller = controller.wrap(direction)
        error_order = solver.error_order(term)
        tnext, cstate = controller.init(term, t0, t1, y0, None, args, solver.func, error_order)
        tnext = jnp.minimum(tnext, t1)
        sstate = solver.init(term, t0, tnext, y0, args)
        t1_clip_floor = t1
        for _ in range(100):  # diffrax's threshold for rounding tnext to t1: t1 - 100 ULPs
            t1_clip_floor = eqxi.prevbefore(t1_clip_floor)

        def step(tprev, tnext, y, sstate, cstate, made_jump):
            y1, y_error, dense, sstate1, sres = solver.step(term, tprev, tnext, y, args, sstate,
                                                            made_jump)
            y_error = jnp.where(jnp.isnan(y_error), jnp.inf, y_error)
            keep, tprev1, tnext1, made_jump1, cstate1, cres = controller.adapt_step_size(
                tprev, tnext, y, y1, args, y_error, error_order, cstate)
            return y1, dense["k"], sstate1, sres, keep, tprev1, tnext1, made_jump1, cstate1, cres

        # diffrax resolves made_jump statically when the controller never makes one
        shape = eqx.filter_eval_shape(step, t0, tnext, y0, sstate, cstate, False)
        made_jump0 = False if isinstance(shape[7], bool) else jnp.bool_(False)
        # the loop's state: (tprev, tnext, y, solver state, controller state, made_jump, ok,
        # steps attempted, steps accepted)
        self.state0 = (t0, tnext, y0, sstate, cstate, made_jump0, jnp.bool_(True), jnp.int32(0),
                       jnp.int32(0))
        self.step, self.t1, self.t1_clip_floor = step, t1, t1_clip_floor
        self.max_steps, self.cap, self.tableau = max_steps, cap, solver.tableau
        state_bytes = sum(np.dtype(jnp.result_type(v)).itemsize * int(np.prod(jnp.shape(v)))
                          for v in jax.tree_util.tree_leaves(self.state0))
        self.K = checkpoints(cap, max_steps, state_bytes)

    def _advance(self, state, record, starts, n_stop):
        """Steps from ``state`` until t1, a failure, ``max_steps`` attempts or (if given)
        ``n_stop`` accepted steps; accepted step q written to record[q mod cap], and where
        ``starts`` is given the state at every multiple of cap accepted steps kept in it."""
        t1, cap, step = self.t1, self.cap, self.step

        def cond(carry):
            tprev, _, _, _, _, _, ok, n_steps, n = carry[0]
            go = (tprev < t1) & ok & (n_steps < self.max_steps)
            return go if n_stop is None else go & (n < n_stop)

        def body(carry):
            (tprev, tnext, y, sstate, cstate, made_jump, ok, n_steps, n), record, starts = carry
            (y1, k, sstate1, sres, keep, tprev1, tnext1, made_jump1, cstate1,
             cres) = step(tprev, tnext, y, sstate, cstate, made_jump)
            tprev1 = jnp.minimum(tprev1, t1)
            clip = tnext1 > self.t1_clip_floor
            tnext1 = jnp.where(clip, jnp.where(keep, t1, tprev1 + 0.5 * (t1 - tprev1)), tnext1)
            i = n % cap
            record = tuple(buf.at[i].set(jnp.where(keep, v, buf[i]))
                           for buf, v in zip(record, (tprev, tnext, y, k)))
            keep_ = lambda a, b: jnp.where(keep, a, b)
            y = keep_(y1, y)
            sstate = jax.tree_util.tree_map(keep_, sstate1, sstate)
            if not isinstance(made_jump1, bool):
                made_jump = keep_(made_jump1, made_jump)
            ok = (ok & (~keep | (sres == diffrax.RESULTS.successful))
                  & (cres == diffrax.RESULTS.successful))
            n1 = n + keep.astype(n.dtype)
            state = (tprev1, tnext1, y, sstate, cstate1, made_jump, ok, n_steps + 1, n1)
            if starts is not None:
                slot = jnp.minimum(n1 // cap, self.K - 1)
                save = keep & (n1 % cap == 0) & (n1 // cap < self.K)
                starts = jax.tree_util.tree_map(
                    lambda buf, v: buf.at[slot].set(jnp.where(save, v, buf[slot])), starts, state)
            return state, record, starts

        return lax.while_loop(cond, body, (state, record, starts))

    def forward(self):
        """(y1, ok, tape): y1 the state at t1 (the same computation as ``diffeqsolve`` with
        ``SaveAt(t1=True)``), ok whether the solve succeeded, and the tape the reverse pass
        reads: (record, n, starts) with record = (ts0 (cap,), ts1 (cap,), ys (cap, *y.shape),
        ks (cap, S, *y.shape)) holding the last segment's steps, n the number of accepted steps
        and starts the loop's state at the start of the first K segments."""
        y0, cap = self.state0[2], self.cap
        t0 = self.state0[0]
        record = (jnp.zeros((cap,), t0.dtype), jnp.zeros((cap,), t0.dtype),
                  jnp.zeros((cap,) + y0.shape, y0.dtype),
                  jnp.zeros((cap, self.tableau.num_stages) + y0.shape, y0.dtype))
        starts = jax.tree_util.tree_map(
            lambda v: jnp.zeros((self.K,) + jnp.shape(v), jnp.result_type(v)).at[0].set(v),
            self.state0)
        state, record, starts = self._advance(self.state0, record, starts, None)
        tprev, y, ok, n = state[0], state[2], state[6], state[8]
        return y, ok & (tprev >= self.t1), (record, n, starts)

    def gradient(self, stage_vjp, tape, lam, acc, loop_stages: bool = False):
        """The adjoint of the taped solve, segment by segment from the last (module docstring;
        ``reverse_pass`` for ``stage_vjp`` and ``loop_stages``). Returns (the cotangent of y0,
        acc)."""
        record, n, starts = tape
        cap, K = self.cap, self.K
        last = (n - 1) // cap  # the last segment; -1 for a solve without steps
        # under vmap: one loop over the members' segments, as many as the longest solve's
        n_segments = eqxi.unvmap_max(last) + 1

        def segment(i, carry):
            lam, acc = carry
            j = last - i

            def again():  # segment j stepped again from the last start kept at or before it
                start = jax.tree_util.tree_map(lambda buf: buf[jnp.clip(j, 0, K - 1)], starts)
                n_stop = jnp.where(j >= 0, (j + 1) * cap, 0)
                return self._advance(start, record, None, n_stop)[1]

            steps = lax.cond(i > 0, again, lambda: record)
            count = jnp.where(i == 0, n - last * cap, jnp.where(j >= 0, cap, 0))
            return reverse_pass(stage_vjp, self.tableau, steps, count, lam, acc, loop_stages)

        return lax.fori_loop(0, n_segments, segment, (lam, acc))


def reverse_pass(stage_vjp, tab: diffrax.ButcherTableau, record, n, lam, acc,
                 loop_stages: bool = False):
    """The adjoint of ``n`` recorded steps (module docstring).

    ``stage_vjp(t, Y, ct, acc)`` returns (dY, acc): the VJP of f(t, .) at Y with cotangent ct
    for the state, and ``acc`` (the parameters' cotangents) with this stage's added. ``lam``
    is the cotangent of y1. Returns (the cotangent of y0, acc).

    ``loop_stages``: the stages of a step as a loop (one copy of ``stage_vjp`` in the compiled
    program) instead of unrolled (one per stage). The loop compiles faster and runs faster
    where a stage's work is small, the unrolled form where it is large
    (``LOOP_STAGES_BELOW``). The sums are the same, in the same order; the two forms agree to
    round-off (the dot product that forms a stage's input differs).
    """
    ts0, ts1, ys, ks = record
    S = tab.num_stages
    a, b, c = _tableau_arrays(tab)
    # a stage that feeds y1 neither directly nor through a later stage has no cotangent
    live = [s for s in range(S) if b[s] != 0 or np.any(a[s + 1:, s] != 0)]

    def unrolled(lam, acc, t0, t1, y0, k):
        dt, dtype = t1 - t0, y0.dtype
        dY = [None] * S
        for s in reversed(live):
            dk = jnp.asarray(b[s], dtype) * lam if b[s] != 0 else None
            for r in range(s + 1, S):
                if a[r, s] != 0 and dY[r] is not None:
                    term = jnp.asarray(a[r, s], dtype) * dY[r]
                    dk = term if dk is None else dk + term
            if dk is None:
                continue
            # Y_s as diffrax forms it, y0 + (row s of a) . k (the row is 0 from s on)
            Y = y0 + jnp.tensordot(jnp.asarray(a[s], dtype), k, axes=1)
            t = jnp.where(c[s] == 1, t1, t0 + jnp.asarray(c[s], t0.dtype) * dt)
            dY[s], acc = stage_vjp(t, Y, dt * dk, acc)
        return [d for d in dY if d is not None], acc

    def looped(lam, acc, t0, t1, y0, k):
        # the unrolled sums term by term: a zero coefficient adds an exact zero
        dt, dtype = t1 - t0, y0.dtype
        A, B, C = jnp.asarray(a, dtype), jnp.asarray(b, dtype), jnp.asarray(c, t0.dtype)
        order = jnp.asarray(live[::-1], jnp.int32)

        def stage(j, carry):
            dY, acc = carry
            s = order[j]
            dk = B[s] * lam
            for r in range(1, S):  # a[r, s] is 0 unless r > s
                dk = dk + A[r, s] * dY[r]
            Y = y0 + jnp.tensordot(A[s], k, axes=1)
            t = jnp.where(C[s] == 1, t1, t0 + C[s] * dt)
            dYs, acc = stage_vjp(t, Y, dt * dk, acc)
            return dY.at[s].set(dYs), acc

        dY, acc = lax.fori_loop(0, len(live), stage, (jnp.zeros((S,) + y0.shape, dtype), acc))
        return [dY[s] for s in live], acc

    def one_step(i, carry):
        lam, acc = carry
        m = n - 1 - i
        dY, acc = (looped if loop_stages else unrolled)(lam, acc, ts0[m], ts1[m], ys[m], ks[m])
        for d in dY:  # in stage order
            lam = lam + d
        return lam, acc

    return lax.fori_loop(0, n, one_step, (lam, acc))
