"""SSP-RK3, the three-stage third-order method of Shu and Osher (1988):

    u_1 = u_0 + h L(u_0),
    u_2 = 3/4 u_0 + 1/4 (u_1 + h L(u_1)),
    u_3 = 1/3 u_0 + 2/3 (u_2 + h L(u_2)).

Its stability polynomial is R(z) = 1 + z + z^2/2 + z^3/6, with |R(-x)| <= 1 for
0 <= x <= 2.5127453 (R(-x) = -1 there). Deterministic only: u_2 lives at t + h/2.
"""

from typing import ClassVar

from .base import AbstractStepper


class SSPRK3(AbstractStepper):
    """Shu-Osher SSP-RK3, order 3; stable for h |lambda| <= 2.5127; SSP coefficient 1."""

    name: ClassVar[str] = "ssprk3"
    order: ClassVar[int] = 3
    stability_limit: ClassVar[float] = 2.5127
    positivity_limit: ClassVar[float] = 1.0
    step_copies: ClassVar[int] = 9
    stochastic: ClassVar[bool] = False
    alpha: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,), (0.75, 0.25), (1 / 3, 0.0, 2 / 3))
    beta: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,), (0.0, 0.25), (0.0, 0.0, 2 / 3))
