"""The van Leer limiter: phi(a, b) = 2ab / (a + b) for ab > 0 (the harmonic mean), else 0.

Smooth in a and b; phi <= 2 min(|a|, |b|) (k = 2), face states in [0, 2 rho_j],
positivity limit 1/2.
"""

from typing import ClassVar

import jax.numpy as jnp

from .base import AbstractLimiter


class VanLeer(AbstractLimiter):
    """van Leer's harmonic mean; positivity limit 1/2."""

    name: ClassVar[str] = "vanleer"
    positivity_limit: ClassVar[float] = 0.5

    def slope(self, a, b):
        prod = a * b
        safe = jnp.where(prod > 0, a + b, 1.0)  # no 0/0 where the slope is 0 anyway
        return jnp.where(prod > 0, 2.0 * prod / safe, 0.0)
