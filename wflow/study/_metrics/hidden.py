"""The ``hidden`` study metric: the RMS over the samples of |z(1) - c z_ref(1)[:D]|."""

from __future__ import annotations

import math
from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs


@final
class Hidden(AbstractStudyMetric):
    """sqrt( (1/N) sum_i |z(1; x_i) - c z_ref(1; x_i)[:D]|^2 ) for a run of state dimension D.

    The final hidden states are compared in the run's D coordinates: the first D
    coordinates of the reference's state (of dimension D_ref >= D; the random
    maps are nested in D, ``_problem.random_embedding``). c = sqrt(D_ref / D) when
    the state is z = h / sqrt(D) in the paper's coordinates h (``Runs.scaled_state``,
    a random embedding), else c = 1; with D = D_ref both are the plain RMS distance.
    """

    name = "hidden"
    label = "RMS |z(1) - z_ref(1)| (hidden)"
    needs = ("state",)

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        out = np.empty(run.state.shape[:2])
        for j, (D, Dr) in enumerate(zip(run.dims, reference.dims, strict=True)):
            c = math.sqrt(Dr / D) if run.scaled_state else 1.0
            dz = run.state[j, :, :, :D] - c * reference.state[j, :, :, :D]
            out[j] = np.sqrt(np.mean(np.sum(dz * dz, axis=-1), axis=-1))
        return out
