"""Independent runs of one shape trained side by side: the ``Batch`` measure and its flow.

A study trains many finite networks (shapes x repetitions). Runs of one
compiled shape are stacked along a leading *member* axis and moved by
``BatchFlow``, which ``jax.vmap``s the ordinary particle step
(``ParticleFlow.step``: the same kernel, the same methods) over the members, or
loops over them where the depth discretization asks for it
(``members_in_a_loop``: continuous depth, whose adaptive solver vmap would run
as one loop over the whole batch); ``integrate`` drives it like any other flow,
so there is one time loop.

Members may be *padded* so that different shapes share one compiled program:

* width: a member with M < M_pad particles per slice carries M_pad - M
  particles of weight 0 (``weights`` omega (L, M_pad), 1/M on the real ones).
  A zero-weight particle adds nothing to the field F_l = sum_m omega_m f(.; theta_m)
  and is not moved (its velocity, 0/0 in ``evaluate``, is set to 0) -- except in a
  batch with ``twins = True`` (``TwinParticleFlow``), where zero-weight points are
  passive tracers moved by the field (the twins of the ``coupling`` study metric).
* state dimension: a member of state dimension D < D_pad lives in the first D
  coordinates of R^{D_pad}: its embedding has zero rows, its readout zero
  columns, its particles zero entries in the extra coordinates (for ``neuron``
  features u_j = w_j = 0 for j >= D; for ``linear`` ones theta_ij = 0 when i or
  j >= D). The extra state coordinates, adjoint coordinates and parameter
  gradients are then exactly zero at every step (f_j = u_j sigma(.) = 0,
  (d_z F)^T p has j-th entry sum_m w_mj (...) = 0, grad u_j = sigma(.) p_j = 0,
  grad w_j = (...) z_j = 0), so the padded network is the D-dimensional one
  up to floating-point summation order. (Langevin noise would break this:
  the study never pads D when ``train.temperature > 0``.)

Layout: the member axis is the *second* axis of the particle arrays,
theta (L, B, M, k) and weights (L, B, M), so that the depth scan inside the
vmapped step runs over the leading axis as it is: with the member axis first,
``vmap`` of the scan transposes the whole array in and the gradient out, two
extra copies of theta per step (measured: temporaries 2x theta instead of 1x).

Each member has its own fixed random maps (``embedding`` A (D_pad, d_in),
``readout`` C (d_out, D_pad), or None for pad / coordinates) and shares the data.
A member whose step is non-finite goes on carrying non-finite values; the
batch's step reports ``ok`` while any member is finite (``integrate`` stops
a batch only when all its members diverged).

"Batch" and "member" name these side-by-side study runs only; the shallow
*ensemble* of Lu et al. is another thing (``wflow._blocks``).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._flow import Flow, Measure, ParticleFlow

# what ``forward_values`` returns: the quantities a study may keep per run
ALL_QUANTITIES = ("loss", "prediction", "state", "particles", "weights")

__all__ = ["Batch", "BatchFlow", "TwinParticleFlow", "WeightedParticleFlow", "forward_values"]


def _member(in_axes, args: tuple, b) -> tuple:
    """Member ``b`` of batched ``args`` (``in_axes`` as vmap's; None: not batched)."""
    take = lambda ax, a: (a if ax is None or a is None
                          else lax.dynamic_index_in_dim(a, b, ax, keepdims=False))
    return jax.tree.map(take, in_axes, args, is_leaf=lambda a: a is None)


def _axes_of(out_axes, out):
    """vmap's ``out_axes`` as a prefix tree of the outputs ``out``."""
    return out_axes if isinstance(out_axes, tuple) else jax.tree.map(lambda _: out_axes, out)


def _in_a_loop(fn, in_axes, out_axes, args: tuple, B: int):
    """``jax.vmap(fn, in_axes, out_axes)(*args)`` computed member after member: a
    ``fori_loop`` writes member b's outputs into slice b of arrays allocated once (in place,
    no stacked copy). Used where the discretization asks for it
    (``DepthDiscretization.members_in_a_loop``)."""
    # traced once: the shapes below and the loop's body share jit's trace of one member (the
    # continuous study's reference step traced in 3.4 s, now 1.9 s; benchmarks/README.md,
    # "Tracing a continuous-depth step (2026-12-07)")
    member = jax.jit(lambda b: fn(*_member(in_axes, args, b)))
    shapes = jax.eval_shape(member, jnp.int32(0))
    outs = _axes_of(out_axes, shapes)
    init = jax.tree.map(lambda ax, s: jnp.zeros(s.shape[:ax] + (B,) + s.shape[ax:], s.dtype),
                        outs, shapes)

    def body(b, acc):
        return jax.tree.map(lambda ax, a, v: lax.dynamic_update_index_in_dim(a, v, b, ax),
                            outs, acc, member(b.astype(jnp.int32)))

    return lax.fori_loop(0, B, body, init)


def forward_values(flow: Flow, measure) -> dict[str, jax.Array]:
    """One forward pass of ``flow``'s network on its data: what a study compares.

    The measure is read as weighted particles (``flow.weighted``: particles, padded
    particles, or grid cells as weighted points) and z(1; x_i) is the depth's final
    state from z(0; x_i) = embed(x_i). Returns ``loss`` E, ``prediction``
    g(z(1; x_i)) (N, d_out), ``state`` z(1; x_i) (N, D), ``particles`` Theta and
    ``weights`` omega (1/M when the measure has none): the quantities a study
    metric reads (``wflow.study._metrics``). Used by ``BatchFlow.diagnostics``
    (per member) and by the generic reference path (``_limit.measure_values``).
    """
    problem = flow.problem
    Theta, weights = flow.weighted(measure)
    z1 = flow.depth.final_state(problem, Theta, problem.embed(problem.x), weights)
    if weights is None:
        weights = jnp.full(Theta.shape[:2], 1.0 / Theta.shape[1], Theta.dtype)
    return {"loss": problem.loss(z1), "prediction": problem.readout(z1), "state": z1,
            "particles": Theta, "weights": weights}


class TwinParticleFlow(ParticleFlow):
    """Weighted particles whose zero-weight points are *twins*: moved by the field, not held.

    Every point moves by -grad_theta V_l(theta) - lambda(s) theta, V_l the first variation of
    the weighted measure (``first_variation_gradient``): the weighted particles as in
    ``evaluate`` (the same velocity), the zero-weight ones as passive tracers that add
    nothing to the field (the synchronous coupling of the ``coupling`` study metric).
    """

    weights: jax.Array = eqx.field(kw_only=True)

    def weighted(self, theta):
        return theta, self.weights

    def velocity(self, theta, s):
        loss, G = self.depth.first_variation_gradient(self.problem, theta, theta, self.weights)
        v = -G
        if self.regularization.l2 > 0:
            v = v - self.regularization.l2_at(s).astype(theta.dtype) * theta
        return loss, v

    def diagnostics(self, theta, s):
        ev = self.depth.evaluate(self.problem, theta, self.weights)
        return {"loss": ev.loss, "stationarity": ev.stationarity}


class WeightedParticleFlow(ParticleFlow):
    """Particles with fixed weights omega (L, M) (0 = a padding particle that never moves)."""

    weights: jax.Array = eqx.field(kw_only=True)

    def weighted(self, theta):
        return theta, self.weights

    def velocity(self, theta, s):
        ev = self.depth.evaluate(self.problem, theta, self.weights)
        live = (self.weights > 0)[:, :, None]
        v = jnp.where(live, ev.velocity, 0.0)
        if self.regularization.l2 > 0:
            v = v - jnp.where(live, self.regularization.l2_at(s).astype(theta.dtype) * theta, 0.0)
        return ev.loss, v

    def diagnostics(self, theta, s):
        ev = self.depth.evaluate(self.problem, theta, self.weights)
        return {"loss": ev.loss, "stationarity": ev.stationarity}


class BatchFlow(Flow):
    """``vmap`` of the particle flow over the members of a ``Batch`` (module docstring).

    Diagnostics, per member (leading axis B), from one forward pass: those of
    ``forward_values`` named in ``quantities`` -- ``loss`` E (B,), ``prediction``
    g(z(1; x_i)) (B, N, d_out), ``state`` z(1; x_i) (B, N, D_pad), ``particles`` and
    ``weights``. Only the named ones are computed and returned: ``particles`` is a copy
    of theta, as large as the batch itself, which the time loop would hold at every record
    (a study asks for it only for its parameter metrics). Snapshots are not stored
    (``snapshot`` returns None): a study keeps what it needs from the diagnostics.
    """

    quantities: tuple[str, ...] = eqx.field(static=True, default=ALL_QUANTITIES)

    @property
    def history_names(self) -> tuple[str, ...]:
        return self.quantities

    @property
    def monotone(self) -> None:
        """Not checked by the time loop: the loss is one value per run (the study reads each
        run's records itself)."""
        return None
    snapshot_name: ClassVar[str] = "prediction"

    def member(self, m: Batch) -> ParticleFlow:
        """The flow of one member (called on unbatched member leaves, e.g. inside vmap)."""
        p = self.problem
        problem = p.replace(embedding=m.embedding, readout_matrix=m.readout)
        if m.weights is None:
            return ParticleFlow(problem, self.depth, self.regularization)
        if m.twins:
            return TwinParticleFlow(problem, self.depth, self.regularization, weights=m.weights)
        return WeightedParticleFlow(problem, self.depth, self.regularization, weights=m.weights)

    def check(self, batch, method):
        Flow.check(self, batch, method)
        k = self.problem.feature.k
        if not isinstance(batch, Batch) or batch.theta.ndim != 4 or batch.theta.shape[3] != k:
            raise ValueError(f"a batch needs theta of shape (L, B, M, k) with k = {k}")

    def _vmap(self, fn, batch, *args, out_axes=0):
        """``fn(member, *args)`` over the members (args batched on their leading axis): one
        unbatched call for a batch of one, a loop where ``depth.members_in_a_loop``, else
        vmap."""
        axes = Batch(1, None if batch.weights is None else 1,
                     None if batch.embedding is None else 0, None if batch.readout is None else 0,
                     twins=batch.twins, quantities=batch.quantities)
        in_axes = (axes,) + (0,) * len(args)
        if batch.theta.shape[1] == 1:
            # One member (a study's reference of one seed, the floor's tight rerun): call it
            # unbatched. vmap of a batch of one costs twice the unbatched call on a
            # continuous-depth solve (diffrax's while loop batched: 0.86 s against 0.44 s per
            # evaluate at M = 16384, N = 48, L = 8 on 2 CPU cores), and the loop below would
            # allocate its outputs beside the donated input (the full sweep's layered
            # reference is one member of 1.6 GB).
            out = fn(*_member(in_axes, (batch,) + args, 0))
            return jax.tree.map(lambda ax, a: jnp.expand_dims(a, ax), _axes_of(out_axes, out), out)
        if self.depth.members_in_a_loop:
            return _in_a_loop(fn, in_axes, out_axes, (batch,) + args, batch.theta.shape[1])
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)(batch, *args)

    def step(self, method, batch, key, n, h):
        B = batch.theta.shape[1]
        if self.regularization.temperature > 0:
            key, sub = jax.random.split(key)
            keys = jax.random.split(sub, B)
        else:
            keys = jnp.broadcast_to(key, (B,) + key.shape)

        def one(m, k):
            theta, _, ok = self.member(m).step(method, m.theta, k, n, h)
            return theta, ok

        theta, ok = self._vmap(one, batch, keys, out_axes=(1, 0))
        return eqx.tree_at(lambda e: e.theta, batch, theta), key, jnp.any(ok)

    def adaptive(self, batch, s0, s1, h0, rtol, atol):
        def one(m):
            theta, ok = self.member(m).adaptive(m.theta, s0, s1, h0, rtol, atol)
            return jnp.where(ok, theta, jnp.nan), ok

        theta, ok = self._vmap(one, batch, out_axes=(1, 0))
        return eqx.tree_at(lambda e: e.theta, batch, theta), jnp.any(ok)

    def diagnostics(self, batch, s):
        def one(m):
            values = forward_values(self.member(m), m.theta)
            return {q: values[q] for q in self.quantities}

        return self._vmap(one, batch)

    def weighted(self, batch):
        return batch.theta, batch.weights

    def predict(self, batch, x=None):
        return self._vmap(lambda m: self.member(m).predict(m.theta, x), batch)

    def snapshot(self, batch):
        return None

    def restore(self, like, array):
        raise NotImplementedError("a batch is not resumed from a snapshot (studies checkpoint "
                                  "whole blocks)")


class Batch(Measure):
    """B particle measures of one padded shape (module docstring).

    theta (L, B, M, k) (member axis second); weights (L, B, M) or None (every
    particle weighs 1/M);
    embedding (B, d, d_in) and readout (B, d_out, d), or None (pad / coordinates).
    ``quantities``: the diagnostics its flow computes at every record (``BatchFlow``; "loss"
    first, the time loop reads it).
    """

    theta: jax.Array
    weights: jax.Array | None = None
    embedding: jax.Array | None = None
    readout: jax.Array | None = None
    twins: bool = eqx.field(static=True, default=False)  # zero-weight points move (twins)
    # the diagnostics its flow records (``BatchFlow.quantities``)
    quantities: tuple[str, ...] = eqx.field(static=True, default=ALL_QUANTITIES)

    flow_type: ClassVar[type[Flow]] = BatchFlow

    def make_flow(self, problem, depth, regularization) -> BatchFlow:
        return BatchFlow(problem, depth, regularization, quantities=self.quantities)
