"""The slope limiters of the MUSCL scheme: what a limiter declares (``AbstractLimiter``).

MUSCL reconstructs the face states of cell j from its limited slope
sigma_j = phi(a, b), a = rho_j - rho_{j-1}, b = rho_{j+1} - rho_j:

    rho^L_{j+1/2} = rho_j + sigma_j / 2,   rho^R_{j-1/2} = rho_j - sigma_j / 2

(``_grid/finite_volume.py``). A limiter is the function phi, and its
``positivity_limit`` the largest CFL number dt R (R the largest outflow rate of
a cell, ``max_rate``) for which a forward-Euler step keeps rho >= 0.

**Where the positivity limit comes from.** Every limiter here is a TVD limiter
in the sense phi(a, b) = 0 unless ab > 0, phi has the sign of a and b, and
|phi(a, b)| <= k min(|a|, |b|) with k <= 2. If sigma_j > 0 then a > 0, so
sigma_j <= k a <= k rho_j (rho_{j-1} >= 0); if sigma_j < 0, likewise
|sigma_j| <= k |b| <= k rho_j. Both face states of cell j then lie in
[(1 - k/2) rho_j, c rho_j] with c = 1 + k/2: non-negative (k <= 2), and the
mass leaving cell j in one Euler step is at most dt c R rho_j <= rho_j when

    dt R <= 1 / c = 2 / (2 + k)   (= ``positivity_limit``):

minmod k = 1 -> 2/3; van Leer k = 2 -> 1/2. (The upwind scheme, sigma = 0, has
c = 1 and limit 1; it is a scheme, not a limiter: ``finite_volume.UPWIND_LIMIT``.)
The SSP steppers keep the bound stage by stage (``wflow/_steppers/base.py``).

**Accuracy.** phi(a, a) = a: on smooth, monotone data the slope is a
consistent derivative and MUSCL is second order; at extrema (ab <= 0) sigma =
0 and the scheme is locally first order (the L1 error is still close to
second order: tests/test_grid.py).

Adding a limiter: one final class in its own file (name, positivity_limit,
``slope``) and one line in the registry ``LIMITERS`` (``__init__.py``); the
config's ``solver.grid.limiter`` choices, ``FiniteVolume`` and the tests read
it from there.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax


class AbstractLimiter(eqx.Module):
    """A MUSCL slope limiter phi(a, b) (module docstring).

    Attributes:
        name: the config value (``solver.grid.limiter``).
        positivity_limit: 2 / (2 + k) for |phi(a, b)| <= k min(|a|, |b|): the largest
            forward-Euler CFL number dt R that keeps rho >= 0.
    """

    name: eqx.AbstractClassVar[str]
    positivity_limit: eqx.AbstractClassVar[float]

    @abc.abstractmethod
    def slope(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """sigma = phi(a, b) elementwise, a = rho_j - rho_{j-1}, b = rho_{j+1} - rho_j;
        0 where ab <= 0 (extrema), else of the sign of a and b."""
