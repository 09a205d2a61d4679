"""The monotonized central (MC) limiter of van Leer (1977):

    phi(a, b) = minmod(2a, (a + b) / 2, 2b) = sign(a) min(2|a|, |a + b| / 2, 2|b|)  for ab > 0,

else 0. On smooth data it is the central slope (a + b) / 2, the least
dissipative choice, and it limits only near steep gradients and extrema.

Positivity limit: |phi| <= 2 min(|a|, |b|) (k = 2), attained as soon as the
larger difference is at least 3 times the smaller (then (a + b) / 2 >= 2 min).
At a cell j with rho_{j-1} = 0 and rho_{j+1} >= 4 rho_j, a = rho_j and
sigma_j = 2 rho_j: the face state rho_j + sigma_j / 2 = 2 rho_j (c = 2), so a
forward-Euler step keeps rho >= 0 exactly when dt R <= 1/c = 1/2 -- the same
limit as van Leer's, whose bound 2ab / (a + b) < 2 min(a, b) is only approached.
"""

from typing import ClassVar

import jax.numpy as jnp

from .base import AbstractLimiter


class MonotonizedCentral(AbstractLimiter):
    """minmod(2a, (a + b) / 2, 2b); positivity limit 1/2."""

    name: ClassVar[str] = "mc"
    positivity_limit: ClassVar[float] = 0.5

    def slope(self, a, b):
        size = jnp.minimum(jnp.minimum(2.0 * jnp.abs(a), 2.0 * jnp.abs(b)), 0.5 * jnp.abs(a + b))
        return jnp.where(a * b > 0, jnp.sign(a) * size, 0.0)
