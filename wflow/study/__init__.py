"""Theory studies: finite ResNets against the mean-field limit, and the zero-loss question.

* ``wflow study limit``: a sweep of shapes (L, M[, D]) x seeds, errors against a
  reference (``_limit``, ``_sweep``) by the metrics of ``STUDY_METRICS``
  (``_metrics``: one file per metric), fits (``_fit``), figures (``_figures``).
* ``wflow study zero-loss``: runs from several initial measures with sup |grad V|
  on a theta-box and tail mass in the history (``_zeroloss``).
* ``Batch`` / ``BatchFlow``: independent runs (the *members*) of one compiled
  shape moved side by side by ``integrate`` (``_batch``).

Both verbs have the same shape (``_command``): resolve the [study] keys
(``_keys``), execute (checkpointing the study file, ``_file``), report, draw the
figures. From Python, ``limit(config, path)`` and ``zero_loss(config, path)`` (``_api``)
run a verb into a study file and return it as an xarray DataTree.

Importing this package loads only the metric registry (NumPy): ``wflow._config``
reads the metric names from it while ``import wflow`` runs. Everything else is
imported on first use (``wflow.study.run_limit``, ...).
"""

from __future__ import annotations

import importlib

from ._metrics import STUDY_METRICS, AbstractStudyMetric, Runs

# name -> the submodule defining it, imported on first access (PEP 562)
_LAZY = {
    "Batch": "_batch", "BatchFlow": "_batch", "WeightedParticleFlow": "_batch",
    "plot_study": "_figures",
    "check_study_file": "_file", "read_study": "_file",
    "ModelFit": "_fit", "aggregate": "_fit", "fit_model": "_fit", "model_terms": "_fit",
    "slope": "_fit",
    "resolve_limit": "_keys", "resolve_zero_loss": "_keys",
    "Block": "_limit", "LimitSetup": "_limit", "Member": "_limit", "build_limit": "_limit",
    "plan": "_limit",
    "fit_limit": "_sweep", "run_limit": "_sweep",
    "limit": "_api", "zero_loss": "_api",
    "ProbedFlow": "_zeroloss", "ProbedParticles": "_zeroloss", "box_query": "_zeroloss",
    "run_zero_loss": "_zeroloss",
}
# the names these had before the study's batched runs were called batches
_OLD = {"Ensemble": "Batch", "EnsembleFlow": "BatchFlow"}

__all__ = sorted(["STUDY_METRICS", "AbstractStudyMetric", "Runs", *_LAZY])


def __getattr__(name: str):
    target = _OLD.get(name, name)
    if target in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[target]}", __name__), target)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
