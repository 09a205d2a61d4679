"""``Linear``: f(z; theta) = theta z, theta a d x d matrix flattened row-major (k = d^2).

With d = 1 the whole gradient flow has a closed form (docs/theory.md,
"Closed form: linear, d = 1"). The field contracts the particles first:
F(Z) = Z (sum_m omega_m Theta_m)^T, so it needs no tiling and no custom rule.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .base import AbstractFeatureMap, mm


class Linear(AbstractFeatureMap):
    """f(z; theta) = theta z with theta a d x d matrix (flattened row-major)."""

    @property
    def k(self) -> int:
        return self.d * self.d

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        if self.d == 1:
            return ("theta",)
        sep = "," if self.d >= 10 else ""  # theta_110 would be ambiguous
        return tuple(f"theta_{i}{sep}{j}" for i in range(self.d) for j in range(self.d))

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """The diagonal entries (theta_00, theta_11) for d >= 2."""
        return ((0, self.d + 1),) if self.d >= 2 else ((0, 0),)

    @property
    def reflection(self) -> np.ndarray:
        """theta -> -theta."""
        return -np.ones(self.k)

    def lift(self, Theta, d: int):
        """The d x d matrix with theta in its top-left block: f_d(pad(z)) = pad(f(z))."""
        Theta = np.asarray(Theta)
        lead = Theta.shape[:-1]
        out = np.zeros(lead + (d, d), Theta.dtype)
        out[..., : self.d, : self.d] = Theta.reshape(lead + (self.d, self.d))
        return out.reshape(lead + (d * d,))

    def __call__(self, z, theta):
        return mm(theta.reshape(self.d, self.d), z)

    def field(self, Z, Theta, weights=None):
        mean = jnp.mean(Theta, axis=0) if weights is None else mm(weights, Theta)
        return mm(Z, mean.reshape(self.d, self.d).T)

    def field_value(self, Z, Theta, weights=None):
        return self.field(Z, Theta, weights)
