"""The ``coupling`` study metric: each finite particle against its mean-field twin."""

from __future__ import annotations

from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs


@final
class Coupling(AbstractStudyMetric):
    """sqrt( (1/(L M)) sum_{l, m} |theta_{l,m}(s) - twin_{l,m}(s)|^2 ): synchronous coupling.

    The twin of particle theta_{l,m} starts at the same theta_{l,m}(0) and is moved by the
    reference's velocity field -grad_theta V_ref(theta, t) - lambda(s) theta (``Runs.twins``):
    with the "continuous" reference the twin is the reference's own particle (the same
    initial particles in continuous depth); the "particles" reference carries the twins as
    zero-weight passive points in the slice j(l) = floor((l + 1/2) L_ref / L) at the middle
    of layer l's depth interval (``_limit.twin_layout``). This is the quantity that
    propagation-of-chaos bounds control (docs/theory.md, "Continuum limit"): for i.i.d.
    layers at fixed L it falls as M^-1/2. The RMS is over the slices and the real particles
    (weight > 0); NaN where the reference carries no twins (a grid, two independent
    references, a swept D).
    """

    name = "coupling"
    label = "RMS |theta - twin| (coupling)"
    needs = ("particles",)
    twins = True

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        b, T = run.particles.shape[:2]
        out = np.full((b, T), np.nan)
        if reference.twins is None:
            return out
        for j in range(b):
            if run.dims[j] != reference.dims[j]:
                continue
            live = run.weights[j] > 0  # (T, L, M)
            k = min(run.particles.shape[-1], reference.twins.shape[-1])
            d = run.particles[j, ..., :k] - reference.twins[j, ..., :k]
            sq = np.where(live, np.sum(d * d, axis=-1), 0.0)
            with np.errstate(invalid="ignore"):
                out[j] = np.sqrt(np.sum(sq, axis=(1, 2)) / np.sum(live, axis=(1, 2)))
            bad = ~np.all(np.isfinite(np.where(live[..., None], d, 0.0)), axis=(1, 2, 3))
            out[j, bad] = np.nan
        return out
