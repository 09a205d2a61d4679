"""The minmod limiter: phi(a, b) = sign(a) min(|a|, |b|) for ab > 0, else 0.

The most dissipative TVD limiter: k = 1, face states in [rho_j / 2, 3/2 rho_j],
positivity limit 1 / (3/2) = 2/3.
"""

from typing import ClassVar

import jax.numpy as jnp

from .base import AbstractLimiter


class Minmod(AbstractLimiter):
    """minmod(a, b); positivity limit 2/3."""

    name: ClassVar[str] = "minmod"
    positivity_limit: ClassVar[float] = 2.0 / 3.0

    def slope(self, a, b):
        return 0.5 * (jnp.sign(a) + jnp.sign(b)) * jnp.minimum(jnp.abs(a), jnp.abs(b))
