"""Forward Euler: u_1 = u_0 + h L(u_0) (= gradient descent with learning rate L M h for
particles; with temperature > 0, Euler-Maruyama)."""

from typing import ClassVar

from .base import AbstractStepper


class Euler(AbstractStepper):
    """Explicit Euler, order 1; R(z) = 1 + z, stable for h |lambda| <= 2; SSP coefficient 1."""

    name: ClassVar[str] = "euler"
    order: ClassVar[int] = 1
    stability_limit: ClassVar[float] = 2.0
    positivity_limit: ClassVar[float] = 1.0
    step_copies: ClassVar[int] = 5
    stochastic: ClassVar[bool] = True
    alpha: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,),)
    beta: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0,),)
