"""The solver step in training time s: how one kind of measure moves, knowing nothing of the loop.

A ``Flow`` binds the problem, the depth discretization and the regularization
to one measure representation and offers what the time loop
(``_integrate.integrate``) needs: one step of size h, an adaptive solve
between two times (where the representation supports it), the diagnostics
recorded in the history, and the array a snapshot stores. Two flows exist:

* ``ParticleFlow`` (here): the measure is the particle array Theta (L, M, k),
  moved by the gradient flow of docs/theory.md, "Gradient flow",

      d theta_{l,m} / ds = v_{l,m}(Theta) - lambda(s) theta_{l,m}  [+ sqrt(2 tau) dW/ds],

  with v = -grad_theta V_l(theta_{l,m}) = -(M / w_l) dE/dtheta
  (``DepthDiscretization.evaluate``).
* ``GridFlow`` (``_grid/flow.py``): the measure is a density on a theta-grid,
  moved by a finite-volume scheme for the same PDE.

Methods (``METHODS``, from the registry ``wflow._steppers``): the fixed-step
SSP Runge-Kutta steppers of ``STEPPERS`` -- ``euler`` (explicit Euler,
theta += h v = gradient descent with learning rate L M h; with tau > 0
Euler-Maruyama), ``heun`` (explicit trapezoid = SSP-RK2; with tau > 0 the
stochastic Heun method), ``ssprk3`` (Shu-Osher SSP-RK3, deterministic only),
... -- each applied by its generic Shu-Osher ``apply`` with the particles'
forward-Euler step theta + dt v (+ dW), and ``adaptive``: diffrax Tsit5 with
a PID controller between consecutive record times (particles, deterministic
only). What a flow does with a method it reads from the method's attributes
(``stochastic``, ``stability_limit``, ``positivity_limit``), not its name.

Block reordering (``_blocks.Reordering``, Lu et al. 2020): a particle flow
with an active reordering permutes the depth slices at the start of every
K-th step (n = K, 2K, ...), using the global step index n, so that a resumed
run permutes exactly as an uninterrupted one.

Recorded diagnostics: the flow's own (particles: loss E, stationarity
residual) and, from the problem's data, the training ``accuracy`` for
labelled data and ``test_loss`` / ``test_accuracy`` when the problem holds a
held-out set (``Flow.data_diagnostics``); ``history_names`` lists them.

Numerical failure is data: ``step`` returns ``ok = False`` when the step
produced non-finite values, and the loop stops cleanly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._blocks import Reordering
from ._depth import DepthDiscretization
from ._problem import Problem
from ._sharding import to_host
from ._steppers import STEPPERS, get_method

L2_SCHEDULES = ("constant", "inverse", "exponential")


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

    def l2_rate(self, s):
        """d lambda / ds (<= 0 for every schedule)."""
        if self.l2_schedule == "constant":
            return jnp.zeros_like(s)
        if self.l2_schedule == "inverse":
            return -self.l2 / self.l2_decay / (1.0 + s / self.l2_decay) ** 2
        return -self.l2 / self.l2_decay * jnp.exp(-s / self.l2_decay)


def finite(*xs) -> jax.Array:
    """True when every leaf of every argument is finite."""
    leaves = jax.tree_util.tree_leaves(xs)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Flow(eqx.Module):
    """What the time loop needs from a measure representation (see the module docstring)."""

    problem: Problem
    depth: DepthDiscretization
    regularization: Regularization

    # Names of the scalars the flow itself records (``diagnostics``); "loss" comes first.
    measure_history_names: ClassVar[tuple[str, ...]] = ("loss", "stationarity")
    # Name of the snapshot / state array in a run file (/snapshots/<name>, /state/<name>).
    snapshot_name: ClassVar[str] = "theta"

    @property
    def history_names(self) -> tuple[str, ...]:
        """Names of the scalars ``diagnostics`` returns, in history order ("loss" first).

        The flow's own names, then those of ``data_diagnostics``: "accuracy" for
        labelled data, "test_loss" (and "test_accuracy") with a held-out set.
        """
        return self.measure_history_names + data_history_names(self.problem)

    def data_diagnostics(self, measure) -> dict[str, jax.Array]:
        """Accuracy on the training data and loss / accuracy on the held-out data (jit-able).

        Only what the problem defines: ``accuracy`` when ``problem.classification``,
        ``test_loss`` (the data fit (1/2N_test) sum |g(z(1; x)) - y|^2 of the
        held-out set) and ``test_accuracy`` when it has ``x_test``.
        """
        p = self.problem
        out = {}
        if p.classification:
            out["accuracy"] = p.accuracy(self.predict(measure), p.y)
        if p.has_test:
            prediction = self.predict(measure, p.x_test)
            out["test_loss"] = p.fit(prediction, p.y_test)
            if p.classification:
                out["test_accuracy"] = p.accuracy(prediction, p.y_test)
        return out

    @property
    def monotone(self) -> str | None:
        """The history column the exact flow never increases, or None (with noise).

        Without noise: the loss E when l2 = 0; the regularized energy
        ("energy", where the flow records it) when l2 > 0 (see ``ParticleFlow``).
        """
        reg = self.regularization
        if reg.temperature > 0:
            return None
        if reg.l2 > 0:
            return "energy" if "energy" in self.history_names else None
        return "loss"

    def stable_step(self, measure, s: float, method: str) -> tuple[float, float] | None:
        """(largest step the fixed-step ``method`` keeps stable here, the eigenvalue it
        comes from), or None where the flow cannot estimate it."""
        return None

    def check(self, measure, method: str) -> None:
        """Static checks (shapes, supported methods); ValueError with one line."""
        if not get_method(method).stochastic and self.regularization.temperature > 0:
            allowed = " or ".join(repr(name) for name, m in STEPPERS.items() if m.stochastic)
            raise ValueError(f"train.temperature > 0 needs train.method = {allowed} "
                             f"(got {method!r}; the other methods are for the deterministic flow)")

    def diagnostics(self, measure, s) -> dict[str, jax.Array]:
        """The recorded scalars (``history_names``) at one state (jit-able)."""
        raise NotImplementedError

    def step(self, method: str, measure, key, n, h):
        """Step number n (from s = n h to (n + 1) h): (new measure, new key, ok) (jit-able).

        ``n`` is the global step index (a traced int32), so a step can depend on
        it deterministically (e.g. an action every K steps) and resume exactly.
        """
        raise NotImplementedError

    def adaptive(self, measure, s0, s1, h0, rtol: float, atol: float):
        """The measure at s1 from s0 by an adaptive solver: (measure, ok) (jit-able)."""
        raise NotImplementedError

    def weighted(self, measure):
        """The measure as weighted particles: (Theta (L, M, k), weights (L, M) or None = 1/M)."""
        raise NotImplementedError

    def predict(self, measure, x=None) -> jax.Array:
        """g(z(1; x)) for x (N', d_in) (default: the training inputs) -> (N', d_out)."""
        Theta, weights = self.weighted(measure)
        return self.depth.predict(self.problem, Theta, x, weights)

    def snapshot(self, measure) -> np.ndarray:
        """The array a snapshot and the resumable state store (gathered from every device)."""
        return to_host(measure)

    def restore(self, like, array):
        """The measure with the stored ``array`` in place of ``like``'s values."""
        return jnp.asarray(array, like.dtype)


class Measure(eqx.Module):
    """Base of measure representations other than a plain particle array (e.g. ``GridDensity``).

    A subclass names the ``Flow`` that moves it; ``make_flow`` builds that flow.
    """

    flow_type: ClassVar[type[Flow]]

    def make_flow(self, problem: Problem, depth: DepthDiscretization,
                  regularization: Regularization) -> Flow:
        """The flow that moves this measure (its ``flow_type``; a subclass may configure it)."""
        return self.flow_type(problem, depth, regularization)


def data_history_names(problem: Problem) -> tuple[str, ...]:
    """The names ``Flow.data_diagnostics`` records for this problem, in order."""
    names = ("accuracy",) if problem.classification else ()
    if problem.has_test:
        names += ("test_loss",) + (("test_accuracy",) if problem.classification else ())
    return names


class ParticleFlow(Flow):
    """Particles Theta (L, M, k) moved by their velocity (module docstring).

    Recorded: ``loss`` E and ``stationarity`` R = sum_l w_l mean_m |v_lm|^2
    (= int int |grad_theta V|^2 rho, which is -dE/ds when l2 = 0 and there
    is no noise). With ``l2 > 0`` also

        energy       F(s) = E + (lambda(s)/2) m2,  m2 = sum_l w_l mean_m |theta_lm|^2,
        dissipation  D(s) = sum_l w_l mean_m |v_lm - lambda(s) theta_lm|^2
                            - (lambda'(s)/2) m2,

    and along the exact flow d theta/ds = v - lambda theta the identity
    dF/ds = -D holds exactly (for every schedule of lambda; D >= 0 because
    lambda' <= 0), so F never increases. E itself obeys
    dE/ds = -sum_l w_l mean_m v_lm . (v_lm - lambda theta_lm), which need not
    be negative: with l2 > 0, R is not -dE/ds.

    ``reordering`` (default: none) permutes the depth slices before every K-th
    step (``_blocks.Reordering``).
    """

    reordering: Reordering = Reordering()

    @property
    def measure_history_names(self) -> tuple[str, ...]:
        names = ("loss", "stationarity")
        return names + (("energy", "dissipation") if self.regularization.l2 > 0 else ())

    def check(self, measure, method):
        super().check(measure, method)
        k = self.problem.feature.k
        if measure.ndim != 3 or measure.shape[2] != k:
            raise ValueError(f"theta has shape {measure.shape}: must be (L, M, k) with k = {k}")
        if self.reordering.active and method not in STEPPERS:
            raise ValueError(f"train.reorder = {self.reordering.mode!r} needs fixed steps "
                             f"(train.method = {', '.join(map(repr, STEPPERS))}), not {method!r}")

    def weighted(self, theta):
        return theta, None

    def velocity(self, theta, s):
        """(E, v - lambda(s) theta): the loss and the deterministic drift."""
        ev = self.depth.evaluate(self.problem, theta)
        v = ev.velocity
        if self.regularization.l2 > 0:
            v = v - self.regularization.l2_at(s).astype(theta.dtype) * theta
        return ev.loss, v

    def diagnostics(self, theta, s):
        ev = self.depth.evaluate(self.problem, theta)
        out = {"loss": ev.loss, "stationarity": ev.stationarity}
        reg = self.regularization
        if reg.l2 > 0:
            w = self.depth.weights(theta.shape[0], theta.dtype)
            lam = reg.l2_at(s).astype(theta.dtype)
            rate = reg.l2_rate(s).astype(theta.dtype)

            def moment(a):  # sum_l w_l mean_m |a_lm|^2
                return jnp.sum(w * jnp.mean(jnp.sum(a * a, axis=2), axis=1))

            m2 = moment(theta)
            out["energy"] = ev.loss + 0.5 * lam * m2
            out["dissipation"] = moment(ev.velocity - lam * theta) - 0.5 * rate * m2
        return {**out, **self.data_diagnostics(theta)}

    def stable_step(self, theta, s, method):
        """The stepper's ``stability_limit`` / rho (2 / rho for euler and heun, 2.51 / rho for
        ssprk3), rho the spectral radius of the drift's Jacobian at ``theta``, from 30 power
        iterations on central differences of the drift; None for ``adaptive``."""
        if method not in STEPPERS:
            return None
        limit = STEPPERS[method].stability_limit
        rho = float(_spectral_radius(self, theta, jnp.asarray(s, theta.dtype)))
        if not (math.isfinite(rho) and rho > 0):
            return None
        return limit / rho, rho

    def step(self, method, theta, key, n, h):
        """The stepper's ``apply`` with the forward-Euler step theta + dt v(theta, s + c h) + dW.

        With temperature tau > 0, dW ~ N(0, 2 tau h) is drawn once per step and added
        in every Euler term: for a ``stochastic`` stepper that is Euler-Maruyama
        (euler) or the stochastic Heun method (heun: theta + h/2 (v_0 + v_1) + dW).
        """
        stepper = STEPPERS[method]
        reg = self.regularization
        s = n * h
        theta = self.reordering.apply(self.problem, theta, n)
        if reg.temperature > 0:
            key, sub = jax.random.split(key)
            amp = jnp.sqrt(2.0 * reg.temperature * h).astype(theta.dtype)
            dw = amp * jax.random.normal(sub, theta.shape, theta.dtype)
        else:
            dw = jnp.zeros((), theta.dtype)
        times = stepper.stage_times

        def euler(u, j, dt):
            loss, v = self.velocity(u, s + times[j] * h)
            return u + dt * v + dw, finite(loss, v)

        new, ok = stepper.apply(euler, theta, h)
        return new, key, jnp.all(jnp.stack(ok))

    def adaptive(self, theta, s0, s1, h0, rtol, atol):
        term = diffrax.ODETerm(lambda s, th, _: self.velocity(th, s)[1])
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), t0=s0, t1=s1, dt0=h0, y0=theta,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True), max_steps=100_000, throw=False,
        )
        new = sol.ys[-1]
        ok = (sol.result == diffrax.RESULTS.successful) & finite(new)
        return jnp.where(ok, new, theta), ok


@eqx.filter_jit
def _spectral_radius(flow: ParticleFlow, theta, s, iterations: int = 30):
    """|lambda_max| of J = d(drift)/d theta by power iteration, J u by central differences.

    The drift v - lambda theta is -(M / w_l) grad F (F the regularized energy),
    so J is similar to a symmetric matrix and its eigenvalues are real; Euler
    is stable near ``theta`` for h < 2 / |lambda_max|. Central differences with
    eps = sqrt(machine eps) (1 + |theta|) give |lambda| to ~sqrt(eps) relative.
    """
    eps = jnp.sqrt(jnp.finfo(theta.dtype).eps) * (1.0 + jnp.linalg.norm(theta))

    def apply(u):
        plus = flow.velocity(theta + eps * u, s)[1]
        minus = flow.velocity(theta - eps * u, s)[1]
        return (plus - minus) / (2 * eps)

    u0 = jax.random.normal(jax.random.PRNGKey(0), theta.shape, theta.dtype)
    u0 = u0 / jnp.linalg.norm(u0)

    def body(_, carry):
        u, _ = carry
        au = apply(u)
        norm = jnp.linalg.norm(au)
        return jnp.where(norm > 0, au / norm, u), norm

    _, rho = jax.lax.fori_loop(0, iterations, body, (u0, jnp.zeros((), theta.dtype)))
    return rho


def make_flow(problem: Problem, depth: DepthDiscretization, measure,
              regularization: Regularization = Regularization(),
              reordering: Reordering | None = None) -> Flow:
    """The flow that moves ``measure``: its ``flow_type`` for a ``Measure``, else particles.

    ``reordering`` (block reordering, ``_blocks.Reordering``) is for particles only.
    """
    reordering = reordering or Reordering()
    if isinstance(measure, Measure):
        if reordering.active:
            raise ValueError(f"train.reorder = {reordering.mode!r}: block reordering is "
                             "implemented for particles only")
        return measure.make_flow(problem, depth, regularization)
    return ParticleFlow(problem, depth, regularization, reordering)
