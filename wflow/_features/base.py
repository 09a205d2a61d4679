"""The block interface: ``AbstractFeatureMap``, the one-sample map f(z; theta) and what is derived.

A residual block of the mean-field ResNet is a map f(z; theta) from a state
z in R^d and one particle theta in R^k to R^d (docs/theory.md, "Model"). A
block is a subclass of ``AbstractFeatureMap`` that defines two things:

* ``k``: the number of parameters per particle (a property may compute it from ``d``);
* ``__call__(z, theta)``: f for one state z (d,) and one particle theta (k,), plain JAX.

It receives the state dimension as the field ``d`` (config: ``model.dim``) and
its own hyperparameters as fields (config: the ``[model.params]`` table).
Every field of a block is a static hyperparameter (a block holds no arrays),
so fields declared without ``eqx.field`` are made static automatically.

Everything else has a generic default derived from ``__call__``:

* ``field(Z, Theta, weights)``: the batched, weighted particle sum
  F(Z_i) = sum_m omega_m f(Z_i; Theta_m) for Z (N, d), Theta (M, k), omega (M,)
  (omega = 1/M when ``weights`` is None), computed by ``vmap`` over states and
  particles in blocks of at most ``tile`` (N, M) elements (``blocks``), with a
  reverse-mode rule that recomputes each block and applies JAX's VJP to it, so
  the memory of the backward pass is one block, not N x M;
* ``probe(Z, Q)``: zero, whose reverse-mode derivative in the query points Q is
  the first variation's gradient grad_theta V at Q (docs/theory.md, "Continuum limit");
* ``coordinate_names``: ``("theta_0", "theta_1", ...)``;
* ``views``: the coordinate pairs a particle figure shows (default: the first two);
* ``statistics``: None (a particle figure shows the ``views``; a block of matrices returns
  named per-particle summaries, drawn against depth: attention's norms of Q, K, V);
* ``reflection``: None (no odd reflection known, so ``init.symmetric`` is refused).

The shipped blocks (``Neuron``, ``Linear``) override ``field`` with fast
kernels; ``generic_field`` is the generic path they are tested against.

Memory: the default tile is 2^18 elements on CPUs (a block's intermediates stay
in cache; benchmarks/README.md) and 2^24 on accelerators (fewer launches); a block
whose cost per (z_i, theta_m) pair calls for other blocks overrides ``auto_tile``
(``Neuron`` at small d on CPUs).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TILE_CPU = 2**18
TILE = 2**24

# Full float32 accuracy in every product: on GPUs JAX's default matmul
# precision for float32 is TF32 (10-bit mantissa), which put the gradients
# 3e-4 away from a float64 reference on an H200; these products are tiny and
# memory-bound, so the full precision costs nothing measurable.
mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def default_tile(backend: str | None = None) -> int:
    """The default ``tile`` for a JAX backend (default: JAX's default backend)."""
    backend = jax.default_backend() if backend is None else backend
    return TILE_CPU if backend == "cpu" else TILE


def split_rows(a: jax.Array, n: int, c: int, mode: str = "constant") -> jax.Array:
    """(R, ...) -> (n, c, ...), padded to n c rows with zeros (``mode="constant"``) or with
    copies of the last row (``"edge"``: states and particles, so that a block never sees a
    point where f might not be finite; their weights and cotangents are padded with 0)."""
    a = jnp.pad(a, ((0, n * c - a.shape[0]),) + ((0, 0),) * (a.ndim - 1), mode=mode)
    return a.reshape((n, c) + a.shape[1:])


BLOCK_ROWS = 64
"""A block keeps at least min(N, BLOCK_ROWS) rows: the particles are split too (``blocks``)."""


def grid_of_blocks(N: int, M: int, tile: int) -> tuple[int, int, int, int]:
    """(n_N, N_c, n_M, M_c) of an (N, M) field call in blocks of at most ``tile`` pairs
    (``AbstractFeatureMap.blocks``). The particles are split into chunks of at most
    tile / min(N, BLOCK_ROWS) so that a block never shrinks to a few rows (with M >= tile,
    blocks of one row made a grid kernel 3-4x slower per pair: benchmarks/README.md)."""
    nM = -(-M // min(M, max(1, tile // min(N, BLOCK_ROWS))))
    Mc = -(-M // nM)  # balanced: the last chunk's padding is under nM particles
    rows = max(1, tile // Mc)
    nN = -(-N // rows)
    return nN, -(-N // nN), nM, Mc


class AbstractFeatureMap(eqx.Module):
    """A residual block f(z; theta): define ``k`` and ``__call__``; see the module docstring.

    Fields: ``d`` (the state dimension) and ``tile`` (the largest (N, M) block of
    one field call, in elements; None: ``default_tile()`` of the backend in use
    when the kernel is traced), both keyword-only, plus the subclass's own
    hyperparameters.
    """

    d: int = eqx.field(static=True, kw_only=True)
    tile: int | None = eqx.field(static=True, default=None, kw_only=True)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A block's fields are hyperparameters: static unless declared with eqx.field.
        for name, annotation in list(cls.__dict__.get("__annotations__", {}).items()):
            if "ClassVar" in str(annotation):
                continue
            value = cls.__dict__.get(name, dataclasses.MISSING)
            if isinstance(value, dataclasses.Field):
                continue
            field = (eqx.field(static=True) if value is dataclasses.MISSING
                     else eqx.field(static=True, default=value))
            setattr(cls, name, field)

    def __check_init__(self):
        if not (isinstance(self.d, int) and not isinstance(self.d, bool) and self.d >= 1):
            raise ValueError(f"d = {self.d!r}: the state dimension must be an integer >= 1")
        if not (self.tile is None or (isinstance(self.tile, int) and self.tile >= 1)):
            raise ValueError(f"tile = {self.tile!r}: must be an integer >= 1 (elements)")

    # -- what a block defines

    @property
    @abc.abstractmethod
    def k(self) -> int:
        """The number of parameters per particle."""

    @abc.abstractmethod
    def __call__(self, z: jax.Array, theta: jax.Array) -> jax.Array:
        """f(z; theta) for one state z (d,) and one particle theta (k,) -> (d,)."""

    # -- generic capabilities (override where a block knows better)

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        """Names of the k coordinates of theta, in order (plots, tables)."""
        return tuple(f"theta_{i}" for i in range(self.k))

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """Coordinate pairs (x, y) that a particle figure shows, one row of panels each."""
        return ((0, 1),) if self.k >= 2 else ((0, 0),)

    def statistics(self, Theta: np.ndarray) -> dict[str, np.ndarray] | None:
        """Named scalar summaries of particles Theta (..., k) -> {name: (...,)}, or None.

        A particle figure draws them against depth (one panel each) instead of raw coordinate
        pairs, for blocks whose coordinates are matrices (attention: the norms of Q, K, V).
        None (the default): the figure shows the ``views``.
        """
        return None

    @property
    def reflection(self) -> np.ndarray | None:
        """Signs R (k,) with f(z; R * theta) = -f(z; theta) for every z, or None.

        Pairs (theta, R theta) have zero field: the symmetrized initialization
        (``init.symmetric``) that starts the network at the identity map.
        """
        return None

    def lift(self, Theta, d: int):
        """Particles (..., k) of this block as particles of the same block in state
        dimension ``d >= self.d`` with f_d(pad(z); lift(theta)) = pad(f(z; theta)), pad
        appending zero coordinates; what a study sweeping ``study.dims`` needs. The generic
        block does not know its layout: NotImplementedError (define ``lift`` to sweep d)."""
        if d == self.d:
            return Theta
        raise NotImplementedError(f"the block {type(self).__name__} does not define lift(Theta, "
                                  "d), the embedding of its particles in a larger state "
                                  "dimension")

    def auto_tile(self) -> int:
        """The tile used when ``tile`` is None: ``default_tile()`` of the backend in use."""
        return default_tile()

    def blocks(self, N: int, M: int) -> tuple[int, int, int, int]:
        """(n_N, N_c, n_M, M_c): the block grid of an (N, M) field call.

        n_M = ceil(M / min(M, tile // min(N, BLOCK_ROWS))) balanced chunks of M_c = ceil(M / n_M)
        particles and N_c = ceil(N / n_N) rows with n_N the fewest chunks such that
        N_c M_c <= tile; (1, N, 1, M) when N M <= tile."""
        return grid_of_blocks(N, M, self.auto_tile() if self.tile is None else self.tile)

    def field_value(self, Z: jax.Array, Theta: jax.Array,
                    weights: jax.Array | None = None) -> jax.Array:
        """sum_m omega_m f(Z_i; Theta_m) in one piece (no blocks), differentiable in any mode."""
        return vmapped_value(self, Z, Theta, weights)

    def field(self, Z: jax.Array, Theta: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        """sum_m omega_m f(Z_i; Theta_m) for Z (N, d), Theta (M, k), omega (M,) -> (N, d).

        ``weights=None`` means omega_m = 1/M (the particles' empirical measure).
        Computed in blocks with a blockwise reverse rule (module docstring);
        forward-mode differentiation goes through ``field_value``.
        """
        return generic_field(self, Z, Theta, weights)

    def field_vjp(self, Z, Theta, P, weights=None):
        """Reverse-mode derivative of ``field`` against cotangents P (N, d).

        Returns (gZ, gTheta, gweights): gZ (N, d) with row i = (d_z F(Z_i))^T P_i,
        gTheta (M, k) = sum_i d_Theta [P_i . F(Z_i)] and gweights (M,) with
        gweights_m = sum_i P_i . f(Z_i; Theta_m) (None when ``weights`` is None).
        With P the adjoint states p, grad_theta V(Theta_m) = gTheta_m / (N omega_m).
        """
        return blocked_vjp(self, functools.partial(autodiff_block_vjp, self.field_value),
                           Z, Theta, P, weights)

    def probe(self, Z: jax.Array, Q: jax.Array) -> jax.Array:
        """Zero (N, d), whose reverse-mode derivative in Q is the first variation's gradient.

        d/dQ_q of sum_i P_i . probe(Z, Q)_i = sum_i grad_q [P_i . f(Z_i; q)]; the
        derivative in Z is zero, so adding ``probe`` to a field changes neither
        the forward pass nor the adjoint states.
        """
        return _probe(self, Z, Q)

    # A block's name in messages: the registry name or the class name.
    label: ClassVar[str | None] = None

    @classmethod
    def describe(cls) -> str:
        return cls.label or cls.__name__


# ----------------------------------------------------------------------------- generic path


def vmapped_value(feature: AbstractFeatureMap, Z, Theta, weights=None) -> jax.Array:
    """sum_m omega_m f(Z_i; Theta_m) by vmap of ``feature.__call__`` over particles and states."""
    def one_state(z):
        return jax.vmap(lambda theta: feature(z, theta))(Theta)  # (M, d)

    values = jax.vmap(one_state)(Z)  # (N, M, d)
    if weights is None:
        return jnp.mean(values, axis=1)
    return jnp.einsum("nmd,m->nd", values, weights, precision=lax.Precision.HIGHEST)


def blocked_value(feature: AbstractFeatureMap, value, Z, Theta, weights=None) -> jax.Array:
    """``value(Z, Theta, weights)`` summed over blocks of at most ``feature.tile`` elements.

    The field is a sum over particles, so the blocks' results add up; padding rows
    are dropped and padding particles (copies of the last one) have omega = 0.
    """
    N, M = Z.shape[0], Theta.shape[0]
    nN, Nc, nM, Mc = feature.blocks(N, M)
    if nN * nM == 1:
        return value(Z, Theta, weights)
    omega = jnp.full((M,), 1.0 / M, Theta.dtype) if weights is None else weights
    Zb = split_rows(Z, nN, Nc, "edge")
    Tb, wb = split_rows(Theta, nM, Mc, "edge"), split_rows(omega, nM, Mc)

    def rows(_, z):
        def cols(F, tw):
            return F + value(z, *tw), None

        F, _ = lax.scan(cols, jnp.zeros((z.shape[0], feature.d), Z.dtype), (Tb, wb))
        return None, F

    _, F = lax.scan(rows, None, Zb)
    return F.reshape(nN * Nc, feature.d)[:N]


def autodiff_block_vjp(value, Z, Theta, P, weights=None):
    """JAX's VJP of ``value(Z, Theta, weights)`` for one block: (gZ, gTheta, gweights | None)."""
    if weights is None:
        return (*jax.vjp(lambda Z, Theta: value(Z, Theta), Z, Theta)[1](P), None)
    return jax.vjp(value, Z, Theta, weights)[1](P)


def blocked_vjp(feature: AbstractFeatureMap, block_vjp, Z, Theta, P, weights=None):
    """Apply an adjoint ``block_vjp(Z, Theta, P, weights)`` block by block and sum.

    gZ sums over particle blocks, gTheta and gweights over row blocks; padding
    rows have P = 0 and padding particles (copies of the last one) omega = 0, so
    they add exactly zero. Without
    weights the blocks get explicit omega = 1/M.
    """
    N, M = Z.shape[0], Theta.shape[0]
    nN, Nc, nM, Mc = feature.blocks(N, M)
    if nN * nM == 1:
        return block_vjp(Z, Theta, P, weights)
    omega = jnp.full((M,), 1.0 / M, Theta.dtype) if weights is None else weights
    Zb, Pb = split_rows(Z, nN, Nc, "edge"), split_rows(P, nN, Nc)
    Tb, wb = split_rows(Theta, nM, Mc, "edge"), split_rows(omega, nM, Mc)

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
    gZ = gZ.reshape(nN * Nc, Z.shape[1])[:N]
    gT = gT.reshape(nM * Mc, -1)[:M]
    return gZ, gT, None if weights is None else gw.reshape(nM * Mc)[:M]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def generic_field(feature: AbstractFeatureMap, Z, Theta, weights=None):
    """The generic path of every block: ``vmapped_value`` in blocks, JAX's VJP per block.

    Independent of any override of ``field``, ``field_value`` or ``field_vjp``:
    the reference that hand-written kernels are tested against.
    """
    return blocked_value(feature, functools.partial(vmapped_value, feature), Z, Theta, weights)


def _generic_fwd(feature, Z, Theta, weights):
    return generic_field(feature, Z, Theta, weights), (Z, Theta, weights)


def _generic_bwd(feature, residuals, P):
    Z, Theta, weights = residuals
    block = functools.partial(autodiff_block_vjp, functools.partial(vmapped_value, feature))
    return blocked_vjp(feature, block, Z, Theta, P, weights)


generic_field.defvjp(_generic_fwd, _generic_bwd)


# ----------------------------------------------------------------------------- grad V anywhere


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _probe(feature: AbstractFeatureMap, Z, Q):
    return jnp.zeros_like(Z)


def _probe_fwd(feature, Z, Q):
    return jnp.zeros_like(Z), (Z, Q)


def _probe_bwd(feature, residuals, P):
    Z, Q = residuals
    ones = jnp.ones(Q.shape[:1], Q.dtype)
    # Through ``field``'s own reverse rule (a block's hand-written adjoint where it has one).
    _, vjp = jax.vjp(lambda q: feature.field(Z, q, ones), Q)
    return jnp.zeros_like(Z), vjp(P)[0]


_probe.defvjp(_probe_fwd, _probe_bwd)
