"""The learning problem: data, feature map, readout and loss (SPEC §1).

    embedding   z(0; x) = (x, 0, ..., 0) in R^d,  d >= d_in
    readout     g(z)    = z[:d_out],              d_out <= d
    loss        E       = (1 / 2N) sum_i |g(z(1; x_i)) - y_i|^2
    adjoint     p(1; x_i) = grad g^T (g(z(1; x_i)) - y_i)   (zero-padded residual)

``p`` is scaled so that p = N * dE/dz: it is O(1) whatever N is, and the first
variation is V(theta, t) = (1/N) sum_i p(t; x_i) . f(z(t; x_i); theta).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._features import FeatureMap


class Problem(eqx.Module):
    """Data (x (N, d_in), y (N, d_out)) and a feature map acting on R^d."""

    feature: FeatureMap
    x: jax.Array
    y: jax.Array

    def __check_init__(self):
        if self.x.ndim != 2 or self.y.ndim != 2:
            raise ValueError(
                f"data: x must be (N, d_in) and y (N, d_out); got shapes {self.x.shape}, {self.y.shape}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"data: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}; they must match"
            )
        if self.x.shape[1] > self.feature.d:
            raise ValueError(
                f"model.dim = {self.feature.d}: must be >= the input dimension d_in = {self.x.shape[1]}"
            )
        if self.y.shape[1] > self.feature.d:
            raise ValueError(
                f"model.dim = {self.feature.d}: must be >= the output dimension d_out = {self.y.shape[1]}"
            )

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.feature.d

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def d_out(self) -> int:
        return self.y.shape[1]

    def embed(self, x: jax.Array) -> jax.Array:
        """(N, d_in) -> (N, d): z(0; x) = (x, 0, ..., 0)."""
        return jnp.pad(x, ((0, 0), (0, self.d - x.shape[1])))

    def readout(self, z: jax.Array) -> jax.Array:
        """(N, d) -> (N, d_out): the first d_out coordinates."""
        return z[:, : self.d_out]

    def loss(self, z1: jax.Array) -> jax.Array:
        """E = (1/2N) sum_i |g(z1_i) - y_i|^2."""
        r = self.readout(z1) - self.y
        return 0.5 * jnp.mean(jnp.sum(r * r, axis=1))

    def terminal_adjoint(self, z1: jax.Array) -> jax.Array:
        """p(1) = N dE/dz(1) = zero-padded residual g(z1) - y, shape (N, d)."""
        return jnp.pad(self.readout(z1) - self.y, ((0, 0), (0, self.d - self.d_out)))

    def astype(self, dtype) -> Problem:
        return Problem(self.feature, self.x.astype(dtype), self.y.astype(dtype))
