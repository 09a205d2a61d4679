"""wflow: deep residual networks in their mean-field / continuum limit.

Depth is an ODE z(t; x), the parameters are a density rho(theta, t) (particles
Theta (L, M, k) or a density on a theta-grid), and training is the Wasserstein gradient flow of
rho. The public surface:

* problem:         ``Problem``, ``Neuron``, ``Linear``, ``make_feature``, ``get_activation``,
                   ``make_dataset``
* discretization:  ``LayeredDepth`` (the finite ResNet), ``ContinuousDepth`` (diffrax),
                   ``init_particles``; the grid: ``Grid``, ``FiniteVolume``, ``GridDensity``,
                   ``init_density``, ``positivity_limit``
* solver step:     ``ParticleFlow`` and ``GridFlow`` (``Flow``s: one step in training time s),
                   ``Regularization``
* time loop:       ``integrate`` with ``Schedule`` -> ``FlowResult``
* comparisons:     ``train_network`` (optax ``SGD``, ``Momentum``, ``Adam``, ``Minibatch``),
                   ``meanfield_trajectory``, ``run_compare``, ``write_compare``, ``plot_compare``
* blocks (Lu et al. 2020): ``shallow_ensemble``, ``ensemble_gap``, ``Reordering``
* many devices:    ``ShardedDepth`` (a depth split over a device mesh), ``make_mesh``,
                   ``shard_depth``
* studies:         ``wflow.study`` (limit sweeps, zero-loss runs, fits, study files);
                   ``random_embedding``, ``random_readout`` (fixed random maps, ``Problem``)
"""

from ._signals import guard_startup as _guard_startup

_guard_startup()  # the ``wflow`` command: Ctrl-C / SIGTERM during these imports -> exit 130

from ._supervise import supervise_if_needed as _supervise_if_needed

_supervise_if_needed()  # one process of a multi-process ``wflow run``: run it in a watched child

from importlib.metadata import PackageNotFoundError, version

from ._activations import ACTIVATIONS, Activation, get_activation
from ._blocks import REORDERS, EnsembleGap, Reordering, block_fields, ensemble_gap, shallow_ensemble
from ._build import build_run
from ._compare import (
    OPTIMIZERS,
    SGD,
    Adam,
    CompareResult,
    Minibatch,
    Momentum,
    Trajectory,
    meanfield_trajectory,
    run_compare,
    train_network,
    write_compare,
)
from ._compare_plot import plot_compare
from ._config import ConfigError, load_config
from ._data import DATASETS, DataError, make_dataset, make_test_set
from ._depth import ADJOINTS, DEPTHS, ContinuousDepth, DepthDiscretization, Evaluation, LayeredDepth
from ._features import FEATURES, FeatureMap, Linear, Neuron, make_feature
from ._flow import METHODS, Flow, Measure, ParticleFlow, Regularization, make_flow
from ._grid import FiniteVolume, Grid, GridDensity, GridFlow, init_density, positivity_limit
from ._integrate import FlowResult, FlowState, Record, Schedule, integrate
from ._measures import MEASURES, init_particles
from ._problem import Problem, random_embedding, random_readout
from ._sharding import SHARD_MODES, ShardedDepth, make_mesh, shard_depth

try:
    __version__ = version("wflow-meanfield")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ACTIVATIONS",
    "ADJOINTS",
    "DATASETS",
    "DEPTHS",
    "FEATURES",
    "MEASURES",
    "METHODS",
    "OPTIMIZERS",
    "REORDERS",
    "SGD",
    "SHARD_MODES",
    "Activation",
    "Adam",
    "CompareResult",
    "ConfigError",
    "ContinuousDepth",
    "DataError",
    "DepthDiscretization",
    "EnsembleGap",
    "Evaluation",
    "FeatureMap",
    "FiniteVolume",
    "Flow",
    "FlowResult",
    "FlowState",
    "Grid",
    "GridDensity",
    "GridFlow",
    "LayeredDepth",
    "Linear",
    "Measure",
    "Minibatch",
    "Momentum",
    "Neuron",
    "ParticleFlow",
    "Problem",
    "Record",
    "Regularization",
    "Reordering",
    "Schedule",
    "ShardedDepth",
    "Trajectory",
    "__version__",
    "block_fields",
    "build_run",
    "ensemble_gap",
    "get_activation",
    "init_density",
    "init_particles",
    "integrate",
    "load_config",
    "make_dataset",
    "make_feature",
    "make_flow",
    "make_mesh",
    "make_test_set",
    "meanfield_trajectory",
    "plot_compare",
    "positivity_limit",
    "random_embedding",
    "random_readout",
    "run_compare",
    "shallow_ensemble",
    "shard_depth",
    "train_network",
    "write_compare",
]
