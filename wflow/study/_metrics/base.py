"""The study-metric interface: ``AbstractStudyMetric`` and the ``Runs`` it reads.

``wflow study limit`` records, for every run and its reference at each study
time, some of the per-run *quantities* ``QUANTITIES``:

    loss        E                                   (b, n_t)
    prediction  g(z(1; x_i)), the network's output  (b, n_t, N, d_out)
    state       z(1; x_i), the final hidden state   (b, n_t, N, D_pad)
    particles   the measure as weighted points:     (b, n_t, L, M_pad, k_pad) and weights
                theta_{l,m} and omega_{l,m}         (b, n_t, L, M_pad) (0: a padding particle,
                                                    or a twin; a grid: cell centres, masses)

(one forward pass, ``_batch.forward_values``). A metric turns them into one
error per run and study time. A reference also carries each run's *twins*
(``Runs.twins``, with "particles"): the run's own initial particles moved by the
reference's velocity field (``_limit``: the "continuous" reference's particles
themselves; zero-weight passive particles carried by the "particles" reference).
It declares

* ``name``: the key in ``study.metrics`` and the study file's ``/errors/<name>``
  and ``/fit/<name>/...``;
* ``label``: the error's axis label in the figures and its heading in the printed
  table;
* ``needs``: the quantities it reads; a study keeps exactly the quantities its
  selected metrics need (and the loss, stored for every run);
* ``compute(run, reference)``: the errors (b, n_t) of b runs against their
  references, row j against row j.

A new metric is one file holding one final subclass and one line in the
registry ``STUDY_METRICS`` (``_metrics/__init__.py``); the config's choices,
the study file, the table, the figures and the tests read the registry.
Metrics use NumPy only: the registry is imported by ``wflow._config``.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import numpy as np

__all__ = ["QUANTITIES", "AbstractStudyMetric", "Runs"]

QUANTITIES = ("loss", "prediction", "state", "particles")


class Runs(NamedTuple):
    """b runs' quantities at the n_t study times (float64 NumPy arrays), as a metric reads them.

    A quantity that no selected metric needs is None. Row j of ``state`` holds
    the run's own state in its first ``dims[j]`` coordinates (runs of smaller D are
    padded with zero coordinates, ``_batch``). ``scaled_state``: the state is
    z = h / sqrt(D) in the paper's coordinates h (model.embedding = "random"), so
    states of different D compare after rescaling.
    """

    loss: np.ndarray | None  # (b, n_t)
    prediction: np.ndarray | None  # (b, n_t, N, d_out)
    state: np.ndarray | None  # (b, n_t, N, D_pad)
    dims: tuple[int, ...]  # (b,) state dimension D of each run
    scaled_state: bool = False
    particles: np.ndarray | None = None  # (b, n_t, L, M_pad, k_pad)
    weights: np.ndarray | None = None  # (b, n_t, L, M_pad), with "particles"
    twins: np.ndarray | None = None  # (b, n_t, L, M_pad, k_pad): a reference's, for run j;
    #                                  None where the reference carries none (a grid)
    settings: dict | None = None  # the resolved [study] keys (e.g. sinkhorn_epsilon)

    @classmethod
    def of(cls, result, dims, scaled_state=False, twins=None, settings=None) -> Runs:
        """Runs from a block's quantities (``_limit.BlockResult``: loss, prediction, state,
        particles, weights)."""
        return cls(result.loss, result.prediction, result.state, tuple(dims), scaled_state,
                   result.particles, result.weights, twins, settings)


class AbstractStudyMetric(abc.ABC):
    """A study metric: ``name``, ``label``, ``needs`` and ``compute`` (module docstring).

    Concrete metrics are final (one file each) and hold no state: the registry
    keeps one instance of each.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    twins: ClassVar[bool] = False  # reads the reference's twins of each run (``Runs.twins``)
    # the power of a distance the metric is: 1 for distances and differences (the theory's
    # rates 1/L and 1/sqrt(L M) as they are), 2 for a squared distance (twice the exponents)
    order: ClassVar[float] = 1.0

    @abc.abstractmethod
    def compute(self, run: Runs, reference: Runs) -> np.ndarray:
        """Errors (b, n_t) >= 0 of the b runs against their references, row j against row j.

        Reads only the quantities in ``needs`` (the others may be None); NaN
        where a run or its reference diverged or was not computed.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
