"""wflow: deep residual networks in their mean-field / continuum limit.

Depth is an ODE z(t; x), the parameters are a density rho(theta, t) (here:
particles Theta (L, M, k)), and training is the Wasserstein gradient flow of
rho. The public surface:

* problem:         ``Problem``, ``Neuron``, ``Linear``, ``make_feature``, ``get_activation``,
                   ``make_dataset``
* discretization:  ``LayeredDepth`` (the finite ResNet), ``ContinuousDepth`` (diffrax),
                   ``init_particles``
* solver step:     ``ParticleFlow`` (a ``Flow``: one step in training time s), ``Regularization``
* time loop:       ``integrate`` with ``Schedule`` -> ``FlowResult``
* studies:         ``wflow.study`` (limit sweeps, zero-loss runs, fits, study files);
                   ``random_embedding``, ``random_readout`` (fixed random maps, ``Problem``)
"""

from importlib.metadata import PackageNotFoundError, version

from ._activations import ACTIVATIONS, Activation, get_activation
from ._build import build_run
from ._config import ConfigError, load_config
from ._data import DATASETS, DataError, make_dataset
from ._depth import ADJOINTS, DEPTHS, ContinuousDepth, DepthDiscretization, Evaluation, LayeredDepth
from ._features import FEATURES, FeatureMap, Linear, Neuron, make_feature
from ._flow import METHODS, Flow, Measure, ParticleFlow, Regularization, make_flow
from ._integrate import FlowResult, FlowState, Record, Schedule, integrate
from ._measures import MEASURES, init_particles
from ._problem import Problem, random_embedding, random_readout

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
    "Flow",
    "FlowResult",
    "FlowState",
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
    "init_particles",
    "integrate",
    "load_config",
    "make_dataset",
    "make_feature",
    "make_flow",
    "random_embedding",
    "random_readout",
]
