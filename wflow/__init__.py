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
"""

from importlib.metadata import PackageNotFoundError, version

from ._activations import ACTIVATIONS, Activation, get_activation
from ._build import build_run
from ._config import ConfigError, load_config
from ._data import DATASETS, DataError, make_dataset
from ._depth import ADJOINTS, DEPTHS, ContinuousDepth, DepthDiscretization, Evaluation, LayeredDepth
from ._features import FEATURES, FeatureMap, Linear, Neuron, make_feature
from ._flow import METHODS, Flow, Measure, ParticleFlow, Regularization, make_flow
from ._grid import FiniteVolume, Grid, GridDensity, GridFlow, init_density, positivity_limit
from ._integrate import FlowResult, FlowState, Record, Schedule, integrate
from ._measures import MEASURES, init_particles
from ._problem import Problem

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
    "Activation",
    "ConfigError",
    "ContinuousDepth",
    "DataError",
    "DepthDiscretization",
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
    "Neuron",
    "ParticleFlow",
    "Problem",
    "Record",
    "Regularization",
    "Schedule",
    "__version__",
    "build_run",
    "get_activation",
    "init_density",
    "init_particles",
    "integrate",
    "load_config",
    "make_dataset",
    "make_feature",
    "make_flow",
    "positivity_limit",
]
