"""The ``sinkhorn`` study metric: debiased Sinkhorn divergence per depth slice (ott-jax)."""

from __future__ import annotations

from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs

DEFAULT_RELATIVE_EPSILON = 0.05
"""study.sinkhorn_epsilon defaults to this fraction of the mean squared distance between two
independent draws of the initial law (``_keys.default_sinkhorn_epsilon``)."""


@final
class Sinkhorn(AbstractStudyMetric):
    """(1/L) sum_l S_eps(mu_l, nu_{j(l)}): the debiased Sinkhorn divergence, averaged over slices.

    mu_l is layer l's weighted particles, nu_j the reference's measure in its slice
    j(l) = floor((l + 1/2) L_ref / L) (particles, or a grid's cells as points weighted by
    their mass; twins and padding carry weight 0 and drop out). With the squared Euclidean
    cost, S_eps(mu, nu) = OT_eps(mu, nu) - (OT_eps(mu, mu) + OT_eps(nu, nu)) / 2 >= 0
    (``ott.tools.sinkhorn_divergence``), 0 for identical measures and -> W_2^2(mu, nu) as
    eps -> 0. eps: ``study.sinkhorn_epsilon`` (``Runs.settings``). Against the measure it is
    drawn from, an empirical measure of M i.i.d. points in dimension k has S_eps ~ M^-1 for
    M large at fixed eps (S_eps is quadratic near its minimum; Genevay et al. 2019 for the
    sample complexity), but only once M is large against a constant that grows like
    exp(1/eps); with eps small against the spread of the points it first follows W_2^2's
    M^(-2/k). NaN where a run or its reference diverged, or the state dimensions differ.
    """

    name = "sinkhorn"
    order = 2.0  # ~ W_2^2 between nearby measures: rates 1/L^2 and 1/(L M)
    label = "Sinkhorn divergence S_eps per slice"
    needs = ("particles",)

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        b, T, L = run.particles.shape[:3]
        Lr = reference.particles.shape[2]
        eps = (run.settings or {}).get("sinkhorn_epsilon") or 1.0
        jr = np.minimum(((np.arange(L) + 0.5) * Lr / L).astype(int), Lr - 1)
        out = np.full((b, T), np.nan)
        for j in range(b):
            if run.dims[j] != reference.dims[j]:
                continue
            k = min(run.particles.shape[-1], reference.particles.shape[-1])
            for t in range(T):
                x, a = run.particles[j, t, ..., :k], run.weights[j, t]
                y, w = reference.particles[j, t][jr][..., :k], reference.weights[j, t][jr]
                out[j, t] = divergence(x, a, y, w, eps)
        return out


def divergence(x, a, y, b, eps: float) -> float:
    """Mean over slices of S_eps between (x (L, M, k), a (L, M)) and (y (L, M', k), b (L, M')).

    S_eps = OT_eps(x, y) - (OT_eps(x, x) + OT_eps(y, y)) / 2 with OT_eps ott-jax's regularized
    cost (``ott.solvers.linear.solve(...).reg_ot_cost``; the three terms of
    ``ott.tools.sinkhorn_divergence``). Each slice is solved on its own: one program per pair of
    point counts (M, M'), whatever the number of slices, and each slice stops at its own
    tolerance (a solve vmapped over slices iterates until its slowest slice has converged). The
    reference's own term OT_eps(y, y), the costly one (M' ~ reference_M points), is the same
    for every run compared with that reference slice and is computed once per slice
    (``_self_costs``, cached by the slice's bytes). Weights are normalized per slice; columns of
    zero weight in every slice (padding, twins) are dropped.
    """
    live_a, live_b = a > 0, b > 0
    if not (np.all(np.isfinite(np.where(live_a[..., None], x, 0.0)))
            and np.all(np.isfinite(np.where(live_b[..., None], y, 0.0)))):
        return float("nan")
    if x.shape == y.shape and np.array_equal(x, y) and np.array_equal(a, b):
        return 0.0  # identical measures (the three solves would give 0 up to round-off)
    x, a = _compact(x, a)
    y, b = _compact(y, b)
    cross = _solvers()[0]
    xy = _values([cross(x[l], y[l], a[l], b[l], float(eps)) for l in range(len(x))])
    s = xy - 0.5 * (_self_costs(x, a, eps) + _self_costs(y, b, eps))
    return float(np.mean(np.maximum(s, 0.0)))


def _compact(x, w):
    """Drop the columns of zero weight in every slice, zero the points of zero weight, and
    normalize the weights per slice."""
    keep = np.any(w > 0, axis=0)
    x, w = x[:, keep], w[:, keep]
    x = np.where((w > 0)[..., None], x, 0.0)
    return np.ascontiguousarray(x), w / w.sum(axis=-1, keepdims=True)


_SELF: dict = {}  # blake2b of (points, weights, eps) of one slice -> OT_eps(mu, mu)
_SOLVERS = None
SOLVE_OPTIONS = {"threshold": 1e-7, "max_iterations": 20000}  # ott-jax's linear.solve, per slice


def _values(costs) -> np.ndarray:
    """The solves' costs, dispatched one after another, as one float64 array."""
    import jax

    return np.asarray(jax.device_get(costs), dtype=np.float64)


def _self_costs(x, w, eps) -> np.ndarray:
    """OT_eps(mu_l, mu_l) for each slice l of (x (L, M, k), w (L, M)), cached per slice."""
    import hashlib

    out, todo = np.empty(len(x)), {}
    for l in range(len(x)):
        h = hashlib.blake2b(x[l].tobytes() + w[l].tobytes() + np.float64(eps).tobytes() +
                            str(x[l].shape).encode(), digest_size=16).digest()
        if h in _SELF:
            out[l] = _SELF[h]
        else:
            todo.setdefault(h, []).append(l)
    if todo:
        if len(_SELF) > 65536:
            _SELF.clear()
        self_ = _solvers()[1]
        ls = [slices[0] for slices in todo.values()]
        for h, value in zip(todo, _values([self_(x[l], w[l], float(eps)) for l in ls])):
            _SELF[h] = value
            out[todo[h]] = value
    return out


def _solvers():
    """The jitted single-slice ott-jax solves: OT_eps(x, y) and OT_eps(x, x) (imported on
    first use: the registry is NumPy-only, ``base``)."""
    global _SOLVERS
    if _SOLVERS is None:
        import jax
        from ott.geometry import pointcloud
        from ott.solvers import linear
        from ott.solvers.linear import acceleration

        opts = SOLVE_OPTIONS

        def cross(x, y, a, b, eps):
            return linear.solve(pointcloud.PointCloud(x, y, epsilon=eps), a, b, **opts).reg_ot_cost

        # the symmetric problem as ott.tools.sinkhorn_divergence solves it: parallel updates
        # with momentum 0.5 (Feydy et al. 2019, eq. 25); plain alternating updates oscillate
        sym = {**opts, "parallel_dual_updates": True,
               "momentum": acceleration.Momentum(start=0, value=0.5), "anderson": None}

        def self_(x, a, eps):
            return linear.solve(pointcloud.PointCloud(x, x, epsilon=eps), a, a, **sym).reg_ot_cost

        _SOLVERS = (jax.jit(cross), jax.jit(self_))
    return _SOLVERS
