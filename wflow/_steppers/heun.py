"""Heun = the explicit trapezoid rule = SSP-RK2 (Shu and Osher 1988):

    u_1 = u_0 + h L(u_0),
    u_2 = 1/2 u_0 + 1/2 (u_1 + h L(u_1)).

With temperature > 0 and the same increment dW in both Euler terms it is the
stochastic Heun method for additive noise: u_2 = u_0 + h/2 (L(u_0) + L(u_1)) + dW
with u_1 = u_0 + h L(u_0) + dW.
"""

from typing import ClassVar

from .base import AbstractStepper


class Heun(AbstractStepper):
    """SSP-RK2, order 2; R(z) = 1 + z + z^2/2, stable for h |lambda| <= 2; SSP coefficient 1."""

    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    stability_limit: ClassVar[float] = 2.0
    positivity_limit: ClassVar[float] = 1.0
    step_copies: ClassVar[int] = 7
    stochastic: ClassVar[bool] = True
    alpha: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,), (0.5, 0.5))
    beta: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,), (0.0, 0.5))
