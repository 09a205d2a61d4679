"""The ``loss`` study metric: |E - E_ref|."""

from __future__ import annotations

from typing import final

import numpy as np

from .base import AbstractStudyMetric, Runs


@final
class Loss(AbstractStudyMetric):
    """|E - E_ref|: the gap between the run's loss and its reference's."""

    name = "loss"
    label = "|E - E_ref|"
    needs = ("loss",)

    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        return np.abs(run.loss - reference.loss)
