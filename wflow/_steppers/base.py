"""The time steppers' contract: what a ``train.method`` declares, and one generic SSP step.

Every ``train.method`` is an ``AbstractMethod``: its ``name`` (the config value),
``step_copies`` (the theta-sized arrays one step holds at once; the memory
preflight multiplies by them), ``stochastic`` (whether it integrates the
Langevin flow, temperature > 0, of the particles) and ``positivity_limit``
(see below; 0 for a method the grid cannot take). The fixed-step methods are
``AbstractStepper``s: explicit strong-stability-preserving (SSP) Runge-Kutta
methods in Shu-Osher form, which add ``order``, ``stability_limit`` and their
tableau, and share one ``apply``. The adaptive method (diffrax Tsit5,
``adaptive.py``) is an ``AbstractMethod`` only.

**Shu-Osher form.** With u_0 = u(t) and a step of size h, for i = 1..s

    u_i = sum_{j<i} alpha_ij (u_j + (beta_ij / alpha_ij) h L(u_j, t + c_j h)),

u(t + h) = u_s, alpha_ij >= 0, sum_j alpha_ij = 1, beta_ij >= 0 (beta_ij > 0
only where alpha_ij > 0). Each term with beta_ij > 0 is a forward-Euler step
of size h beta_ij / alpha_ij from stage j; u_i is a convex combination of
them. So whatever a forward-Euler step keeps (rho >= 0 on the grid under
dt R <= c_max, a TVD bound) every stage keeps when h beta_ij / alpha_ij obeys
the Euler bound, i.e. when h <= C dt_Euler with the SSP coefficient
C = min alpha_ij / beta_ij: that C is ``positivity_limit``, in units of the
forward-Euler CFL number (the grid takes substeps C times the Euler one).

The stage times follow from the tableau: c_0 = 0 and
c_i = sum_j (alpha_ij c_j + beta_ij) (``stage_times``; c_s = 1).

**Mass-preserving increments.** ``apply`` forms a stage with several terms as
u_0 + sum_j alpha_ij (X_j - u_0) (X_j the Euler step from stage j, or u_j
itself), not as sum_j alpha_ij X_j: with inexact weights such as 1/3, 2/3 the
sum would add a systematic round-off of size eps to the grid's mass every
substep, the increments only to what moved. A stage with one term of weight 1
is that term exactly. Non-negativity survives the rounding where a stage has
one increment (every shipped tableau): X_j >= 0 and u_0 >= 0 give
fl(X_j - u_0) >= -u_0, and fl(alpha) <= 1 keeps u_0 + alpha (X_j - u_0) >= 0.

**Stability** (``stability_limit``): on the test equation u' = lambda u with
lambda < 0 real, one step multiplies u by the stability polynomial R(h lambda);
the method is stable for h |lambda| <= ``stability_limit``, the first x > 0
with |R(-x)| = 1. ``Flow.stable_step`` divides it by the spectral radius of
the drift's Jacobian.

**Noise.** A ``stochastic`` stepper applied to the Langevin flow adds the same
Gaussian increment dW over the whole step in every Euler term: with weights
summing to 1 the step then adds exactly dW, and every stage whose time is
c = 1 sees the full increment, which is the stochastic Heun method for
additive noise (euler: Euler-Maruyama). A stage at an intermediate time
(ssprk3's c = 1/2) would need the Brownian path at that time, not a share of
dW: such steppers are deterministic only.

Adding a stepper: one final class in its own file (name, order,
stability_limit, positivity_limit, step_copies, stochastic, alpha, beta) and
one line in the registry ``STEPPERS`` (``__init__.py``). The config choices,
the preflight, the particle and grid flows and the tests read it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx

U = TypeVar("U")
Info = TypeVar("Info")


class AbstractMethod(eqx.Module):
    """A ``train.method``: the attributes the config, the preflight and the flows read.

    Attributes:
        name: the config value (``train.method``).
        step_copies: theta-sized arrays one particle step holds at once (the preflight's
            c_method; +1 with temperature > 0 is the preflight's own).
        stochastic: integrates the particles' Langevin flow (temperature > 0).
        positivity_limit: the SSP coefficient C (module docstring); 0 where the grid
            cannot take the method.
    """

    name: eqx.AbstractClassVar[str]
    step_copies: eqx.AbstractClassVar[int]
    stochastic: eqx.AbstractClassVar[bool]
    positivity_limit: eqx.AbstractClassVar[float]


class AbstractStepper(AbstractMethod):
    """An explicit SSP Runge-Kutta method in Shu-Osher form (module docstring).

    Attributes (besides ``AbstractMethod``'s):
        order: the global order of accuracy p (error ~ h^p).
        stability_limit: the real-axis limit: stable for h |lambda| <= stability_limit.
        alpha, beta: the Shu-Osher tableau, row i - 1 holding alpha_ij (beta_ij) for
            j = 0..i-1, i = 1..s.
    """

    order: eqx.AbstractClassVar[int]
    stability_limit: eqx.AbstractClassVar[float]
    alpha: eqx.AbstractClassVar[tuple[tuple[float, ...], ...]]
    beta: eqx.AbstractClassVar[tuple[tuple[float, ...], ...]]

    @property
    def stages(self) -> int:
        """s, the number of stages (= evaluations of L per step for the shipped tableaus)."""
        return len(self.alpha)

    @property
    def stage_times(self) -> tuple[float, ...]:
        """(c_0, .., c_s): stage j is the solution at t + c_j h (c_0 = 0, c_s = 1)."""
        c = [0.0]
        for a_row, b_row in zip(self.alpha, self.beta):
            c.append(sum(a * cj + b for a, b, cj in zip(a_row, b_row, c)))
        return tuple(c)

    @property
    def ssp_coefficient(self) -> float:
        """min alpha_ij / beta_ij over beta_ij > 0: what ``positivity_limit`` declares."""
        return min(a / b for a_row, b_row in zip(self.alpha, self.beta)
                   for a, b in zip(a_row, b_row) if b > 0)

    def apply(self, euler: Callable[[U, int, Any], tuple[U, Info]], u0: U,
              h) -> tuple[U, tuple[Info, ...]]:
        """One step of size h from u0: (u(t + h), the ``info`` of every Euler term in order).

        ``euler(u, j, dt)`` is the caller's forward-Euler step of size dt from the
        stage value u = u_j, whose time is t + stage_times[j] h:
        (u + dt L(u, t + c_j h), info) -- particles: theta + dt v (+ dW); the grid:
        rho + dt (d rho / ds). ``info`` is whatever the caller wants back per
        evaluation (finiteness, a rate). Each stage's L is evaluated once for
        every beta_ij > 0 (once per stage for the shipped tableaus). u is an
        array (anything with +, - and scalar *).
        """
        stages = [u0]
        infos = []
        for a_row, b_row in zip(self.alpha, self.beta):
            terms = []
            for j, (a, b) in enumerate(zip(a_row, b_row)):
                if a == 0:
                    continue
                if b == 0:
                    terms.append((a, stages[j], j == 0))
                else:
                    new, info = euler(stages[j], j, h * (b / a))
                    infos.append(info)
                    terms.append((a, new, False))
            if len(terms) == 1 and terms[0][0] == 1:
                u = terms[0][1]
            else:
                u = u0
                for a, x, is_u0 in terms:
                    if not is_u0:  # alpha (u_0 - u_0) = 0
                        u = u + a * (x - u0)
            stages.append(u)
        return stages[-1], tuple(infos)
