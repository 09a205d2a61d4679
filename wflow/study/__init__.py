"""Theory studies: finite ResNets against the mean-field limit, and the zero-loss question.

* ``wflow study limit``: a sweep of shapes (L, M[, D]) x seeds, errors against a
  reference (``_limit``, ``_sweep``), fits (``_fit``), figures (``_figures``).
* ``wflow study zero-loss``: runs from several initial measures with sup |grad V|
  on a theta-box and tail mass in the history (``_zeroloss``).
* ``Ensemble`` / ``EnsembleFlow``: independent runs of one compiled shape moved
  side by side by ``integrate`` (``_ensemble``).

The study file format is in ``_file``; the [study] keys in ``_keys``.
"""

from ._ensemble import Ensemble, EnsembleFlow, WeightedParticleFlow
from ._figures import plot_study
from ._file import check_study_file, read_study
from ._fit import ModelFit, aggregate, fit_model, model_terms, slope
from ._keys import resolve_limit, resolve_zero_loss
from ._limit import Block, LimitSetup, Member, build_limit, plan
from ._sweep import fit_limit, run_limit
from ._zeroloss import ProbedFlow, ProbedParticles, box_query, run_zero_loss

__all__ = [
    "Block",
    "Ensemble",
    "EnsembleFlow",
    "LimitSetup",
    "Member",
    "ModelFit",
    "ProbedFlow",
    "ProbedParticles",
    "WeightedParticleFlow",
    "aggregate",
    "box_query",
    "build_limit",
    "check_study_file",
    "fit_limit",
    "fit_model",
    "model_terms",
    "plan",
    "plot_study",
    "read_study",
    "resolve_limit",
    "resolve_zero_loss",
    "run_limit",
    "run_zero_loss",
    "slope",
]
