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

The record holds ``capacity`` steps. A solve that accepts more (tolerances much tighter
than the depth grid asks for) is differentiated by diffrax's ``RecursiveCheckpointAdjoint``
instead, chosen at run time; both give the gradient of the same computation.
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

# Bytes the record of one solve may take: a larger state gets fewer steps, and a state whose
# solve does not fit is differentiated by diffrax's adjoint (as before the record existed).
RECORD_BYTES = 2**26


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


def recorded_solve(vf, solver, controller, t0, t1, y0, args, max_steps: int, cap: int):
    """diffrax's step loop (``diffeqsolve``'s, without saving or events), recording steps.

    ``vf(t, y, args)`` is the vector field. Returns (y1, ok, record, n, overflow): y1 the state
    at t1 (the same computation as ``diffeqsolve`` with ``SaveAt(t1=True)``), ok whether the
    solve succeeded, record = (ts0 (cap,), ts1 (cap,), ys (cap, *y.shape), ks (cap, S,
    *y.shape)) of the first ``cap`` accepted steps, n the number accepted and overflow n > cap.
    """
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
    S = solver.tableau.num_stages
    record = (jnp.zeros((cap,), t0.dtype), jnp.zeros((cap,), t0.dtype),
              jnp.zeros((cap,) + y0.shape, y0.dtype), jnp.zeros((cap, S) + y0.shape, y0.dtype))
    ok = jnp.bool_(True)

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

    def cond(carry):
        tprev, _, _, _, _, _, ok, n_steps, _, _ = carry
        return (tprev < t1) & ok & (n_steps < max_steps)

    def body(carry):
        tprev, tnext, y, sstate, cstate, made_jump, ok, n_steps, n, record = carry
        (y1, k, sstate1, sres, keep, tprev1, tnext1, made_jump1, cstate1,
         cres) = step(tprev, tnext, y, sstate, cstate, made_jump)
        tprev1 = jnp.minimum(tprev1, t1)
        clip = tnext1 > t1_clip_floor
        tnext1 = jnp.where(clip, jnp.where(keep, t1, tprev1 + 0.5 * (t1 - tprev1)), tnext1)
        i = jnp.minimum(n, cap - 1)
        write = keep & (n < cap)
        record = tuple(buf.at[i].set(jnp.where(write, v, buf[i]))
                       for buf, v in zip(record, (tprev, tnext, y, k)))
        keep_ = lambda a, b: jnp.where(keep, a, b)
        y = keep_(y1, y)
        sstate = jax.tree_util.tree_map(keep_, sstate1, sstate)
        if not isinstance(made_jump1, bool):
            made_jump = keep_(made_jump1, made_jump)
        ok = (ok & (~keep | (sres == diffrax.RESULTS.successful))
              & (cres == diffrax.RESULTS.successful))
        return (tprev1, tnext1, y, sstate, cstate1, made_jump, ok, n_steps + 1,
                n + keep.astype(n.dtype), record)

    carry = (t0, tnext, y0, sstate, cstate, made_jump0, ok, jnp.int32(0), jnp.int32(0), record)
    tprev, _, y, _, _, _, ok, _, n, record = lax.while_loop(cond, body, carry)
    ok = ok & (tprev >= t1)
    return y, ok, record, n, n > cap


def reverse_pass(stage_vjp, tab: diffrax.ButcherTableau, record, n, lam, acc):
    """The adjoint of ``n`` recorded steps (module docstring).

    ``stage_vjp(t, Y, ct, acc)`` returns (dY, acc): the VJP of f(t, .) at Y with cotangent ct
    for the state, and ``acc`` (the parameters' cotangents) with this stage's added. ``lam``
    is the cotangent of y1. Returns (the cotangent of y0, acc).
    """
    ts0, ts1, ys, ks = record
    S = tab.num_stages
    a, b, c = _tableau_arrays(tab)
    # a stage that feeds y1 neither directly nor through a later stage has no cotangent
    live = [bool(b[s] != 0 or np.any(a[s + 1:, s] != 0)) for s in range(S)]

    def one_step(i, carry):
        lam, acc = carry
        m = n - 1 - i
        t0, t1, y0, k = ts0[m], ts1[m], ys[m], ks[m]
        dt = t1 - t0
        dtype = y0.dtype
        dY = [None] * S
        for s in reversed(range(S)):
            if not live[s]:
                continue
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
        for s in range(S):
            if dY[s] is not None:
                lam = lam + dY[s]
        return lam, acc

    return lax.fori_loop(0, n, one_step, (lam, acc))
