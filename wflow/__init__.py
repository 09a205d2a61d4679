"""wflow: deep residual networks in their mean-field / continuum limit.

Depth is an ODE z(t; x), the parameters are a density rho(theta, t) (particles
Theta (L, M, k) or a density on a theta-grid), and training is the Wasserstein gradient flow of
rho (docs/theory.md). The public surface:

* problem:         ``Problem``; blocks: ``AbstractFeatureMap`` (a user's block defines ``k``
                   and ``__call__``), ``Neuron``, ``Linear``, the registry ``FEATURES``;
                   sequences: ``AbstractSequenceBlock``, ``Attention``, ``LinearAttention``,
                   ``AttentionMLP``, ``Tokenwise``, ``sequence_maps``;
                   ``make_feature``, ``load_block``, ``generic_field``; ``get_activation``,
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
* files:           ``open_run`` (a run, study or compare file as an xarray DataTree)
* studies:         ``wflow.study`` (limit sweeps, zero-loss runs, fits, study files);
                   ``random_embedding``, ``random_readout`` (fixed random maps, ``Problem``)

Importing wflow loads JAX, equinox and diffrax; optax, h5py and matplotlib are
loaded when a name that needs them is first used.
"""

from importlib.metadata import PackageNotFoundError, version

from ._activations import ACTIVATIONS, Activation, get_activation
from ._blocks import REORDERS, EnsembleGap, Reordering, block_fields, ensemble_gap, shallow_ensemble
from ._build import build_run
from ._config import ConfigError, load_config
from ._data import DATASETS, DataError, make_dataset, make_test_set
from ._depth import ADJOINTS, DEPTHS, ContinuousDepth, DepthDiscretization, Evaluation, LayeredDepth
from ._features import (
    FEATURES,
    AbstractFeatureMap,
    AbstractSequenceBlock,
    Attention,
    AttentionMLP,
    FeatureMap,
    Linear,
    LinearAttention,
    Neuron,
    Tokenwise,
    generic_field,
    load_block,
    make_feature,
)
from ._flow import Flow, Measure, ParticleFlow, Regularization, make_flow
from ._grid import FiniteVolume, Grid, GridDensity, GridFlow, init_density, positivity_limit
from ._integrate import FlowResult, FlowState, Record, Schedule, integrate
from ._limiters import LIMITERS, AbstractLimiter
from ._init_particles import INIT_KINDS, MEASURES, init_particles
from ._problem import Problem, random_embedding, random_readout, sequence_maps
from ._sharding import SHARD_MODES, ShardedDepth, make_mesh, shard_depth
from ._steppers import METHODS, STEPPERS, AbstractStepper

# Names whose modules load optax, h5py or matplotlib: imported on first use (PEP 562).
_LAZY = {
    **{name: "._compare" for name in (
        "OPTIMIZERS", "SGD", "Adam", "CompareResult", "Minibatch", "Momentum", "Trajectory",
        "meanfield_trajectory", "run_compare", "train_network", "write_compare")},
    "plot_compare": "._compare_plot",
    "open_run": "._dims",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wflow' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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
    "INIT_KINDS",
    "LIMITERS",
    "MEASURES",
    "METHODS",
    "OPTIMIZERS",
    "REORDERS",
    "SGD",
    "SHARD_MODES",
    "STEPPERS",
    "AbstractFeatureMap",
    "AbstractSequenceBlock",
    "Attention",
    "AttentionMLP",
    "AbstractLimiter",
    "AbstractStepper",
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
    "LinearAttention",
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
    "Tokenwise",
    "Trajectory",
    "__version__",
    "block_fields",
    "build_run",
    "ensemble_gap",
    "generic_field",
    "get_activation",
    "init_density",
    "init_particles",
    "integrate",
    "load_block",
    "load_config",
    "make_dataset",
    "make_feature",
    "make_flow",
    "make_mesh",
    "make_test_set",
    "open_run",
    "meanfield_trajectory",
    "plot_compare",
    "positivity_limit",
    "random_embedding",
    "random_readout",
    "run_compare",
    "sequence_maps",
    "shallow_ensemble",
    "shard_depth",
    "train_network",
    "write_compare",
]
