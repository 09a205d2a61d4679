"""The ``relative_output`` study metric: RMS |g - g_ref| / RMS |g_ref|."""

from __future__ import annotations

from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs


@final
class RelativeOutput(AbstractStudyMetric):
    """sqrt( sum_i |g(z(1; x_i)) - g_ref(z_ref(1; x_i))|^2 / sum_i |g_ref(z_ref(1; x_i))|^2 ).

    The output error relative to the size of the reference's output (the ratio of the
    RMS over the samples of |g - g_ref| to that of |g_ref|): unchanged when both outputs
    are multiplied by the same c != 0, so errors of problems with outputs of different
    scale compare. A reference whose output is 0 at every sample gives inf (NaN if the
    run's output is 0 too).
    """

    name = "relative_output"
    label = "RMS |g - g_ref| / RMS |g_ref| (relative output)"
    needs = ("prediction",)

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        diff = run.prediction - reference.prediction
        err = np.mean(np.sum(diff * diff, axis=-1), axis=-1)
        size = np.mean(np.sum(reference.prediction * reference.prediction, axis=-1), axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(err / size)
