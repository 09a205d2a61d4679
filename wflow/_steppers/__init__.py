"""The time steppers in training time s: a registry of small final classes (``base.py``).

``STEPPERS`` maps every fixed-step ``train.method`` to its ``AbstractStepper``
(explicit SSP Runge-Kutta in Shu-Osher form, one generic ``apply`` shared by
particles and grid); ``ADAPTIVE`` is diffrax Tsit5 (particles only).
``METHODS`` lists every ``train.method`` (the config's choices), and
``get_method`` looks one up with the config's error message.

Adding a stepper: one file with its final class and one line in ``STEPPERS``.
"""

from __future__ import annotations

from .adaptive import Adaptive
from .base import AbstractMethod, AbstractStepper
from .euler import Euler
from .heun import Heun
from .ssprk3 import SSPRK3
from .ssprk43 import SSPRK43

STEPPERS: dict[str, AbstractStepper] = {
    "euler": Euler(),
    "heun": Heun(),
    "ssprk3": SSPRK3(),
    "ssprk43": SSPRK43(),
}
ADAPTIVE = Adaptive()
METHODS: tuple[str, ...] = (*STEPPERS, ADAPTIVE.name)


def get_method(name: str) -> AbstractMethod:
    """The ``train.method`` called ``name``; ValueError naming the allowed ones."""
    if name in STEPPERS:
        return STEPPERS[name]
    if name == ADAPTIVE.name:
        return ADAPTIVE
    raise ValueError(f"train.method = {name!r}: allowed are {', '.join(METHODS)}")


__all__ = ["ADAPTIVE", "METHODS", "STEPPERS", "AbstractMethod", "AbstractStepper", "get_method"]
