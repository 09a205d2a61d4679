"""Sequence states and attention heads as particles (docs/theory.md, "Sequences and attention").

A sample is a sequence of n tokens; the state is the token matrix Z (n, d), which the rest of
wflow sees flattened row-major as one vector z in R^{n d} (``Problem``'s embedding and
readout act token by token, ``_problem.sequence_maps``). Every solver, adjoint, study and
device layout then works on sequences unchanged: a block is still a map from R^{n d}.

* ``AbstractSequenceBlock``: a block that mixes tokens; define ``k`` and
  ``token_map(Z (n, d), theta) -> (n, d)``. Its fields ``tokens`` (n) and ``token_dim`` (d)
  are set by wflow; ``d`` (the flat state dimension) is n d.
* ``Attention`` (registry ``"attention"``): one head, theta = (Q, K, V) with Q, K in
  R^{r x d} and V in R^{d x d}, laid out ``[Q row-major, K row-major, V row-major]``
  (k = 2 r d + d^2)::

      f(Z; theta)_i = sum_j softmax_j(beta (Q z_i) . (K z_j) / r) V z_j

  ``LinearAttention`` (``"linear_attention"``) is the same without the softmax, scaled by
  1/n; ``AttentionMLP`` (``"attention_mlp"``) adds one neuron u sigma(w . z_i + b) acting on
  every token, theta = (Q, K, V, u, w, b), so that one density carries both halves of a
  transformer layer. The mean-field scaling is 1/M over heads (the field's average).
  Reflection V -> -V (and u -> -u): a symmetric start is the identity network.
* ``Tokenwise``: a block of vectors (``Neuron``, ``Linear``, a user's) acting on every
  token, with its own (fast) kernel on the N n token rows.

Memory: one (sample, head) pair of an attention block holds n^2 scores and n d values, so
its tile (the (N, M) pairs of one field call) is the backend's divided by n (n + d).
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from .base import AbstractFeatureMap, default_tile, grid_of_blocks, mm
from .._activations import get_activation


class AbstractSequenceBlock(AbstractFeatureMap):
    """A block acting on the token matrix Z (n, d): define ``k`` and ``token_map``.

    ``tokens`` = n and ``token_dim`` = d are given by wflow (config: ``data.tokens`` and
    ``model.dim``); the flat state dimension ``d`` is n d.
    """

    tokens: int = 1
    token_dim: int = 0

    def __check_init__(self):
        if not (isinstance(self.tokens, int) and self.tokens >= 1):
            raise ValueError(f"data.tokens = {self.tokens!r}: must be an integer >= 1")
        if self.token_dim * self.tokens != self.d:
            raise ValueError(f"model.dim = {self.token_dim!r}: the state of {self.tokens} tokens "
                             f"of dimension {self.token_dim} is not d = {self.d}")

    @abc.abstractmethod
    def token_map(self, Z: jax.Array, theta: jax.Array) -> jax.Array:
        """f(Z; theta) for one token matrix Z (n, d) and one particle theta (k,) -> (n, d)."""

    def __call__(self, z, theta):
        return self.token_map(z.reshape(self.tokens, self.token_dim), theta).reshape(-1)

    def blocks(self, N: int, M: int) -> tuple[int, int, int, int]:
        tile = self.auto_tile() if self.tile is None else self.tile
        n = self.tokens
        return grid_of_blocks(N, M, max(1, tile // (n * (n + self.token_dim))))

    def lift(self, Theta, d: int):
        """``d``: a token dimension (config ``model.dim``); only the block's own is known."""
        if d in (self.token_dim, self.d):
            return Theta
        raise NotImplementedError(f"the sequence block {type(self).__name__} does not embed its "
                                  "heads in a larger token dimension")


class Attention(AbstractSequenceBlock):
    """One attention head theta = (Q, K, V) (module docstring); ``rank`` r (None: r = d) and
    ``beta`` (inverse temperature) are its parameters (config ``[model.params]``)."""

    rank: int | None = None
    beta: float = 1.0
    softmax = True

    def __check_init__(self):
        super().__check_init__()
        if self.rank is not None and not (isinstance(self.rank, int)
                                          and not isinstance(self.rank, bool) and self.rank >= 1):
            raise ValueError(f"model.params.rank = {self.rank!r}: must be an integer >= 1 "
                             "(leave it out for the token dimension)")
        if not (isinstance(self.beta, (int, float)) and np.isfinite(self.beta)):
            raise ValueError(f"model.params.beta = {self.beta!r}: must be a finite number")

    @property
    def r(self) -> int:
        return self.rank or self.token_dim

    @property
    def k(self) -> int:
        return 2 * self.r * self.token_dim + self.token_dim ** 2

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        r, d = self.r, self.token_dim
        sep = "," if max(r, d) >= 10 else ""
        return (tuple(f"Q_{a}{sep}{b}" for a in range(r) for b in range(d))
                + tuple(f"K_{a}{sep}{b}" for a in range(r) for b in range(d))
                + tuple(f"V_{a}{sep}{b}" for a in range(d) for b in range(d)))

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """(Q_00, K_00) and the first diagonal entries of V."""
        v0 = 2 * self.r * self.token_dim
        return ((0, self.r * self.token_dim), (v0, v0 + self.token_dim + 1)
                if self.token_dim >= 2 else (v0, v0))

    @property
    def reflection(self) -> np.ndarray:
        """V -> -V."""
        return np.concatenate([np.ones(2 * self.r * self.token_dim), -np.ones(self.token_dim ** 2)])

    def statistics(self, Theta):
        """Per head: the Frobenius norms of Q, K and V, the norm of the score matrix
        Q^T K / r, and tr(V) / d (V's mean eigenvalue; 1 for the clustering head V = I)."""
        r, d = self.r, self.token_dim
        Theta = np.asarray(Theta, float)
        Q = Theta[..., : r * d].reshape(*Theta.shape[:-1], r, d)
        K = Theta[..., r * d: 2 * r * d].reshape(*Theta.shape[:-1], r, d)
        V = Theta[..., 2 * r * d: 2 * r * d + d * d].reshape(*Theta.shape[:-1], d, d)
        fro = lambda a: np.sqrt(np.sum(a ** 2, axis=(-2, -1)))  # noqa: E731
        return {"|Q|_F": fro(Q), "|K|_F": fro(K),
                "|Q^T K|_F / r": fro(np.swapaxes(Q, -1, -2) @ K) / r, "|V|_F": fro(V),
                "tr V / d": np.trace(V, axis1=-2, axis2=-1) / d}

    def qkv(self, theta):
        r, d = self.r, self.token_dim
        Q = theta[: r * d].reshape(r, d)
        K = theta[r * d: 2 * r * d].reshape(r, d)
        V = theta[2 * r * d: 2 * r * d + d * d].reshape(d, d)
        return Q, K, V

    def head(self, Z, theta):
        Q, K, V = self.qkv(theta)
        scores = (self.beta / self.r) * mm(mm(Z, Q.T), mm(Z, K.T).T)  # (n, n)
        if self.softmax:
            weights = jax.nn.softmax(scores, axis=1)
        else:
            weights = scores / self.tokens
        return mm(weights, mm(Z, V.T))

    def token_map(self, Z, theta):
        return self.head(Z, theta)


class LinearAttention(Attention):
    """``Attention`` without the softmax: f_i = (1/n) sum_j beta (Q z_i) . (K z_j) / r V z_j."""

    softmax = False


class AttentionMLP(Attention):
    """A head and one neuron per particle: theta = (Q, K, V, u, w, b),
    f(Z)_i = head(Z)_i + u sigma(w . z_i + b) (k = 2 r d + d^2 + 2 d + 1)."""

    activation: str = "tanh"
    sharpness: float = 10.0

    @property
    def k(self) -> int:
        return super().k + 2 * self.token_dim + 1

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        d = self.token_dim
        return (super().coordinate_names + tuple(f"u_{i}" for i in range(d))
                + tuple(f"w_{i}" for i in range(d)) + ("b",))

    @property
    def reflection(self) -> np.ndarray:
        """V -> -V, u -> -u."""
        d = self.token_dim
        return np.concatenate([super().reflection, -np.ones(d), np.ones(d + 1)])

    def statistics(self, Theta):
        """The head's (``Attention.statistics``) and the neuron's |u| and |w|."""
        d, a = self.token_dim, super().k
        Theta = np.asarray(Theta, float)
        return {**super().statistics(Theta),
                "|u|": np.linalg.norm(Theta[..., a: a + d], axis=-1),
                "|w|": np.linalg.norm(Theta[..., a + d: a + 2 * d], axis=-1)}

    def token_map(self, Z, theta):
        d, a = self.token_dim, super().k
        u, w, b = theta[a: a + d], theta[a + d: a + 2 * d], theta[a + 2 * d]
        sigma = get_activation(self.activation, self.sharpness).fn
        return self.head(Z, theta) + sigma(mm(Z, w) + b)[:, None] * u[None, :]


class Tokenwise(AbstractFeatureMap):
    """A block of vectors (``inner``, on R^{token_dim}) acting on every token of a sequence
    state; its kernels run on the N n token rows."""

    inner: AbstractFeatureMap
    tokens: int = 1

    @property
    def k(self) -> int:
        return self.inner.k

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        return self.inner.coordinate_names

    @property
    def views(self):
        return self.inner.views

    @property
    def reflection(self):
        return self.inner.reflection

    def statistics(self, Theta):
        return self.inner.statistics(Theta)

    def lift(self, Theta, d: int):
        """``d``: a token dimension (config ``model.dim``); only the block's own is known."""
        if d in (self.inner.d, self.d):
            return Theta
        raise NotImplementedError("a tokenwise block on sequences does not sweep the state "
                                  "dimension")

    def _rows(self, Z):
        return Z.reshape(-1, self.inner.d)

    def __call__(self, z, theta):
        return jax.vmap(lambda t: self.inner(t, theta))(self._rows(z)).reshape(-1)

    def field(self, Z, Theta, weights=None):
        return self.inner.field(self._rows(Z), Theta, weights).reshape(Z.shape)

    def field_value(self, Z, Theta, weights=None):
        return self.inner.field_value(self._rows(Z), Theta, weights).reshape(Z.shape)

    def field_vjp(self, Z, Theta, P, weights=None):
        gZ, gT, gw = self.inner.field_vjp(self._rows(Z), Theta, self._rows(P), weights)
        return gZ.reshape(Z.shape), gT, gw

    def probe(self, Z, Q):
        return self.inner.probe(self._rows(Z), Q).reshape(Z.shape)


def sequence_block(feature_cls, token_dim: int, tokens: int, **kwargs) -> AbstractFeatureMap:
    """The block of class ``feature_cls`` on sequences of ``tokens`` tokens of dimension
    ``token_dim``: a sequence block as is, a block of vectors wrapped in ``Tokenwise``."""
    if issubclass(feature_cls, AbstractSequenceBlock):
        return feature_cls(d=tokens * token_dim, tokens=tokens, token_dim=token_dim, **kwargs)
    tile = kwargs.pop("tile", None)
    inner = feature_cls(d=token_dim, tile=tile, **kwargs)
    return Tokenwise(d=tokens * token_dim, tile=tile, inner=inner, tokens=tokens)


__all__ = ["AbstractSequenceBlock", "Attention", "AttentionMLP", "LinearAttention", "Tokenwise",
           "sequence_block"]
