"""Study metrics: the registry ``STUDY_METRICS`` (name -> metric), in table and figure order.

Each metric is one final subclass of ``AbstractStudyMetric`` in its own file
(``base`` explains the interface). Adding one is one file plus one line here;
``study.metrics`` (its choices and default: all), the study file, the printed
table, the figures and tests/test_study_metrics.py read this registry.
"""

from __future__ import annotations

from .base import QUANTITIES, AbstractStudyMetric, Runs
from .coupling import Coupling
from .hidden import Hidden
from .loss import Loss
from .output import Output
from .relative_output import RelativeOutput
from .sinkhorn import Sinkhorn

__all__ = ["QUANTITIES", "STUDY_METRICS", "AbstractStudyMetric", "Runs"]

STUDY_METRICS: dict[str, AbstractStudyMetric] = {m.name: m for m in (
    Loss(),
    Output(),
    Hidden(),
    RelativeOutput(),
    Coupling(),
    Sinkhorn(),
)}
