"""``Neuron``: f(z; u, w, b) = u * sigma(w . z + b), with hand-written kernels.

theta = (u, w, b) in R^d x R^d x R laid out as ``[u_0..u_{d-1}, w_0..w_{d-1}, b]``,
k = 2d + 1 (k = 2d without bias); docs/theory.md, "Model".

``field`` overrides the generic vmap path (``base.generic_field``, which it is
tested against to round-off) with a fused forward and, on CPU, a hand-written
adjoint:

* forward (``field_value``): up to ``_SMALL_D`` the small d-axis is written as
  broadcasts and one reduction, which XLA fuses into a single loop over (N, M)
  (measured at d = 2, N = 256, M = 512, L = 32: 5.2 ms against 7.9 ms for two
  matrix products with an inner or outer size of d; benchmarks/README.md). On
  CPU, when all rows fit one block, ``field`` computes it instead in the
  adjoint's (M, N) layout: sigma(w . z + b) in one fused pass, then d
  matrix-vector products over m (``_field_gemv``: 0.25-0.7 ns per pair against
  0.6-1.1 for d = 2 and 2.8 for d = 1, where XLA's reduction is slow);
* adjoint (``field_vjp_block``): the contractions with the d-axis as d
  matrix-vector products in an (M, N) layout (10.9 ms against 28 ms for JAX's
  VJP of the matmul form): XLA's CPU GEMM handles an output width of 1-8
  poorly, while its GEMV runs at memory bandwidth. On other platforms JAX's VJP
  of the forward was measured 15-35% faster (H200), so each platform gets its best.

Both run block by block (``tile``, ``AbstractFeatureMap.blocks``). On CPU the default
block is larger at small d (``cpu_tile``): there the (M, N) passes run at memory
bandwidth and the one-block path keeps the matrix-vector forward. Forward-mode
(``jax.jvp``) is not available through ``field`` (it has a custom reverse
rule); use ``field_value`` for that.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._activations import Activation, get_activation
from .base import (
    TILE_CPU,
    AbstractFeatureMap,
    autodiff_block_vjp,
    blocked_value,
    blocked_vjp,
    default_tile,
    mm,
)

_SMALL_D = 8


def cpu_tile(d: int) -> int:
    """Neuron's default tile on CPU: 2^22 / d elements, at least 2^18 and at most 2^21.

    Measured per training step (AMD EPYC, 2 cores, tanh; tiles 2^18 .. 2^21 in one process;
    benchmarks/README.md, "A block's size follows d (2026-12-07)"): at d = 2 the step took
    0.63 of its 2^18-tile time at 1024 x 2048 pairs (2^21 elements: one block), 0.68 at
    2048 x 2048 and 0.64 at 4096 x 4096; d = 4 was fastest at 2^20 (0.71), d = 8 at
    2^19 - 2^20 (0.90), while d = 16 was 1.25x slower at 2^20 than at 2^18, its products
    being GEMMs that want their output in cache.
    """
    return min(2**21, max(TILE_CPU, 2**22 // d))


class Neuron(AbstractFeatureMap):
    """f(z; u, w, b) = u * sigma(w . z + b) (module docstring)."""

    activation: str = eqx.field(static=True, default="tanh")
    bias: bool = eqx.field(static=True, default=True)
    sharpness: float = eqx.field(static=True, default=10.0)

    def __check_init__(self):
        get_activation(self.activation, self.sharpness)  # raises on unknown names

    def auto_tile(self) -> int:
        """``cpu_tile(d)`` on CPU, the backend's ``default_tile()`` elsewhere."""
        return cpu_tile(self.d) if jax.default_backend() == "cpu" else default_tile()

    @property
    def sigma(self) -> Activation:
        return get_activation(self.activation, self.sharpness)

    @property
    def k(self) -> int:
        return 2 * self.d + (1 if self.bias else 0)

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        d = self.d
        names = tuple(f"u_{i}" for i in range(d)) + tuple(f"w_{i}" for i in range(d))
        return names + (("b",) if self.bias else ())

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """(w_0, u_0), the classic picture of a neuron's input weight against its output
        weight; for d >= 2 also (w_0, w_1), the direction in which it reads the state."""
        d = self.d
        return ((d, 0),) if d == 1 else ((d, 0), (d, d + 1))

    @property
    def reflection(self) -> np.ndarray:
        """u -> -u (w and b unchanged)."""
        return np.concatenate([-np.ones(self.d), np.ones(self.k - self.d)])

    def lift(self, Theta, d: int):
        """u and w padded with zeros to d coordinates, b kept: f_d(pad(z)) = pad(f(z))."""
        Theta = np.asarray(Theta)
        u, w = Theta[..., : self.d], Theta[..., self.d : 2 * self.d]
        pad = [(0, 0)] * (Theta.ndim - 1) + [(0, d - self.d)]
        parts = [np.pad(u, pad), np.pad(w, pad)] + ([Theta[..., 2 * self.d :]] if self.bias else [])
        return np.concatenate(parts, axis=-1)

    def split(self, Theta: jax.Array):
        """(..., k) -> u (..., d), w (..., d), b (...) (zeros without bias)."""
        d = self.d
        u = Theta[..., :d]
        w = Theta[..., d : 2 * d]
        b = Theta[..., 2 * d] if self.bias else jnp.zeros(Theta.shape[:-1], Theta.dtype)
        return u, w, b

    def __call__(self, z, theta):
        u, w, b = self.split(theta)
        return u * self.sigma(mm(w, z) + b)

    def field(self, Z, Theta, weights=None):
        """sum_m omega_m u_m sigma(w_m . Z_i + b_m), with the custom reverse rule above."""
        return _neuron_field(self, Z, Theta, weights)

    def field_value(self, Z, Theta, weights=None):
        """The forward computation of ``field`` (one block), differentiable by JAX in any mode."""
        u, w, b = self.split(Theta)
        M = Theta.shape[0]
        if weights is not None:
            u = u * weights[:, None]
        if self.d <= _SMALL_D:
            out = self._field_fused(Z, u, w, b)
        else:
            out = mm(self.sigma(mm(Z, w.T) + b[None, :]), u)
        return out / M if weights is None else out

    def _field_fused(self, Z, u, w, b):
        """sum_m u_m sigma(w_m . z_i + b_m) as one fused XLA loop over (N, M): pre-activation,
        sigma and the sum over m; nothing of size N x M is written to memory."""
        pre = b[None, :]
        for j in range(self.d):
            pre = pre + Z[:, j : j + 1] * w[None, :, j]
        return jnp.sum(self.sigma(pre)[:, :, None] * u[None, :, :], axis=1)

    def _field_gemv(self, Z, u, w, b):
        """The same sum in the adjoint's (M, N) layout: sigma(w . z + b) as one fused pass,
        then d matrix-vector products over m. On CPU, XLA's reduction over m of the fused
        form ran at 2.8 ns per (z_i, theta_m) pair for d = 1 and 0.7-1.0 ns for d = 2;
        these GEMVs at 0.5-0.7 ns for both (benchmarks/README.md, "Elementwise floor")."""
        pre = b[:, None]
        for j in range(self.d):
            pre = pre + w[:, j : j + 1] * Z[None, :, j]
        act = self.sigma(pre)  # (M, N)
        return jnp.stack([mm(u[:, j], act) for j in range(self.d)], axis=1)

    def _field_value_gemv(self, Z, Theta, weights=None):
        """``field_value`` with ``_field_gemv`` (d <= _SMALL_D)."""
        u, w, b = self.split(Theta)
        if weights is not None:
            u = u * weights[:, None]
        out = self._field_gemv(Z, u, w, b)
        return out / Theta.shape[0] if weights is None else out

    def field_blocked(self, Z, Theta, weights=None):
        """``field_value`` computed over blocks of at most ``tile`` elements.

        On CPU, with d <= _SMALL_D and every row in one block (the particles split or not),
        each block is computed by ``_field_gemv``. Inside a scan over row blocks XLA's CPU
        GEMVs ran 4x slower (1.9 against 0.45 ns per pair at N = 1024, M = 2048 in 8 row
        blocks), so there the fused form stays.
        """
        value = self.field_value
        if self.d <= _SMALL_D and self.blocks(Z.shape[0], Theta.shape[0])[0] == 1:
            def value(Z, Theta, weights=None):
                return jax.lax.platform_dependent(
                    Z, Theta, weights, cpu=self._field_value_gemv, default=self.field_value)
        return blocked_value(self, value, Z, Theta, weights)

    def field_vjp(self, Z, Theta, P, weights=None):
        """Hand-written adjoint of ``field``, over blocks of at most ``tile`` elements."""
        return blocked_vjp(self, self.field_vjp_block, Z, Theta, P, weights)

    def autodiff_vjp(self, Z, Theta, P, weights=None):
        """JAX's VJP of ``field_value``, over blocks of at most ``tile`` elements."""
        return blocked_vjp(self, functools.partial(autodiff_block_vjp, self.field_value),
                           Z, Theta, P, weights)

    def field_vjp_block(self, Z, Theta, P, weights=None):
        """Hand-written adjoint of ``field_value`` (one activation pass, no (N, M) GEMM outputs).

        With a_{mi} = sigma(w_m . z_i + b_m), r_{mi} = (u_m . p_i) sigma'(.) and
        omega_m the weights (1/M by default), q_{mi} = omega_m r_{mi}:
            gu_m = omega_m sum_i a_{mi} p_i,   gw_m = sum_i q_{mi} z_i,
            gb_m = sum_i q_{mi},               gz_i = sum_m q_{mi} w_m,
            gomega_m = u_m . sum_i a_{mi} p_i.
        Everything is laid out (M, N) so that every reduction is a contiguous
        matrix-vector product.
        """
        u, w, b = self.split(Theta)
        M, d = Theta.shape[0], self.d
        scale = jnp.full((M,), 1.0 / M, Theta.dtype) if weights is None else weights
        act, dact = self.sigma.value_and_derivative(mm(w, Z.T) + b[:, None])  # (M, N)
        q = mm(u, P.T) * dact * scale[:, None]  # (M, N)
        if d <= _SMALL_D:
            ap = jnp.stack([mm(act, P[:, j]) for j in range(d)], axis=1)
            gw = jnp.stack([mm(q, Z[:, j]) for j in range(d)], axis=1)
            gZ = jnp.stack([mm(w[:, j], q) for j in range(d)], axis=1)
        else:
            ap, gw, gZ = mm(act, P), mm(q, Z), mm(q.T, w)
        gu = ap * scale[:, None]
        parts = [gu, gw, jnp.sum(q, axis=1, keepdims=True)] if self.bias else [gu, gw]
        gweights = None if weights is None else jnp.sum(u * ap, axis=1)
        return gZ, jnp.concatenate(parts, axis=1), gweights


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _neuron_field(feature: Neuron, Z, Theta, weights):
    return feature.field_blocked(Z, Theta, weights)


def _neuron_field_fwd(feature, Z, Theta, weights):
    return feature.field_blocked(Z, Theta, weights), (Z, Theta, weights)


def _neuron_field_bwd(feature, residuals, P):
    Z, Theta, weights = residuals
    return jax.lax.platform_dependent(
        Z, Theta, P, weights, cpu=feature.field_vjp, default=feature.autodiff_vjp)


_neuron_field.defvjp(_neuron_field_fwd, _neuron_field_bwd)
