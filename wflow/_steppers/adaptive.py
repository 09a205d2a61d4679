"""The adaptive method: diffrax Tsit5 with a PID step-size controller between record times.

Particles only and deterministic only (``ParticleFlow.adaptive``); it is not a
Shu-Osher SSP method, so the grid (which needs ``positivity_limit`` > 0) refuses it,
and the loop does not check it for rises of the loss (its error control allows
rises of the order of its tolerances).
"""

from typing import ClassVar

from .base import AbstractMethod


class Adaptive(AbstractMethod):
    """diffrax Tsit5 + PIDController: 7 stages and the error estimate -> 14 theta copies."""

    name: ClassVar[str] = "adaptive"
    step_copies: ClassVar[int] = 14
    stochastic: ClassVar[bool] = False
    positivity_limit: ClassVar[float] = 0.0
