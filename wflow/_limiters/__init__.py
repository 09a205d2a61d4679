"""The MUSCL slope limiters: a registry of small final classes (``base.py``).

``LIMITERS`` maps every ``solver.grid.limiter`` to its ``AbstractLimiter``.
Adding a limiter: one file with its final class and one line in ``LIMITERS``.
"""

from __future__ import annotations

from .base import AbstractLimiter
from .mc import MonotonizedCentral
from .minmod import Minmod
from .vanleer import VanLeer

LIMITERS: dict[str, AbstractLimiter] = {
    "minmod": Minmod(),
    "vanleer": VanLeer(),
    "mc": MonotonizedCentral(),
}

__all__ = ["LIMITERS", "AbstractLimiter"]
