"""The learning problem: data, feature map, readout and loss (docs/theory.md, "Conventions").

    embedding   z(0; x) = (x, 0, ..., 0) in R^d,  d >= d_in
    readout     g(z)    = z[:d_out],              d_out <= d
    loss        E       = (1 / 2N) sum_i |g(z(1; x_i)) - y_i|^2
    adjoint     p(1; x_i) = grad g^T (g(z(1; x_i)) - y_i)   (zero-padded residual)

``p`` is scaled so that p = N * dE/dz: it is O(1) whatever N is, and the first
variation is V(theta, t) = (1/N) sum_i p(t; x_i) . f(z(t; x_i); theta).

Residual scale alpha (``scale``, config ``model.scale``, default 1), after
Chizat, Oyallon and Bach, "On lazy training in differentiable programming"
(NeurIPS 2019): the network is

    z_{l+1} = z_l + (alpha / L) F_l(z_l)        (continuous depth: dz/dt = alpha F(z, t))

and training follows the gradient flow of the rescaled objective

    E_alpha(rho) = E(rho) / alpha^2,

i.e. particle velocities are -grad_theta V_alpha = -(1/alpha^2) grad_theta V,
V the first variation of the data fit E of the alpha-network, and s is the
time of that flow. In this convention the network's outputs move at an
alpha-independent rate (d g / ds = -K r with the alpha-independent tangent
kernel K at leading order) while the parameters move by O(1/alpha): alpha = 1
is the mean-field flow, alpha -> infinity the lazy (linearized) regime.
The field is scaled where the depth discretizations form it
(``_depth.slice_field``), the 1/alpha^2 where velocities are formed
(``DepthDiscretization.evaluate`` / ``first_variation_gradient``, through
``objective_weight``). The recorded loss is always the data fit E (so losses
are comparable across alpha); along the flow dE/ds = -alpha^2 R with R the
recorded stationarity residual. At alpha = 1 no multiplication is done at
all: results are bit-identical to a problem without the field.

Held-out data: optional ``x_test`` (N_test, d_in), ``y_test`` (N_test, d_out).
``classification`` marks labelled targets (+-1 in one column, or one-hot
rows): ``accuracy`` is then the fraction of sign (one column) or argmax
(several columns) agreements.

Random embedding and readout (config ``model.embedding = "random"``,
``model.readout = "random"``): fixed Gaussian matrices, drawn once from the
seed and never trained,

    embedding   z(0; x) = A x,        A in R^{d x d_in},   A_jk ~ N(0, 1/d)
    readout     g(z)    = C z,        C in R^{d_out x d},  C_oj ~ N(0, 1/d)
    adjoint     p(1; x_i) = C^T (C z(1; x_i) - y_i)

The 1/d variances make both maps near-isometries (A^T A -> I_{d_in},
C C^T -> I_{d_out} as d grows), the same scale as "pad" / "coordinates"
(A = [I; 0], C = [I 0]): |z(0; x)| ~ |x| and the forward pass is O(1) in d.
With ``neuron`` features and theta ~ N(0, I) this is the mean-field ResNet
of Chaintron, Chizat and Maass ("ResNets of all shapes and sizes", 2026) in
the state units z = h / sqrt(d) (docs/configuration.md, "Random embedding and readout").
``random_embedding`` / ``random_readout`` draw A and C; the first d rows of A
(columns of C) do not depend on how large a matrix is drawn, so the
matrices of different d are nested (the paper's "coupled randomness").
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._features import AbstractFeatureMap


class Problem(eqx.Module):
    """Data (x (N, d_in), y (N, d_out)) and a feature map acting on R^d.

    Optional: the residual scale alpha (``scale``, default 1; module docstring),
    a held-out set (``x_test``, ``y_test``) and ``classification`` (labelled
    targets, so that accuracies are defined).
    ``embedding`` A (d, d_in) and ``readout_matrix`` C (d_out, d) are the
    optional fixed random maps of the module docstring (None: pad / first
    coordinates).
    """

    feature: AbstractFeatureMap
    x: jax.Array
    y: jax.Array
    scale: float = eqx.field(static=True, default=1.0)
    x_test: jax.Array | None = None
    y_test: jax.Array | None = None
    classification: bool = eqx.field(static=True, default=False)
    embedding: jax.Array | None = None
    readout_matrix: jax.Array | None = None

    def __check_init__(self):
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)
                and self.scale > 0):
            raise ValueError(f"model.scale = {self.scale!r}: must be a finite number > 0")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError("data: give both x_test and y_test, or neither")
        if self.x_test is not None and (
                self.x_test.ndim != 2 or self.y_test.ndim != 2
                or self.x_test.shape[0] != self.y_test.shape[0]
                or self.x_test.shape[1] != self.x.shape[1]
                or self.y_test.shape[1] != self.y.shape[1]):
            raise ValueError(
                f"data: x_test, y_test have shapes {self.x_test.shape}, {self.y_test.shape}; "
                f"they must be (N_test, {self.x.shape[1]}) and (N_test, {self.y.shape[1]})")
        if self.embedding is not None and self.embedding.shape != (self.feature.d, self.x.shape[1]):
            raise ValueError(f"embedding has shape {self.embedding.shape}: must be (d, d_in) = "
                             f"({self.feature.d}, {self.x.shape[1]})")
        if (self.readout_matrix is not None
                and self.readout_matrix.shape != (self.y.shape[1], self.feature.d)):
            raise ValueError(f"readout_matrix has shape {self.readout_matrix.shape}: must be "
                             f"(d_out, d) = ({self.y.shape[1]}, {self.feature.d})")
        if self.x.ndim != 2 or self.y.ndim != 2:
            raise ValueError(
                f"data: x must be (N, d_in) and y (N, d_out); got shapes {self.x.shape}, {self.y.shape}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"data: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}; they must match"
            )
        if self.embedding is None and self.x.shape[1] > self.feature.d:
            raise ValueError(
                f"model.dim = {self.feature.d}: must be >= the input dimension d_in = {self.x.shape[1]}"
            )
        if self.readout_matrix is None and self.y.shape[1] > self.feature.d:
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
        """(N, d_in) -> (N, d): z(0; x) = (x, 0, ..., 0), or A x with a random embedding."""
        if self.embedding is not None:
            return _matmul(x, self.embedding.T)
        return jnp.pad(x, ((0, 0), (0, self.d - x.shape[1])))

    def readout(self, z: jax.Array) -> jax.Array:
        """(N, d) -> (N, d_out): the first d_out coordinates, or C z with a random readout."""
        if self.readout_matrix is not None:
            return _matmul(z, self.readout_matrix.T)
        return z[:, : self.d_out]

    @property
    def objective_weight(self) -> float:
        """1 / alpha^2: the flow descends E_alpha = E / alpha^2 (module docstring)."""
        return 1.0 / (self.scale * self.scale)

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    def loss(self, z1: jax.Array) -> jax.Array:
        """E = (1/2N) sum_i |g(z1_i) - y_i|^2."""
        return self.fit(self.readout(z1), self.y)

    @staticmethod
    def fit(prediction: jax.Array, y: jax.Array) -> jax.Array:
        """(1/2N) sum_i |prediction_i - y_i|^2 for (N, d_out) arrays: the loss of any prediction."""
        r = prediction - y
        return 0.5 * jnp.mean(jnp.sum(r * r, axis=1))

    @staticmethod
    def accuracy(prediction: jax.Array, y: jax.Array) -> jax.Array:
        """Fraction of correct labels: sign agreement (d_out = 1, labels +-1) or argmax agreement."""
        if y.shape[1] == 1:
            hit = jnp.sign(prediction[:, 0]) == jnp.sign(y[:, 0])
        else:
            hit = jnp.argmax(prediction, axis=1) == jnp.argmax(y, axis=1)
        return jnp.mean(hit.astype(prediction.dtype))

    def terminal_adjoint(self, z1: jax.Array) -> jax.Array:
        """p(1) = N dE/dz(1) = grad g^T (g(z1) - y), shape (N, d): the zero-padded residual, or C^T r."""
        if self.readout_matrix is not None:
            return _matmul(self.readout(z1) - self.y, self.readout_matrix)
        return jnp.pad(self.readout(z1) - self.y, ((0, 0), (0, self.d - self.d_out)))

    def astype(self, dtype) -> Problem:
        cast = lambda a: None if a is None else a.astype(dtype)
        return self.replace(x=self.x.astype(dtype), y=self.y.astype(dtype),
                            x_test=cast(self.x_test), y_test=cast(self.y_test),
                            embedding=cast(self.embedding),
                            readout_matrix=cast(self.readout_matrix))

    def replace(self, **changes) -> Problem:
        """The same problem with some fields replaced (e.g. other data): every other setting
        (scale, held-out set, random maps, ...) is kept."""
        return dataclasses.replace(self, **changes)


def _matmul(a, b):
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# Seeds of the random maps' generators: numpy SeedSequence([seed, tag, stream]).
_EMBEDDING_TAG, _READOUT_TAG = 0xE3BED, 0x8EAD0


def random_embedding(seed: int, d: int, d_in: int, stream: int = 0) -> np.ndarray:
    """A (d, d_in) float64 with A_jk ~ N(0, 1/d): G / sqrt(d), G standard normal.

    G is drawn row by row (C order) from ``numpy.random.default_rng(SeedSequence([seed,
    0xE3BED, stream]))``, so its first d rows are the same for every larger d.
    ``wflow run`` uses stream 0; a study's repetition r uses stream r.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _EMBEDDING_TAG, int(stream)]))
    return rng.standard_normal((d, d_in)) / np.sqrt(d)


def random_readout(seed: int, d: int, d_out: int, stream: int = 0) -> np.ndarray:
    """C (d_out, d) float64 with C_oj ~ N(0, 1/d): G^T / sqrt(d), G (d, d_out) as in ``random_embedding``

    (generator ``SeedSequence([seed, 0x8EAD0, stream])``; nested in d the same way).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _READOUT_TAG, int(stream)]))
    return (rng.standard_normal((d, d_out)) / np.sqrt(d)).T


def sequence_maps(tokens: int, d: int, d_in: int, d_out: int, readout_token="last",
                  embedding: np.ndarray | None = None,
                  readout: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The embedding A (n d, n d_in) and readout C (d_out, n d) of a sequence state.

    A sample is n tokens x_1..x_n in R^{d_in}, flattened row-major to (n d_in,); the state is
    the token matrix Z (n, d), flattened to (n d,) (``_features.attention``). Each token is
    embedded alone, z_j(0) = A_tok x_j with A_tok = ``embedding`` (d, d_in) or the padding
    [I; 0]; the readout is C_tok (d_out, d) (``readout``, or the first d_out coordinates)
    applied to one token (``readout_token``: "last", or an index 0..n-1) or to the mean of
    the tokens ("mean"). A = I_n (x) A_tok is block diagonal; C is C_tok placed at the token
    read (1/n C_tok at every token for "mean"). float64.
    """
    A_tok = np.eye(d, d_in) if embedding is None else np.asarray(embedding, np.float64)
    C_tok = np.eye(d_out, d) if readout is None else np.asarray(readout, np.float64)
    A = np.kron(np.eye(tokens), A_tok)
    C = np.zeros((d_out, tokens, d))
    if readout_token == "mean":
        C[:] = C_tok[:, None, :] / tokens
    else:
        index = tokens - 1 if readout_token == "last" else int(readout_token)
        if not 0 <= index < tokens:
            raise ValueError(f"model.readout_token = {readout_token!r}: a sequence of {tokens} "
                             f"tokens has indices 0..{tokens - 1}")
        C[:, index, :] = C_tok
    return A, C.reshape(d_out, tokens * d)
