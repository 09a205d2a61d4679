"""Depth discretizations: how a measure (Theta (L, M, k), weights) defines the forward map.

Slice l of the measure is M points Theta_l with weights omega_l (M,) summing
to 1: the empirical measure of M particles (omega = 1/M, ``weights=None``) or
a grid density (omega_c = rho_c |C| at cell centres, ``_grid.py``); every
kernel below takes both, so particles and grids share one forward pass, one
adjoint and one loss. F_l(z) = sum_m omega_{l,m} f(z; theta_{l,m}).

The first variation V(theta, t) = dE/drho (docs/theory.md, "Continuum limit") is discretized
per slice:
``first_variation_gradient`` returns grad_theta V_l(q) at any query points q,
defined as the derivative of the discretized loss with respect to an
infinitesimal mass added at q in slice l, divided by the slice's depth
weight w_l (``weights``). For the layered ResNet it is exactly
(1/N) sum_i grad_q [p_{l+1}(x_i) . f(z_l(x_i); q)] with the discrete adjoint
p_{l+1}; for continuous depth it is the hat-weighted average over t of the
same expression with diffrax's adjoint p(t) (= grad V(q, t_l) + O(1/L^2)).
Particle velocities are this field at the particles,

    v_{l,m} = -(1 / (w_l omega_{l,m})) dE/dtheta_{l,m} = -grad_theta V_l(theta_{l,m}),

which is O(1) whatever L and M are (for particles: -(M / w_l) dE/dtheta).

``LayeredDepth`` is the finite ResNet,
    z_{l+1} = z_l + (1/L) F_l(z_l),
with a hand-written discrete adjoint: a reverse ``lax.scan`` that recomputes
each layer's activations from the stored states z_l, so the backward pass
holds O(N L d + L M k) memory plus one layer's O(N M) temporaries, never
O(N L M).

``ContinuousDepth`` solves dz/dt = F(z, t) with diffrax. Slice l sits at the
node t_l = (l + 1/2) / L and F is interpolated piecewise-linearly between
nodes (constant before t_0 and after t_{L-1}):
    F(z, t) = sum_l phi_l(t) F_l(z),  phi_l the hat function of node l,
so the quadrature weight of node l is w_l = int_0^1 phi_l dt = 1/L for every
l (the end nodes' half-hats plus their constant tails also integrate to 1/L).
F is only continuous in t at the nodes, so steps are clipped to land on them
(``diffrax.ClipStepSizeController(step_ts=nodes)``) and the solver keeps its
order. Gradients come from diffrax: ``adjoint = "checkpoint"``
(RecursiveCheckpointAdjoint: exact backprop through the solver) or
``"backsolve"`` (BacksolveAdjoint: the continuous adjoint ODE solved
backwards; cheaper in memory, accurate to the solver tolerance).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import optimistix as optx
from jax import lax

from . import _rk_adjoint
from ._problem import Problem


class _FieldView(NamedTuple):
    """What ``slice_field`` reads of a ``Problem``: its feature map and residual scale."""

    feature: object
    scale: float


class Evaluation(NamedTuple):
    """Loss, particle velocity -grad V (L, M, k) and stationarity residual at one state.

    ``stationarity`` = sum_l w_l sum_m omega_{l,m} |v_{l,m}|^2, the discrete form of
    int int |grad_theta V|^2 rho dtheta dt; for the layered ResNet it is
    exactly -dE/ds along the gradient flow.
    """

    loss: jax.Array
    velocity: jax.Array
    stationarity: jax.Array


class DepthDiscretization(eqx.Module):
    """Common interface of the depth discretizations.

    Every method takes the measure as ``Theta`` (L, M, k) and optional
    ``weights`` omega (L, M) (default 1/M, see the module docstring); ``probes``
    (L, Q, k) are zero-mass query points whose reverse-mode derivative is the
    first variation's gradient (``FeatureMap.probe``).
    """

    @property
    def members_in_a_loop(self) -> bool:
        """Whether independent runs trained side by side (a study's ``BatchFlow``) go through
        this discretization one member after another instead of under ``vmap``. False: a
        layered step is a few large kernels, which vmap batches well (a study's block of 32
        runs at L = 8, M = 1024: 0.023 s a step vmapped, 0.031 s in a loop;
        benchmarks/README.md, "A continuous-depth batch in a loop (2026-12-07)")."""
        return False

    def weights(self, L: int, dtype=jnp.float32) -> jax.Array:
        """Depth weight w_l of each slice: 1/L for both discretizations."""
        return jnp.full((L,), 1.0 / L, dtype)

    def times(self, L: int) -> jax.Array:
        raise NotImplementedError

    def final_state(self, problem: Problem, Theta: jax.Array, x: jax.Array,
                    weights: jax.Array | None = None, probes: jax.Array | None = None) -> jax.Array:
        raise NotImplementedError

    def place(self, problem: Problem, measure):
        """(problem, measure) laid out on the devices this discretization runs on.

        Identity here (one device, JAX's default placement); the multi-device
        wrapper ``_sharding.ShardedDepth`` splits the data or the particles.
        """
        return problem, measure

    def loss_and_grad(self, problem: Problem, Theta: jax.Array, weights: jax.Array | None = None):
        """E and dE/dTheta (L, M, k)."""
        return jax.value_and_grad(lambda th: self.loss(problem, th, weights))(Theta)

    def predict(self, problem: Problem, Theta: jax.Array, x: jax.Array | None = None,
                weights: jax.Array | None = None) -> jax.Array:
        """g(z(1; x)) for x (N', d_in) (default: the training inputs) -> (N', d_out)."""
        x = problem.x if x is None else x
        return problem.readout(self.final_state(problem, Theta, problem.embed(x), weights))

    def loss(self, problem: Problem, Theta: jax.Array, weights: jax.Array | None = None,
             probes: jax.Array | None = None) -> jax.Array:
        return problem.loss(self.final_state(problem, Theta, problem.embed(problem.x), weights,
                                             probes))

    def evaluate(self, problem: Problem, Theta: jax.Array,
                 weights: jax.Array | None = None) -> Evaluation:
        """Loss, velocity -(1/(w_l omega_{l,m})) dE/dtheta and stationarity residual (jit-able).

        A point of zero weight has no velocity from dE/dtheta (it is 0/0, returned
        as NaN and left out of the residual); ``first_variation_gradient`` gives
        the field there.
        """
        L, M, _ = Theta.shape
        loss, dE = self.loss_and_grad(problem, Theta, weights)
        w = self.weights(L, Theta.dtype)
        if problem.scale != 1.0:  # the flow descends E / alpha^2 (``_problem``)
            dE = problem.objective_weight * dE
        if weights is None:
            v = -(M / w)[:, None, None] * dE
            stat = jnp.sum(w * jnp.mean(jnp.sum(v * v, axis=2), axis=1))
        else:
            v = -dE / (w[:, None] * weights)[:, :, None]
            sq = jnp.where(weights > 0, weights * jnp.sum(v * v, axis=2), 0.0)
            stat = jnp.sum(w * jnp.sum(sq, axis=1))
        return Evaluation(loss, v, stat)

    def first_variation_gradient(self, problem: Problem, Theta: jax.Array, query: jax.Array,
                                 weights: jax.Array | None = None):
        """grad_theta V_l(q) at query points q of every slice, and the loss (jit-able).

        Args:
            problem: data, feature map, loss.
            Theta, weights: the measure, (L, M, k) and (L, M) or None (1/M).
            query: (Q, k), the same points in every slice, or (L, Q, k).

        Returns:
            (loss, G) with G (L, Q, k): G[l, j] = grad_theta V_l(query_j) (module
            docstring). One forward and one reverse pass; the query points do not
            change the forward pass.
        """
        L = Theta.shape[0]
        if query.ndim == 2:
            query = jnp.broadcast_to(query, (L,) + query.shape)
        if query.ndim != 3 or query.shape[0] != L or query.shape[2] != Theta.shape[2]:
            raise ValueError(f"query has shape {query.shape}: must be (Q, k) or (L, Q, k) with "
                             f"L = {L}, k = {Theta.shape[2]}")
        loss, g = jax.value_and_grad(lambda q: self.loss(problem, Theta, weights, q))(
            query.astype(Theta.dtype))
        if problem.scale != 1.0:  # grad V_alpha = grad V / alpha^2 (``_problem``)
            g = problem.objective_weight * g
        return loss, g / self.weights(L, g.dtype)[:, None, None]


def slice_field(problem: Problem, z, theta, omega, probe=None):
    """alpha F_l(z) = alpha sum_m omega_m f(z; theta_m) (+ the zero-valued probe of query points).

    The one place where the residual scale alpha (``problem.scale``, see
    ``_problem``) enters the forward pass of both discretizations and the
    layered adjoint; at alpha = 1 nothing is multiplied.
    """
    F = problem.feature.field(z, theta, omega)
    if probe is not None:
        F = F + problem.feature.probe(z, probe)
    if problem.scale != 1.0:
        F = problem.scale * F
    return F


class LayeredDepth(DepthDiscretization):
    """The finite ResNet z_{l+1} = z_l + (alpha/L) sum_m omega_{l,m} f(z_l; theta_{l,m}), l = 0..L-1.

    alpha = ``problem.scale`` (default 1).
    """

    def times(self, L: int) -> jax.Array:
        """Layer l acts on [l/L, (l+1)/L]; its depth time is t_l = l / L."""
        return jnp.arange(L) / L

    def trajectory(self, problem: Problem, Theta: jax.Array, z0: jax.Array,
                   weights: jax.Array | None = None, probes: jax.Array | None = None):
        """Returns z_L (N, d) and the inputs z_0..z_{L-1} of every layer (L, N, d)."""
        h = 1.0 / Theta.shape[0]

        def layer(z, inputs):
            theta, omega, probe = inputs
            return z + h * slice_field(problem, z, theta, omega, probe), z

        return lax.scan(layer, z0, (Theta, weights, probes))

    def final_state(self, problem, Theta, x, weights=None, probes=None):
        return self.trajectory(problem, Theta, x, weights, probes)[0]

    def path(self, problem: Problem, Theta: jax.Array, z0: jax.Array, weights=None,
             n: int | None = None):
        """The states between the layers: depth times l / L (L + 1,) and z_0..z_L (L + 1, N, d)
        (``n`` is ignored: a layered network has only these)."""
        zL, zs = self.trajectory(problem, Theta, z0, weights)
        return jnp.arange(Theta.shape[0] + 1) / Theta.shape[0], jnp.concatenate([zs, zL[None]])

    def loss_and_grad(self, problem, Theta, weights=None):
        L = Theta.shape[0]
        h = 1.0 / L
        zL, zs = self.trajectory(problem, Theta, problem.embed(problem.x), weights)
        loss = problem.loss(zL)

        # Discrete adjoint, p_l = N dE/dz_l:  p_l = p_{l+1} + h (d_z F_l(z_l))^T p_{l+1}.
        # The VJP re-runs layer l from the stored z_l (rematerialization).
        def layer_back(p, inputs):
            theta, omega, z = inputs
            # Through the feature's own reverse rule (for Neuron: the hand-written
            # adjoint on CPU, JAX's VJP on GPU; see _features.py).
            _, vjp = jax.vjp(lambda z, th: slice_field(problem, z, th, omega), z, theta)
            gz, gtheta = vjp(p)
            return p + h * gz, gtheta

        _, gTheta = lax.scan(layer_back, problem.terminal_adjoint(zL), (Theta, weights, zs),
                             reverse=True)
        return loss, (h / problem.n) * gTheta


ADJOINTS = ("checkpoint", "backsolve")
ODE_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
               "heun": diffrax.Heun, "bosh3": diffrax.Bosh3}


class ContinuousDepth(DepthDiscretization):
    """dz/dt = sum_l phi_l(t) F_l(z) solved by diffrax (see the module docstring)."""

    adjoint: str = eqx.field(static=True, default="checkpoint")
    solver: str = eqx.field(static=True, default="tsit5")
    rtol: float = eqx.field(static=True, default=1e-5)
    atol: float = eqx.field(static=True, default=1e-7)
    max_steps: int = eqx.field(static=True, default=16384)
    # the solver's steps are clipped at the L depth nodes; subdivide > 1 clips them also at
    # subdivide - 1 equispaced points between two nodes (the "continuous" floor of a study)
    subdivide: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"solver.adjoint = {self.adjoint!r}: allowed are {', '.join(ADJOINTS)}")
        if self.solver not in ODE_SOLVERS:
            raise ValueError(
                f"solver.ode_solver = {self.solver!r}: allowed are {', '.join(ODE_SOLVERS)}"
            )
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"solver.rtol/atol = {self.rtol}/{self.atol}: both must be > 0")

    @property
    def members_in_a_loop(self) -> bool:
        """True: under vmap diffrax's adaptive while loop becomes one loop over the whole batch,
        stepping every member until the last one is done and selecting every carry at every
        step. A study's continuous-depth reference block (8 runs of M = 16384, N = 48, d = 2,
        L = 8) took 3.62 s an Euler step vmapped and 1.84 s member by member, with identical
        results (benchmarks/README.md, "A continuous-depth batch in a loop (2026-12-07)")."""
        return True

    def times(self, L: int) -> jax.Array:
        """Node of slice l: t_l = (l + 1/2) / L."""
        return (jnp.arange(L) + 0.5) / L

    def step_ts(self, L: int, dtype) -> jax.Array:
        """The times the solver must step to: the nodes (where the interpolant has kinks), and
        with ``subdivide`` = s > 1 also s - 1 equispaced points between neighbouring nodes."""
        nodes = self.times(L)
        if self.subdivide > 1:
            frac = jnp.arange(self.subdivide) / (self.subdivide * L)
            nodes = jnp.concatenate([(nodes[:-1, None] + frac[None, :]).ravel(), nodes[-1:]])
        return nodes.astype(dtype)

    def field(self, problem: Problem, Theta: jax.Array, t, z, weights=None, probes=None):
        """F(z, t) = (1 - a) F_j(z) + a F_{j+1}(z), the piecewise-linear interpolant.

        Where a is exactly 0 or 1 (at a node, before t_0, after t_{L-1}) only the slice of
        weight 1 is evaluated, through ``lax.cond``: the blend would add 0 x the other slice's
        field, so the value is the same to the bit, and so is its gradient (diffrax stops
        gradients through the step size, so t carries none). A step clipped to a node has
        its last stages there: 33 of a forward solve's 61 evaluations at L = 8 (section
        benchmarks/README.md, "The continuous-depth gradient from recorded steps (2026-12-07)")."""
        L = Theta.shape[0]
        if L == 1:
            return slice_field(problem, z, Theta[0], *(None if a is None else a[0]
                                                       for a in (weights, probes)))
        j, a = self.interval(L, t, z.dtype)
        return _blend(problem, z, a, _pair(j, Theta, weights, probes))

    def interval(self, L: int, t, dtype):
        """(j, a) with F(z, t) = (1 - a) F_j(z) + a F_{j+1}(z), for L >= 2: t between the
        nodes t_j and t_{j+1}, a clipped to [0, 1] before t_0 and after t_{L-1}."""
        s = t * L - 0.5
        j = jnp.clip(jnp.floor(s), 0, L - 2).astype(jnp.int32)
        return j, jnp.clip(s - j, 0.0, 1.0).astype(dtype)

    def norm(self, y) -> jax.Array:
        """The step-size controller's error norm: diffrax's default RMS norm over all of ``y``.

        ``y`` is the state z (N, d) on the forward solve, BacksolveAdjoint's
        augmented state (z, a_z, a_args, a_terms) on its backward solve. A hook:
        the multi-device wrapper (``_sharding``) takes the RMS over every
        device's part, so that all devices, and a single one, take the same steps.
        """
        return optx.rms_norm(y)

    def _controller(self, L: int, dtype):
        controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=self.norm)
        if L > 1:
            controller = diffrax.ClipStepSizeController(controller,
                                                        step_ts=self.step_ts(L, dtype))
        return controller

    def final_state(self, problem, Theta, x, weights=None, probes=None):
        """z(1) for z(0) = x. With ``adjoint = "checkpoint"`` and an explicit Runge-Kutta
        solver its gradient comes from the recorded steps (``_rk_adjoint``), otherwise from
        diffrax's adjoint."""
        feature_dyn, feature_static = eqx.partition(problem.feature, eqx.is_inexact_array)
        if (self.adjoint == "checkpoint"
                and _rk_adjoint.explicit_tableau(ODE_SOLVERS[self.solver]()) is not None
                and not any(eqx.is_array(leaf)
                            for leaf in jax.tree_util.tree_leaves(feature_static))):
            return _recorded_final_state(self, (feature_static, problem.scale), feature_dyn,
                                         Theta, x, weights, probes)
        return self._diffrax_final_state(problem, Theta, x, weights, probes)

    def _diffrax_final_state(self, problem, Theta, x, weights=None, probes=None):
        """z(1) by ``diffrax.diffeqsolve``, differentiated by diffrax's own adjoint."""
        L = Theta.shape[0]
        term = diffrax.ODETerm(lambda t, z, args: self.field(problem, args[0], t, z, *args[1:]))
        controller = self._controller(L, x.dtype)
        # Depth times in the state's dtype: Python floats would make diffrax promote a
        # float32 state to float64 whenever jax_enable_x64 is on.
        t0, t1 = jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
        adjoint = (diffrax.RecursiveCheckpointAdjoint() if self.adjoint == "checkpoint"
                   else diffrax.BacksolveAdjoint(stepsize_controller=controller))
        sol = diffrax.diffeqsolve(
            term, ODE_SOLVERS[self.solver](), t0=t0, t1=t1, dt0=None, y0=x,
            args=(Theta, weights, probes),
            stepsize_controller=controller, adjoint=adjoint, max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True), throw=False,
        )
        # A failed solve (max_steps hit) yields NaN, which the time loop reports as divergence.
        ok = sol.result == diffrax.RESULTS.successful
        return jnp.where(ok, sol.ys[-1], jnp.nan)

    def path(self, problem: Problem, Theta: jax.Array, z0: jax.Array, weights=None,
             n: int | None = None):
        """The state along depth: ``n`` (default 65) equispaced times in [0, 1] and z(t)
        (n, N, d), from one forward solve (figures; no adjoint)."""
        L = Theta.shape[0]
        ts = jnp.linspace(0.0, 1.0, 65 if n is None else n, dtype=z0.dtype)
        term = diffrax.ODETerm(lambda t, z, args: self.field(problem, args[0], t, z, args[1]))
        controller = self._controller(L, z0.dtype)
        sol = diffrax.diffeqsolve(
            term, ODE_SOLVERS[self.solver](), t0=ts[0], t1=ts[-1], dt0=None, y0=z0,
            args=(Theta, weights), stepsize_controller=controller, max_steps=self.max_steps,
            saveat=diffrax.SaveAt(ts=ts), adjoint=diffrax.ForwardMode(), throw=False)
        ok = sol.result == diffrax.RESULTS.successful
        return ts, jnp.where(ok, sol.ys, jnp.nan)


def _pair(j, *arrays):
    """Slices j and j + 1 of each (L, ...) array, stacked (2, ...); None stays None."""
    return tuple(None if A is None else lax.dynamic_slice_in_dim(A, j, 2) for A in arrays)


def _blend(problem, z, a, pair):
    """(1 - a) F_A(z) + a F_B(z) for ``pair`` = (Theta, weights, probes), each (2, ...) or None.

    Where a is 0 or 1 only the slice of weight 1 is evaluated (``ContinuousDepth.field``).
    Under vmap the predicate is taken over every member (``eqxi.unvmap_all``), so that the
    ``lax.cond`` stays a branch instead of a select that computes both sides.

    Traced once per shape: a solve evaluates the field at every stage, diffrax's adjoint
    and the recorded reverse pass again at every stage, each a trace of the feature map and
    its VJP. Through one ``jax.jit`` (``_blend_once``) those calls reuse the first trace
    (benchmarks/README.md, "Tracing a continuous-depth step (2026-12-07)"); XLA inlines the
    call, so the values are the same to the bit. A feature map whose static part cannot be
    hashed (a user's block holding a list, say) is traced at every call, as before.
    """
    feature_dyn, feature_static = eqx.partition(problem.feature, eqx.is_inexact_array)
    static = (feature_static, problem.scale)
    try:
        hash(static)
    except TypeError:
        return _blend_body(problem, z, a, pair)
    return _blend_once(static, feature_dyn, z, a, pair)


@functools.partial(jax.jit, static_argnums=0)
def _blend_once(static, feature_dyn, z, a, pair):
    return _blend_body(_view(static, feature_dyn), z, a, pair)


def _blend_body(problem, z, a, pair):
    def one():
        i = (a == 1).astype(jnp.int32)
        return slice_field(problem, z, *(None if A is None else A[i] for A in pair))

    def both():
        F = [slice_field(problem, z, *(None if A is None else A[i] for A in pair)) for i in (0, 1)]
        return (1 - a) * F[0] + a * F[1]

    return lax.cond(eqxi.unvmap_all((a == 0) | (a == 1)), one, both)


def _view(static, feature_dyn) -> _FieldView:
    """The feature map and alpha of a recorded solve, from ``static`` = (the feature map's
    static part, alpha) and its arrays."""
    feature_static, scale = static
    return _FieldView(eqx.combine(feature_dyn, feature_static), scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recorded_final_state(depth, static, feature_dyn, Theta, x, weights, probes):
    """z(1) as ``ContinuousDepth._diffrax_final_state`` computes it, its reverse pass from the
    recorded steps (``_rk_adjoint``); ``static`` = (the feature map's static part, alpha).
    Undifferentiated it is diffeqsolve's solve; differentiated, the recording loop, which
    takes the same steps to the same values to the bit (tests/test_depth.py)."""
    return depth._diffrax_final_state(_view(static, feature_dyn), Theta, x, weights, probes)


def _recorded_solve(depth, static, x, args) -> _rk_adjoint.RecordedSolve:
    """The recording step loop of ``final_state``'s solve, built alike in its forward and its
    reverse pass; ``args`` = (feature_dyn, Theta, weights, probes), the vector field's."""
    def vf(t, z, args):
        fd, Th, w, p = args
        return depth.field(_view(static, fd), Th, t, z, w, p)

    L = args[1].shape[0]
    solver = ODE_SOLVERS[depth.solver]()
    cap = _rk_adjoint.capacity(len(depth.step_ts(L, x.dtype)) if L > 1 else 0, depth.max_steps,
                               (solver.tableau.num_stages + 1) * x.size * x.dtype.itemsize)
    # t0 = 0 and t1 = 1 in the state's dtype, as _diffrax_final_state solves
    return _rk_adjoint.RecordedSolve(vf, solver, depth._controller(L, x.dtype),
                                     jnp.zeros((), x.dtype), jnp.ones((), x.dtype), x, args,
                                     depth.max_steps, cap)


def _recorded_fwd(depth, static, feature_dyn, Theta, x, weights, probes):
    args = (feature_dyn, Theta, weights, probes)
    y1, ok, tape = _recorded_solve(depth, static, x, args).forward()
    # A failed solve (max_steps hit) yields NaN, which the time loop reports as divergence.
    return jnp.where(ok, y1, jnp.nan), (tape, ok, args, x)


def _recorded_bwd(depth, static, residuals, g):
    tape, ok, args, x = residuals
    feature_dyn, Theta, weights, probes = args
    L = Theta.shape[0]
    lam = jnp.where(ok, g, 0)

    def stage_vjp(t, Y, ct, acc):
        """The VJP of F(t, .) at Y (``ContinuousDepth.field``) with respect to the state and
        the two slices it reads, their cotangents added into those slices."""
        j, a = depth.interval(L, t, Y.dtype) if L > 1 else (0, jnp.zeros((), Y.dtype))
        # for L = 1 the pair is slice 0 twice, of which a = 0 reads the first
        arrays = (Theta, weights, probes)
        pair = (_pair(j, *arrays) if L > 1
                else tuple(None if A is None else jnp.concatenate([A, A]) for A in arrays))
        dfd, dz, dpair = jax.vjp(lambda fd, z, pair: _blend(_view(static, fd), z, a, pair),
                                 feature_dyn, Y, pair)[1](ct)
        fd_acc, *accs = acc

        def add(A, dA):
            if L == 1:
                return A + dA[:1] + dA[1:]
            return lax.dynamic_update_slice_in_dim(A, lax.dynamic_slice_in_dim(A, j, 2) + dA,
                                                   j, 0)
        accs = [None if A is None else add(A, dA) for A, dA in zip(accs, dpair)]
        return dz, (jax.tree_util.tree_map(jnp.add, fd_acc, dfd), *accs)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, (feature_dyn, Theta, weights, probes))
    # a step's stages as a loop where an evaluation is small (``_rk_adjoint.LOOP_STAGES_BELOW``)
    small = x.shape[0] * x.shape[1] * Theta.shape[1] < _rk_adjoint.LOOP_STAGES_BELOW
    dx, (dfd, dTh, dw, dp) = _recorded_solve(depth, static, x, args).gradient(
        stage_vjp, tape, lam, zeros, loop_stages=small)
    return dfd, dTh, dx, dw, dp


_recorded_final_state.defvjp(_recorded_fwd, _recorded_bwd)


DEPTHS = ("layers", "continuous")
