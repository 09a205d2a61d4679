"""Feature maps f(z; theta) and their particle average F(z) = (1/M) sum_m f(z; theta_m).

Two feature maps (SPEC §1):

* ``Neuron``:  theta = (u, w, b) in R^d x R^d x R,  f(z; theta) = u * sigma(w . z + b),
  k = 2d + 1 (k = 2d without bias). Coordinates of theta are laid out as
  ``[u_0..u_{d-1}, w_0..w_{d-1}, b]``.
* ``Linear``:  theta in R^{d x d} flattened row-major (k = d^2),  f(z; theta) = theta z.

``field(Z, Theta)`` is the batched kernel every solver uses: Z (N, d) states,
Theta (M, k) particles of one depth slice, returns (N, d) with row i equal to
(1/M) sum_m f(Z_i; Theta_m). Its reverse-mode derivative (taken by JAX) is the
adjoint / first-variation kernel; nothing else in wflow re-implements it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._activations import Activation, get_activation

# Below this state dimension, contractions over d are written as broadcasts so
# that XLA fuses them with the activation into one loop over (N, M) instead of
# calling a matrix-multiply with an inner dimension of 1-8 (measured faster on
# CPU for d = 2; see benchmarks/README.md).
_SMALL_D = 8


class FeatureMap(eqx.Module):
    """Base class: a feature map knows its state dimension d and parameter size k."""

    d: int = eqx.field(static=True)

    @property
    def k(self) -> int:
        raise NotImplementedError

    def __call__(self, z: jax.Array, theta: jax.Array) -> jax.Array:
        """f(z; theta) for one state z (d,) and one particle theta (k,)."""
        raise NotImplementedError

    def field(self, Z: jax.Array, Theta: jax.Array) -> jax.Array:
        """(1/M) sum_m f(Z_i; Theta_m) for Z (N, d), Theta (M, k) -> (N, d)."""
        raise NotImplementedError


class Neuron(FeatureMap):
    """f(z; u, w, b) = u * sigma(w . z + b)."""

    activation: str = eqx.field(static=True, default="tanh")
    bias: bool = eqx.field(static=True, default=True)
    sharpness: float = eqx.field(static=True, default=10.0)

    def __check_init__(self):
        get_activation(self.activation, self.sharpness)  # raises on unknown names
        if self.d < 1:
            raise ValueError(f"model.dim = {self.d}: must be >= 1")

    @property
    def sigma(self) -> Activation:
        return get_activation(self.activation, self.sharpness)

    @property
    def k(self) -> int:
        return 2 * self.d + (1 if self.bias else 0)

    def split(self, Theta: jax.Array):
        """(..., k) -> u (..., d), w (..., d), b (...) (zeros without bias)."""
        d = self.d
        u = Theta[..., :d]
        w = Theta[..., d : 2 * d]
        b = Theta[..., 2 * d] if self.bias else jnp.zeros(Theta.shape[:-1], Theta.dtype)
        return u, w, b

    def __call__(self, z, theta):
        u, w, b = self.split(theta)
        return u * self.sigma(jnp.dot(w, z) + b)

    def field(self, Z, Theta):
        u, w, b = self.split(Theta)
        M = Theta.shape[0]
        if self.d <= _SMALL_D:
            pre = b[None, :]
            for j in range(self.d):
                pre = pre + Z[:, j : j + 1] * w[None, :, j]
            act = self.sigma(pre)  # (N, M)
            cols = [jnp.sum(act * u[None, :, j], axis=1) for j in range(self.d)]
            return jnp.stack(cols, axis=1) / M
        act = self.sigma(Z @ w.T + b[None, :])
        return act @ u / M


class Linear(FeatureMap):
    """f(z; theta) = theta z with theta a d x d matrix (flattened row-major)."""

    @property
    def k(self) -> int:
        return self.d * self.d

    def __call__(self, z, theta):
        return theta.reshape(self.d, self.d) @ z

    def field(self, Z, Theta):
        mean = jnp.mean(Theta, axis=0).reshape(self.d, self.d)
        return Z @ mean.T


FEATURES = ("neuron", "linear")


def make_feature(
    kind: str, d: int, activation: str = "tanh", bias: bool = True, sharpness: float = 10.0
) -> FeatureMap:
    """Build a feature map by name (``"neuron"`` or ``"linear"``)."""
    if kind == "neuron":
        return Neuron(d=d, activation=activation, bias=bias, sharpness=sharpness)
    if kind == "linear":
        return Linear(d=d)
    raise ValueError(f"model.feature = {kind!r}: allowed are {', '.join(FEATURES)}")
