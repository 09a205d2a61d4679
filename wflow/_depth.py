"""Depth discretizations: how the particles Theta (L, M, k) define the forward map.

Both discretizations return the loss E and its derivative dE/dTheta; the
particle velocity (SPEC §2) is then the same for both,

    v_{l,m} = -(M / w_l) dE/dtheta_{l,m}  ~  -grad_theta V(theta_{l,m}, t_l),

where w_l is the depth weight of slice l (``weights``). With every w_l = 1/L
(both discretizations below) this is O(1) whatever L and M are.

``LayeredDepth`` is the finite ResNet,
    z_{l+1} = z_l + (1/L) F_l(z_l),   F_l(z) = (1/M) sum_m f(z; theta_{l,m}),
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

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ._problem import Problem


class Evaluation(NamedTuple):
    """Loss, particle velocity -grad V (L, M, k) and stationarity residual at one state.

    ``stationarity`` = sum_l w_l (1/M) sum_m |v_{l,m}|^2, the discrete form of
    int int |grad_theta V|^2 rho dtheta dt; for the layered ResNet it is
    exactly -dE/ds along the gradient flow.
    """

    loss: jax.Array
    velocity: jax.Array
    stationarity: jax.Array


class DepthDiscretization(eqx.Module):
    """Common interface of the depth discretizations."""

    def weights(self, L: int, dtype=jnp.float32) -> jax.Array:
        """Depth weight w_l of each slice: 1/L for both discretizations."""
        return jnp.full((L,), 1.0 / L, dtype)

    def times(self, L: int) -> jax.Array:
        raise NotImplementedError

    def final_state(self, problem: Problem, Theta: jax.Array, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def loss_and_grad(self, problem: Problem, Theta: jax.Array):
        raise NotImplementedError

    def predict(self, problem: Problem, Theta: jax.Array, x: jax.Array | None = None) -> jax.Array:
        """g(z(1; x)) for x (N', d_in) (default: the training inputs) -> (N', d_out)."""
        x = problem.x if x is None else x
        return problem.readout(self.final_state(problem, Theta, problem.embed(x)))

    def loss(self, problem: Problem, Theta: jax.Array) -> jax.Array:
        return problem.loss(self.final_state(problem, Theta, problem.embed(problem.x)))

    def evaluate(self, problem: Problem, Theta: jax.Array) -> Evaluation:
        """Loss, velocity -(M/w_l) dE/dtheta and stationarity residual (jit-able)."""
        L, M, _ = Theta.shape
        loss, dE = self.loss_and_grad(problem, Theta)
        w = self.weights(L, Theta.dtype)
        v = -(M / w)[:, None, None] * dE
        stat = jnp.sum(w * jnp.mean(jnp.sum(v * v, axis=2), axis=1))
        return Evaluation(loss, v, stat)


class LayeredDepth(DepthDiscretization):
    """The finite ResNet z_{l+1} = z_l + (1/L)(1/M) sum_m f(z_l; theta_{l,m}), l = 0..L-1."""

    def times(self, L: int) -> jax.Array:
        """Layer l acts on [l/L, (l+1)/L]; its depth time is t_l = l / L."""
        return jnp.arange(L) / L

    def trajectory(self, problem: Problem, Theta: jax.Array, z0: jax.Array):
        """Returns z_L (N, d) and the inputs z_0..z_{L-1} of every layer (L, N, d)."""
        h = 1.0 / Theta.shape[0]
        field = problem.feature.field

        def layer(z, theta):
            return z + h * field(z, theta), z

        return lax.scan(layer, z0, Theta)

    def final_state(self, problem, Theta, x):
        return self.trajectory(problem, Theta, x)[0]

    def loss_and_grad(self, problem, Theta):
        L = Theta.shape[0]
        h = 1.0 / L
        zL, zs = self.trajectory(problem, Theta, problem.embed(problem.x))
        loss = problem.loss(zL)

        # Discrete adjoint, p_l = N dE/dz_l:  p_l = p_{l+1} + h (d_z F_l(z_l))^T p_{l+1}.
        # The VJP re-runs layer l from the stored z_l (rematerialization).
        def layer_back(p, inputs):
            theta, z = inputs
            # Through the feature's own reverse rule (for Neuron: the hand-written
            # adjoint on CPU, JAX's VJP on GPU; see _features.py).
            _, vjp = jax.vjp(problem.feature.field, z, theta)
            gz, gtheta = vjp(p)
            return p + h * gz, gtheta

        _, gTheta = lax.scan(layer_back, problem.terminal_adjoint(zL), (Theta, zs), reverse=True)
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

    def __check_init__(self):
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"solver.adjoint = {self.adjoint!r}: allowed are {', '.join(ADJOINTS)}")
        if self.solver not in ODE_SOLVERS:
            raise ValueError(
                f"solver.ode_solver = {self.solver!r}: allowed are {', '.join(ODE_SOLVERS)}"
            )
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"solver.rtol/atol = {self.rtol}/{self.atol}: both must be > 0")

    def times(self, L: int) -> jax.Array:
        """Node of slice l: t_l = (l + 1/2) / L."""
        return (jnp.arange(L) + 0.5) / L

    def field(self, problem: Problem, Theta: jax.Array, t, z):
        """F(z, t) = (1 - a) F_j(z) + a F_{j+1}(z), the piecewise-linear interpolant."""
        L = Theta.shape[0]
        field = problem.feature.field
        if L == 1:
            return field(z, Theta[0])
        s = t * L - 0.5
        j = jnp.clip(jnp.floor(s), 0, L - 2).astype(jnp.int32)
        a = jnp.clip(s - j, 0.0, 1.0).astype(z.dtype)
        th0 = lax.dynamic_index_in_dim(Theta, j, keepdims=False)
        th1 = lax.dynamic_index_in_dim(Theta, j + 1, keepdims=False)
        return (1 - a) * field(z, th0) + a * field(z, th1)

    def final_state(self, problem, Theta, x):
        L = Theta.shape[0]
        term = diffrax.ODETerm(lambda t, z, th: self.field(problem, th, t, z))
        controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
        # Depth times in the state's dtype: Python floats would make diffrax promote a
        # float32 state to float64 whenever jax_enable_x64 is on.
        t0, t1 = jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
        if L > 1:
            nodes = self.times(L).astype(x.dtype)
            controller = diffrax.ClipStepSizeController(controller, step_ts=nodes)
        adjoint = (diffrax.RecursiveCheckpointAdjoint() if self.adjoint == "checkpoint"
                   else diffrax.BacksolveAdjoint(stepsize_controller=controller))
        sol = diffrax.diffeqsolve(
            term, ODE_SOLVERS[self.solver](), t0=t0, t1=t1, dt0=None, y0=x, args=Theta,
            stepsize_controller=controller, adjoint=adjoint, max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True), throw=False,
        )
        # A failed solve (max_steps hit) yields NaN, which the time loop reports as divergence.
        ok = sol.result == diffrax.RESULTS.successful
        return jnp.where(ok, sol.ys[-1], jnp.nan)

    def loss_and_grad(self, problem, Theta):
        return jax.value_and_grad(lambda th: self.loss(problem, th))(Theta)


DEPTHS = ("layers", "continuous")
