"""Lu et al.'s view of a ResNet as a collection of blocks: the shallow ensemble and block reordering.

Lu, Ma, Lu, Lu and Ying, "A mean-field analysis of deep ResNet and beyond:
towards provable optimization via overparameterization from depth" (ICML
2020), observe that a deep ResNet resembles the *shallow network ensemble*
in which every block sees the input instead of the current state,

    z_sh(x) = x + alpha int_0^1 int f(x; theta) rho(theta, t) dtheta dt
            = x + alpha sum_l w_l F_l(x)          (discretized: w_l the depth weights, 1/L),

against z(1; x) = x + alpha int_0^1 F(z(t; x), t) dt for the ResNet. Since
z(t; x) - x = O(alpha), the two outputs differ by O(alpha^2):
g(z(1)) - g(z_sh) = alpha sum_l w_l [F_l(z_l) - F_l(x)] + ... . With one
depth slice and z-independent features (F(z) = const) the gap is zero.
``shallow_ensemble`` evaluates z_sh, ``ensemble_gap`` the output and loss gap
between the network and its shallow ensemble at any state of any run.

Block reordering (``Reordering``) is their training scheme that changes the
order of the residual blocks during training: before every K-th step
(steps n = K, 2K, ...; never before step 0) the L depth slices are permuted,

* ``"random"``: a uniformly random permutation drawn from the key
  fold_in(fold_in(PRNGKey(seed), 3), n): deterministic in (seed, n), so a run
  resumed at any step permutes exactly as an uninterrupted one, and
  independent of the Langevin noise key;
* ``"sort"``: slices sorted by increasing *block strength*
  S_l = sqrt((1/N) sum_i |alpha F_l(x_i)|^2), the root-mean-square size of the
  slice's residual field at the (embedded) training inputs, i.e. of its term
  in the shallow ensemble (stable sort: ties keep their order). Weak blocks
  act first, strong ones last, and the depth profile of block strength is
  made monotone.

In the mean-field limit every slice sees the same data, so permuting slices
changes the network only at O(alpha^2) (the shallow-ensemble gap): reordering
exploits that the loss landscape is nearly invariant under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._depth import DepthDiscretization, slice_field
from ._problem import Problem

__all__ = ["REORDERS", "EnsembleGap", "Reordering", "block_fields", "ensemble_gap",
           "shallow_ensemble"]

REORDERS = ("none", "random", "sort")


def block_fields(problem: Problem, Theta: jax.Array, x: jax.Array | None = None,
                 weights: jax.Array | None = None) -> jax.Array:
    """alpha F_l(z(0; x)) for every slice l: (L, N', d), x (N', d_in) (default: training inputs)."""
    z0 = problem.embed(problem.x if x is None else x)

    def one(_, inputs):
        theta, omega = inputs
        return None, slice_field(problem, z0, theta, omega)

    return lax.scan(one, None, (Theta, weights))[1]


def shallow_ensemble(problem: Problem, depth: DepthDiscretization, Theta: jax.Array,
                     x: jax.Array | None = None, weights: jax.Array | None = None) -> jax.Array:
    """g(z_sh(x)) with z_sh(x) = z(0; x) + alpha sum_l w_l F_l(z(0; x)) -> (N', d_out).

    Args:
        problem: feature map, readout, residual scale alpha.
        depth: gives the depth weights w_l (1/L for both discretizations).
        Theta, weights: the measure, (L, M, k) and (L, M) or None (1/M).
        x: (N', d_in) inputs; default the training inputs.
    """
    z0 = problem.embed(problem.x if x is None else x)
    w = depth.weights(Theta.shape[0], z0.dtype)
    F = block_fields(problem, Theta, x, weights)
    return problem.readout(z0 + jnp.tensordot(w, F, axes=1))


class EnsembleGap(NamedTuple):
    """Network vs its shallow ensemble on one data set.

    ``output`` = sqrt((1/N) sum_i |g(z(1; x_i)) - g(z_sh(x_i))|^2) (RMS output gap),
    ``loss`` = E(network) - E(shallow ensemble) (signed), and the two losses.
    """

    output: jax.Array
    loss: jax.Array
    loss_network: jax.Array
    loss_shallow: jax.Array


def ensemble_gap(problem: Problem, depth: DepthDiscretization, Theta: jax.Array,
                 weights: jax.Array | None = None, x: jax.Array | None = None,
                 y: jax.Array | None = None) -> EnsembleGap:
    """Output and loss gap between the ResNet and its shallow ensemble (jit-able).

    Both scale as alpha^2 for a small residual scale alpha, and vanish with one
    depth slice and z-independent features (module docstring). ``x``, ``y``
    default to the training data.
    """
    if (x is None) != (y is None):
        raise ValueError("ensemble_gap: give both x and y, or neither")
    x, y = (problem.x, problem.y) if x is None else (x, y)
    net = depth.predict(problem, Theta, x, weights)
    sh = shallow_ensemble(problem, depth, Theta, x, weights)
    d = net - sh
    e_net, e_sh = problem.fit(net, y), problem.fit(sh, y)
    return EnsembleGap(jnp.sqrt(jnp.mean(jnp.sum(d * d, axis=1))), e_net - e_sh, e_net, e_sh)


@dataclass(frozen=True)
class Reordering:
    """Permute the depth slices before every ``every``-th step (module docstring).

    ``mode``: "none", "random" or "sort"; ``every`` = K >= 1; ``seed`` seeds the
    random permutations (the run's seed). Hashable and static: it is part of
    the compiled step.
    """

    mode: str = "none"
    every: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.mode not in REORDERS:
            raise ValueError(f"train.reorder = {self.mode!r}: allowed are {', '.join(REORDERS)}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"train.reorder_every = {self.every!r}: must be an integer >= 1")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def statistic(self, problem: Problem, Theta: jax.Array,
                  weights: jax.Array | None = None) -> jax.Array:
        """Block strength S_l = sqrt((1/N) sum_i |alpha F_l(x_i)|^2), shape (L,)."""
        F = block_fields(problem, Theta, None, weights)
        return jnp.sqrt(jnp.mean(jnp.sum(F * F, axis=2), axis=1))

    def permutation(self, problem: Problem, Theta: jax.Array, n,
                    weights: jax.Array | None = None) -> jax.Array:
        """The permutation applied before step n: new slice l is old slice perm[l] (jit-able)."""
        L = Theta.shape[0]
        if self.mode == "random":
            key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), 3), n)
            return jax.random.permutation(key, L)
        if self.mode == "sort":
            return jnp.argsort(self.statistic(problem, Theta, weights), stable=True)
        return jnp.arange(L)

    def due(self, n) -> jax.Array:
        """True when the slices are permuted before step n: n > 0 and n divisible by K."""
        return (n > 0) & (n % self.every == 0)

    def apply(self, problem: Problem, tree, n, weights: jax.Array | None = None):
        """Permute the depth axis of Theta and of every array of Theta's shape in ``tree``.

        ``tree``'s first leaf is the measure Theta (L, M, k); further leaves of
        the same shape (an optimizer's moments) are permuted with it, others
        (step counts) are left alone. A no-op unless the mode is active and
        ``due(n)``.
        """
        if not self.active:
            return tree
        leaves = jax.tree_util.tree_leaves(tree)
        Theta = leaves[0]

        def permute(tree):
            perm = self.permutation(problem, Theta, n, weights)
            return jax.tree_util.tree_map(
                lambda a: a[perm] if jnp.shape(a) == Theta.shape else a, tree)

        return lax.cond(self.due(n), permute, lambda t: t, tree)
