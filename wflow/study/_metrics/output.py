"""The ``output`` study metric: the RMS over the samples of |g - g_ref|."""

from __future__ import annotations

from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs


@final
class Output(AbstractStudyMetric):
    """sqrt( (1/N) sum_i |g(z(1; x_i)) - g_ref(z_ref(1; x_i))|^2 ), |.| the norm of R^{d_out}."""

    name = "output"
    label = "RMS |g - g_ref| (output)"
    needs = ("prediction",)

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        diff = run.prediction - reference.prediction
        return np.sqrt(np.mean(np.sum(diff * diff, axis=-1), axis=-1))
