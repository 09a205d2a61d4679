"""Feature maps f(z; theta) and their weighted particle sum F(z) = sum_m omega_m f(z; theta_m).

Two feature maps (docs/theory.md, "Model"):

* ``Neuron``:  theta = (u, w, b) in R^d x R^d x R,  f(z; theta) = u * sigma(w . z + b),
  k = 2d + 1 (k = 2d without bias). Coordinates of theta are laid out as
  ``[u_0..u_{d-1}, w_0..w_{d-1}, b]``.
* ``Linear``:  theta in R^{d x d} flattened row-major (k = d^2),  f(z; theta) = theta z.

``field(Z, Theta, weights)`` is the batched kernel every solver uses: Z (N, d)
states, Theta (M, k) particles of one depth slice with weights omega (M,),
returns (N, d) with row i equal to sum_m omega_m f(Z_i; Theta_m). Without
weights omega_m = 1/M (the empirical measure of M particles); a grid cell is a
particle at its centre with weight rho_c |C| (``_grid.py``), so particles and
grids share this one kernel. Its reverse-mode derivative is the adjoint /
first-variation kernel: JAX's VJP in general, and for ``Neuron`` a
``jax.custom_vjp`` whose backward is the hand-written ``field_vjp`` on CPU and
JAX's VJP of the forward elsewhere. Every solver goes through ``field``.

Memory: one call works on (N, M) intermediates (pre-activations, sigma,
sigma', the adjoint's weighted products). ``Neuron`` splits them into blocks
of at most ``tile`` elements (``Neuron.tile``, config ``solver.tile``): rows
of Z in chunks of N_c and, when M alone exceeds the tile, particles in
chunks of M_c, N_c M_c <= tile, looped with ``lax.scan`` (forward and
adjoint, with weights and probes). The field and its adjoint are sums over
blocks, so the result is the same up to rounding; padding rows/particles
are zeros (u = 0 and p = 0 contribute exactly nothing). Below the tile
nothing changes. Default tile (``default_tile``): 2^18 elements (1 MiB in
float32) on CPUs, where blocks that stay in cache made large steps 1.5-3x
faster (benchmarks/README.md), and 2^24 (64 MiB) on accelerators, where each
block is a few kernel launches and bigger is better.

``probe(Z, Q)`` is the first variation's gradient as a differentiable
primitive: it adds nothing to the field (its value is exactly zero) but its
reverse-mode derivative with respect to the query points Q (Q, k) against
cotangents P is sum_i grad_q [P_i . f(Z_i; q)], i.e. the gradient of the loss
with respect to an infinitesimal mass placed at q. ``DepthDiscretization.
first_variation_gradient`` uses it to evaluate grad_theta V anywhere.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._activations import Activation, get_activation

# Up to this state dimension the small d-axis is handled explicitly (measured
# on CPU at d = 2, N = 256, M = 512, L = 32; benchmarks/README.md):
# * forward: pre-activation, sigma and the sum over m written as broadcasts and
#   one reduction, which XLA fuses into a single loop over (N, M) (5.2 ms
#   against 7.9 ms for two matrix products with an inner or outer size of d);
# * adjoint: the contractions with the d-axis as d matrix-vector products in
#   an (M, N) layout (10.9 ms against 28 ms for JAX's VJP of the matmul form and
#   12-48 ms for fused-reduction forms): XLA's CPU GEMM handles an output width
#   of 1-8 poorly, while its GEMV runs at memory bandwidth.
_SMALL_D = 8

# Default largest (N, M) block of one field call, in elements: larger problems are
# processed in blocks (``Neuron.tile``). CPU: 1 MiB per float32 buffer, so a block's
# intermediates stay in cache (measured 1.5-3x faster steps at N M >= 4e6 on a 2-core
# AMD EPYC, no change below; benchmarks/README.md). Accelerators: 64 MiB, fewer launches.
TILE_CPU = 2**18
TILE = 2**24


def default_tile(backend: str | None = None) -> int:
    """The default ``tile`` for a JAX backend (default: JAX's default backend)."""
    backend = jax.default_backend() if backend is None else backend
    return TILE_CPU if backend == "cpu" else TILE

# Full float32 accuracy in every product: on GPUs JAX's default matmul
# precision for float32 is TF32 (10-bit mantissa), which put the gradients
# 3e-4 away from a float64 reference on an H200; these products are tiny and
# memory-bound, so the full precision costs nothing measurable.
_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


class FeatureMap(eqx.Module):
    """Base class: a feature map knows its state dimension d and parameter size k."""

    d: int = eqx.field(static=True)

    @property
    def k(self) -> int:
        raise NotImplementedError

    def __call__(self, z: jax.Array, theta: jax.Array) -> jax.Array:
        """f(z; theta) for one state z (d,) and one particle theta (k,)."""
        raise NotImplementedError

    @property
    def reflection(self) -> np.ndarray:
        """Signs R (k,) of the odd reflection: f(z; R * theta) = -f(z; theta) for every z.

        Pairs (theta, R theta) have zero field: the symmetrized initialization
        (``init.symmetric``) that starts the network at the identity map.
        """
        raise NotImplementedError

    def field(self, Z: jax.Array, Theta: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        """sum_m omega_m f(Z_i; Theta_m) for Z (N, d), Theta (M, k), weights omega (M,) -> (N, d).

        ``weights=None`` means omega_m = 1/M (the particles' empirical measure).
        """
        raise NotImplementedError

    def field_vjp(self, Z: jax.Array, Theta: jax.Array, P: jax.Array,
                  weights: jax.Array | None = None):
        """Reverse-mode derivative of ``field`` against cotangents P (N, d).

        Returns (gZ, gTheta, gweights): gZ (N, d) with row i = (d_z F(Z_i))^T P_i,
        gTheta (M, k) = sum_i d_Theta [P_i . F(Z_i)] and gweights (M,) with
        gweights_m = sum_i P_i . f(Z_i; Theta_m) (None when ``weights`` is None).
        With P the adjoint states p, grad_theta V(Theta_m) = gTheta_m / (N omega_m).
        Default: JAX's VJP of ``field``.
        """
        if weights is None:
            _, vjp = jax.vjp(lambda Z, Theta: self.field(Z, Theta), Z, Theta)
            return (*vjp(P), None)
        _, vjp = jax.vjp(self.field, Z, Theta, weights)
        return vjp(P)

    def probe(self, Z: jax.Array, Q: jax.Array) -> jax.Array:
        """Zero (N, d), whose reverse-mode derivative in Q is the first variation's gradient.

        d/dQ_q of sum_i P_i . probe(Z, Q)_i = sum_i grad_q [P_i . f(Z_i; q)]; the
        derivative in Z is zero, so adding ``probe`` to a field changes neither
        the forward pass nor the adjoint states. See the module docstring.
        """
        return _probe(self, Z, Q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _probe(feature: FeatureMap, Z, Q):
    return jnp.zeros_like(Z)


def _probe_fwd(feature, Z, Q):
    return jnp.zeros_like(Z), (Z, Q)


def _probe_bwd(feature, residuals, P):
    Z, Q = residuals
    ones = jnp.ones(Q.shape[:1], Q.dtype)
    # Through ``field``'s own reverse rule (the hand-written adjoint on CPU for Neuron).
    _, vjp = jax.vjp(lambda q: feature.field(Z, q, ones), Q)
    return jnp.zeros_like(Z), vjp(P)[0]


_probe.defvjp(_probe_fwd, _probe_bwd)


class Neuron(FeatureMap):
    """f(z; u, w, b) = u * sigma(w . z + b)."""

    activation: str = eqx.field(static=True, default="tanh")
    bias: bool = eqx.field(static=True, default=True)
    sharpness: float = eqx.field(static=True, default=10.0)
    # Largest (N, M) block of intermediates, in elements; None: ``default_tile()``
    # of the backend in use when the kernel is traced (module docstring).
    tile: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        get_activation(self.activation, self.sharpness)  # raises on unknown names
        if self.d < 1:
            raise ValueError(f"model.dim = {self.d}: must be >= 1")
        if not (self.tile is None or (isinstance(self.tile, int) and self.tile >= 1)):
            raise ValueError(f"solver.tile = {self.tile!r}: must be an integer >= 1 (elements)")

    def blocks(self, N: int, M: int) -> tuple[int, int, int, int]:
        """(n_N, N_c, n_M, M_c): the block grid of an (N, M) field call.

        M_c = min(M, tile) particles and N_c = ceil(N / n_N) rows with n_N the
        fewest chunks such that N_c M_c <= tile; (1, N, 1, M) when N M <= tile.
        """
        tile = default_tile() if self.tile is None else self.tile
        Mc = min(M, tile)
        nM = -(-M // Mc)
        rows = max(1, tile // Mc)
        nN = -(-N // rows)
        return nN, -(-N // nN), nM, Mc

    @property
    def sigma(self) -> Activation:
        return get_activation(self.activation, self.sharpness)

    @property
    def k(self) -> int:
        return 2 * self.d + (1 if self.bias else 0)

    @property
    def reflection(self) -> np.ndarray:
        """u -> -u (w and b unchanged)."""
        return np.concatenate([-np.ones(self.d), np.ones(self.k - self.d)])

    def split(self, Theta: jax.Array):
        """(..., k) -> u (..., d), w (..., d), b (...) (zeros without bias)."""
        d = self.d
        u = Theta[..., :d]
        w = Theta[..., d : 2 * d]
        b = Theta[..., 2 * d] if self.bias else jnp.zeros(Theta.shape[:-1], Theta.dtype)
        return u, w, b

    def __call__(self, z, theta):
        u, w, b = self.split(theta)
        return u * self.sigma(_mm(w, z) + b)

    def field(self, Z, Theta, weights=None):
        """sum_m omega_m u_m sigma(w_m . Z_i + b_m), with a custom reverse-mode rule.

        Every reverse-mode derivative of the field (the layered adjoint, diffrax's
        backprop through the solver and its backsolve adjoint) goes through a
        ``jax.custom_vjp``: on CPU its backward is the hand-written ``field_vjp``
        (JAX's own VJP of the fused forward below is ~10x slower there); on other
        platforms JAX's VJP of ``field_value``. Forward-mode (``jax.jvp``) is
        therefore not available through ``field``; use ``field_value`` for that.
        """
        return _neuron_field(self, Z, Theta, weights)

    def field_value(self, Z, Theta, weights=None):
        """The forward computation of ``field``, differentiable by JAX in any mode."""
        u, w, b = self.split(Theta)
        M = Theta.shape[0]
        if weights is not None:
            u = u * weights[:, None]
        if self.d <= _SMALL_D:
            # One fused XLA loop over (N, M): pre-activation, sigma and the sum over m,
            # nothing of size N x M is written to memory.
            pre = b[None, :]
            for j in range(self.d):
                pre = pre + Z[:, j : j + 1] * w[None, :, j]
            out = jnp.sum(self.sigma(pre)[:, :, None] * u[None, :, :], axis=1)
        else:
            out = _mm(self.sigma(_mm(Z, w.T) + b[None, :]), u)
        return out / M if weights is None else out

    def field_blocked(self, Z, Theta, weights=None):
        """``field_value`` computed over blocks of at most ``tile`` elements (``blocks``)."""
        N, M = Z.shape[0], Theta.shape[0]
        nN, Nc, nM, Mc = self.blocks(N, M)
        if nN * nM == 1:
            return self.field_value(Z, Theta, weights)
        omega = jnp.full((M,), 1.0 / M, Theta.dtype) if weights is None else weights
        Zb = _split(Z, nN, Nc)
        Tb, wb = _split(Theta, nM, Mc), _split(omega, nM, Mc)

        def rows(_, z):
            def cols(F, tw):
                return F + self.field_value(z, *tw), None

            F, _ = lax.scan(cols, jnp.zeros_like(z), (Tb, wb))
            return None, F

        _, F = lax.scan(rows, None, Zb)
        return F.reshape(nN * Nc, self.d)[:N]

    def field_vjp(self, Z, Theta, P, weights=None):
        """Hand-written adjoint of ``field``, over blocks of at most ``tile`` elements.

        The sums below run over blocks of rows i and particles m (``blocks``),
        each block by ``field_vjp_block``.
        """
        return self.blocked_vjp(self.field_vjp_block, Z, Theta, P, weights)

    def autodiff_vjp(self, Z, Theta, P, weights=None):
        """JAX's VJP of ``field_value``, over blocks of at most ``tile`` elements."""

        def block(Z, Theta, P, weights):
            if weights is None:
                return (*jax.vjp(self.field_value, Z, Theta)[1](P), None)
            return jax.vjp(self.field_value, Z, Theta, weights)[1](P)

        return self.blocked_vjp(block, Z, Theta, P, weights)

    def blocked_vjp(self, block_vjp, Z, Theta, P, weights=None):
        """Apply an adjoint ``block_vjp(Z, Theta, P, weights)`` block by block and sum.

        gZ sums over particle blocks, gTheta and gweights over row blocks;
        padding rows have P = 0 and padding particles u = 0, omega = 0, so they
        add exactly zero. Without weights the blocks get explicit omega = 1/M.
        """
        N, M = Z.shape[0], Theta.shape[0]
        nN, Nc, nM, Mc = self.blocks(N, M)
        if nN * nM == 1:
            return block_vjp(Z, Theta, P, weights)
        omega = jnp.full((M,), 1.0 / M, Theta.dtype) if weights is None else weights
        Zb, Pb = _split(Z, nN, Nc), _split(P, nN, Nc)
        Tb, wb = _split(Theta, nM, Mc), _split(omega, nM, Mc)

        def rows(acc, zp):
            z, p = zp

            def cols(gz, tw):
                theta, omega = tw
                gz_b, gT_b, gw_b = block_vjp(z, theta, p, omega)
                return gz + gz_b, (gT_b, gw_b)

            gz, (gT, gw) = lax.scan(cols, jnp.zeros_like(z), (Tb, wb))
            return (acc[0] + gT, acc[1] + gw), gz

        zero = (jnp.zeros_like(Tb), jnp.zeros_like(wb))
        (gT, gw), gZ = lax.scan(rows, zero, (Zb, Pb))
        gZ = gZ.reshape(nN * Nc, self.d)[:N]
        gT = gT.reshape(nM * Mc, -1)[:M]
        return gZ, gT, None if weights is None else gw.reshape(nM * Mc)[:M]

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
        act, dact = self.sigma.value_and_derivative(_mm(w, Z.T) + b[:, None])  # (M, N)
        q = _mm(u, P.T) * dact * scale[:, None]  # (M, N)
        if d <= _SMALL_D:
            ap = jnp.stack([_mm(act, P[:, j]) for j in range(d)], axis=1)
            gw = jnp.stack([_mm(q, Z[:, j]) for j in range(d)], axis=1)
            gZ = jnp.stack([_mm(w[:, j], q) for j in range(d)], axis=1)
        else:
            ap, gw, gZ = _mm(act, P), _mm(q, Z), _mm(q.T, w)
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
    # The hand-written adjoint is tuned for XLA's CPU backend (10x faster than
    # JAX's VJP there); on GPUs JAX's VJP of the forward was measured 15-35%
    # faster (H200, benchmarks/README.md), so each platform gets its best.
    # Both run block by block (``Neuron.tile``).
    return jax.lax.platform_dependent(
        Z, Theta, P, weights, cpu=feature.field_vjp, default=feature.autodiff_vjp)


_neuron_field.defvjp(_neuron_field_fwd, _neuron_field_bwd)


class Linear(FeatureMap):
    """f(z; theta) = theta z with theta a d x d matrix (flattened row-major)."""

    @property
    def k(self) -> int:
        return self.d * self.d

    @property
    def reflection(self) -> np.ndarray:
        """theta -> -theta."""
        return -np.ones(self.k)

    def __call__(self, z, theta):
        return _mm(theta.reshape(self.d, self.d), z)

    def field(self, Z, Theta, weights=None):
        if weights is None:
            mean = jnp.mean(Theta, axis=0)
        else:
            mean = _mm(weights, Theta)
        return _mm(Z, mean.reshape(self.d, self.d).T)


FEATURES = ("neuron", "linear")


def _split(a: jax.Array, n: int, c: int) -> jax.Array:
    """(R, ...) -> (n, c, ...), zero-padded to n c rows."""
    a = jnp.pad(a, ((0, n * c - a.shape[0]),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape((n, c) + a.shape[1:])


def make_feature(
    kind: str, d: int, activation: str = "tanh", bias: bool = True, sharpness: float = 10.0,
    tile: int | None = None,
) -> FeatureMap:
    """Build a feature map by name (``"neuron"`` or ``"linear"``).

    ``tile`` bounds the (N, M) intermediates of ``Neuron`` (elements; None: the
    backend's ``default_tile``); ``Linear`` has none (its field contracts Theta first).
    """
    if kind == "neuron":
        return Neuron(d=d, activation=activation, bias=bias, sharpness=sharpness, tile=tile)
    if kind == "linear":
        return Linear(d=d)
    raise ValueError(f"model.feature = {kind!r}: allowed are {', '.join(FEATURES)}")
