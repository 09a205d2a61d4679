"""SSP-RK(4,3), the four-stage third-order method of Kraaijevanger (1991) and Spiteri and
Ruuth (2002):

    u_1 = u_0 + h/2 L(u_0),
    u_2 = u_1 + h/2 L(u_1),
    u_3 = 2/3 u_0 + 1/3 (u_2 + h/2 L(u_2)),
    u_4 = u_3 + h/2 L(u_3).

Every Euler term has size h/2, so its SSP coefficient is C = 2: a grid substep
may be twice the forward-Euler one (``positivity_limit`` = 2), for four
evaluations of L instead of ssprk3's three -- an effective coefficient C / s =
1/2 against ssprk3's 1/3, i.e. a third fewer velocity evaluations at the
positivity limit. C = 2 is also the threshold factor of its stability
polynomial (the optimum for four stages and order 3).

Stability polynomial: R(z) = 1 + z + z^2/2 + z^3/6 + z^4/48 (exp(z) to third
order; the z^4 coefficient is 1/48, not 1/24). |R(-x)| <= 1 for
0 <= x <= 5.149486 (the first root of R(-x)^2 = 1, found numerically; R = +1
there), twice ssprk3's 2.5127: stable for h |lambda| <= 5.1494 (rounded down).

Deterministic only: u_1 and u_3 live at t + h/2.
"""

from typing import ClassVar

from .base import AbstractStepper


class SSPRK43(AbstractStepper):
    """Four-stage SSP-RK3, order 3; stable for h |lambda| <= 5.1494; SSP coefficient 2."""

    name: ClassVar[str] = "ssprk43"
    order: ClassVar[int] = 3
    stability_limit: ClassVar[float] = 5.1494
    positivity_limit: ClassVar[float] = 2.0
    step_copies: ClassVar[int] = 11
    stochastic: ClassVar[bool] = False
    alpha: ClassVar[tuple[tuple[float, ...], ...]] = (
        (1.0,), (0.0, 1.0), (2 / 3, 0.0, 1 / 3), (0.0, 0.0, 0.0, 1.0))
    beta: ClassVar[tuple[tuple[float, ...], ...]] = (
        (0.5,), (0.0, 0.5), (0.0, 0.0, 1 / 6), (0.0, 0.0, 0.0, 0.5))
