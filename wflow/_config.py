"""Run configuration: TOML files -> a validated, fully resolved dict -> run objects.

``load_config(path, overrides)`` reads a TOML file with ``tomllib``, applies
``--set section.key=value`` overrides, checks every key against the schema
below (type, range, allowed values, cross-key consistency) and fills in the
defaults, so the returned dict names every setting the run uses. It is what
the run file stores (as TOML text, ``to_toml``) and what ``--resume``
compares. ``_build.build_run(config)`` turns it into the library objects
(problem, depth discretization, schedule, regularization, initial measure,
Langevin key). The typed-key machinery and TOML text are in ``_schema.py``.

Every problem raises ``ConfigError`` with one line of the form
``<key> = <value>: <what is allowed>``; the CLI prints it and exits with 2.

The keys are declared once, in ``SCHEMA`` (``[data]`` ... ``[study]``), ``VERB_SECTIONS``
(``[compare]``, validated when present, absent from the resolved config otherwise, accepted by
every verb) and ``SUBTABLES`` (``[solver.grid]``, ``[study.grid]``, ``[compare.<optimizer>]``):
a default, the allowed values as a JSON Schema fragment and a description each. The checks,
the configuration reference (``wflow config reference``, docs/config-reference.md) and the
JSON Schema for TOML editors (``wflow config schema``) come from them; the cross-key rules
are the ``_resolve_*`` functions below. ``[study]`` defaults are filled in by the study verbs
(``wflow/study/_keys.py``).

Relative ``data.path`` / ``init.path`` in a config file are taken relative to
the directory of that file (so a config and its data travel together); given
with ``--set`` they are relative to the current directory. The resolved config
stores them as absolute paths.

Seeds: the dataset uses ``seed``; the initial particles use
``fold_in(PRNGKey(seed), 1)``; the Langevin noise ``fold_in(PRNGKey(seed), 2)``.
"""

from __future__ import annotations

import difflib
import os
import stat
from contextlib import nullcontext
import tomllib
from typing import Any

import numpy as np

from ._activations import ACTIVATIONS
from ._blocks import REORDERS
from ._compare import COMPARE_KEYS, OPTIMIZER_KEYS
from ._data import DATASETS, DataError, make_dataset
from ._depth import ADJOINTS, DEPTHS, ODE_SOLVERS
from ._features import FEATURES
from ._flow import L2_SCHEDULES
from ._grid import DEFAULT_CFL, SCHEMES, grid_config_warnings, resolve_grid_config
from ._integrate import ON_INCREASE
from ._init_particles import INIT_KINDS
from ._limiters import LIMITERS
from ._model import resolve_block, resolve_block_path
from ._schema import (
    ConfigError,
    Key,
    TableKey,
    block_key,
    bool_key,
    bounds_key,
    cells_key,
    check_table,
    choice_key,
    choices_key,
    digits_key,
    float_key,
    fmt,
    int_key,
    ints_key,
    json_schema,
    name_or_index_key,
    numbers_key,
    parse_override,
    path_key,
    read_toml,
    reference_markdown,
    table_key,
    to_toml,
    unknown_key,
)
from ._sharding import SHARD_MODES
from ._steppers import METHODS, STEPPERS
from .study._metrics import STUDY_METRICS as _STUDY_METRIC_REGISTRY

__all__ = ["ConfigError", "config_json_schema", "config_reference", "config_warnings",
           "load_config", "to_toml"]


GRID_SCHEMES = ("upwind", "muscl")
EMBEDDINGS = ("pad", "random")
READOUTS = ("coordinates", "random")
READOUT_TOKENS = ("last", "mean")
STUDY_METRICS = tuple(_STUDY_METRIC_REGISTRY)  # wflow/study/_metrics: one file per metric
STUDY_SAMPLINGS = ("iid", "shared")
STUDY_REFERENCES = ("continuous", "particles", "grid")
STUDY_INITS = ("point", "gaussian", "uniform")
PRECISIONS = ("float32", "float64")
SOLVER_KINDS = ("particles", "grid")
SEQUENCE_KINDS = ("in_context_regression", "teacher_transformer")  # data of n tokens
DEFAULT_TOKENS = 8

# Section -> key -> Key. Order here is the order of the resolved config / stored TOML, and of
# the generated reference (docs/config-reference.md, ``wflow config reference``).
SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "kind": choice_key("teacher", DATASETS).describe(
            "`teacher`: a random teacher ResNet of the model's family (zero loss attainable); "
            "`sine`: y = sin(pi x_0); `circles`: two rings, labels +-1, d_in = 2; `file`; "
            "`digits`: scikit-learn's 8x8 digits, d_in = 64; `gaussian`: x ~ N(0, I/d_in), "
            "y ~ N(0, I/d_out) independent (random labels)"),
        "n": int_key(256, 1).describe("training samples N (file data: the file's rows)"),
        "dim": int_key(2, 1).describe("input dimension d_in (2 for circles, 64 for digits, read "
                                      "from the file for file data)"),
        "out_dim": int_key(1, 1).describe("output dimension d_out of teacher and gaussian data"),
        "noise": float_key(0.0, 0.0).describe("Gaussian label noise (teacher, sine), radial "
                                              "noise (circles)"),
        "path": path_key().describe("file data: `.npz` or `.h5` with `x` (N, d_in) and `y` (N,) "
                                    "or (N, d_out); relative to the config file"),
        "teacher_width": int_key(4, 1).describe("neurons per layer of the teacher network"),
        "teacher_depth": int_key(4, 1).describe("layers of the teacher network"),
        "teacher_std": float_key(1.0, 0.0).describe("std of the teacher's parameters"),
        "classes": digits_key().describe("digits only: the digits kept (two give +-1 labels, "
                                         "more give one-hot targets)", "all 10"),
        "test_n": int_key(0, 0).describe("held-out samples (every kind): test loss, and "
                                         "accuracy for labelled data, in the history"),
        "tokens": int_key(None, 1).describe(
            "sequence data: tokens n per sample (in_context_regression: context and query); "
            "read from the file for file data x of shape (N, n, d_in)",
            "8 for in_context_regression, none (vector data) otherwise"),
    },
    "model": {
        "feature": block_key("neuron", FEATURES).describe(
            "the residual block: `neuron` (k = 2d + 1, 2d without bias), `linear` (k = d^2), "
            "or your own as `\"path/to/file.py:ClassName\"` (relative to the config file) or "
            "`\"package.module:ClassName\"`"),
        "activation": choice_key("tanh", ACTIVATIONS).describe(
            "sigma of the neuron; `relu` is outside the theory (not smooth: a warning)"),
        "bias": bool_key(True).describe("the neuron has a bias b"),
        "dim": int_key(None, 1).describe("state dimension d (>= d_in with `pad`, >= d_out with "
                                         "`coordinates`)", "max(d_in, d_out)"),
        "sharpness": float_key(10.0, 0.0, strict=True).describe(
            "beta of `smooth_relu` = (x + sqrt(x^2 + 1/beta^2))/2 - 1/(2 beta)"),
        "scale": float_key(1.0, 0.0, strict=True).describe(
            "residual scale alpha: z_{l+1} = z_l + (alpha/L) F_l, trained by the flow of "
            "E/alpha^2"),
        "embedding": choice_key("pad", EMBEDDINGS).describe(
            "`pad`: z(0; x) = (x, 0, ..., 0); `random`: z(0; x) = A x, A_jk ~ N(0, 1/d) fixed"),
        "readout": choice_key("coordinates", READOUTS).describe(
            "`coordinates`: g(z) = z[:d_out]; `random`: g(z) = C z, C_oj ~ N(0, 1/d) fixed"),
        "readout_token": name_or_index_key("last", READOUT_TOKENS).describe(
            "sequence data: the token read out, `last`, an index 0..n-1, or `mean` (the "
            "tokens' average)"),
        "params": table_key().describe(
            "the block's own parameters, passed to its constructor (`[model.params]`, "
            "`--set model.params.h=3`)", "none"),
    },
    "init": {
        "kind": choice_key("gaussian", INIT_KINDS).describe(
            "initial measure: `gaussian`, `uniform` (box low..high), `point` (all mass at "
            "`mean`), `file` (`theta` (L, M, k), or `rho` for the grid, from .npz/.h5)"),
        "mean": numbers_key(0.0).describe("mean (a scalar or k values)"),
        "std": numbers_key(1.0, lo=0.0).describe("standard deviation (a scalar or k values)"),
        "low": numbers_key(None).describe("uniform: lower corner", "mean - sqrt(3) std"),
        "high": numbers_key(None).describe("uniform: upper corner", "mean + sqrt(3) std"),
        "path": path_key().describe("file: the initial particles; relative to the config file"),
        "symmetric": bool_key(False).describe(
            "particles: the second half of every slice mirrors the first (theta -> R theta), so "
            "the field is zero at s = 0; needs an even solver.M"),
    },
    "solver": {
        "kind": choice_key("particles", SOLVER_KINDS).describe(
            "`particles`, or `grid` (finite volumes for rho on a theta-grid, k <= 3)"),
        "depth": choice_key("layers", DEPTHS).describe(
            "`layers` (the finite ResNet) or `continuous` (an ODE in depth, diffrax)"),
        "L": int_key(16, 1).describe("depth slices (layers)"),
        "M": int_key(64, 1).describe("particles per slice (not used by the grid)"),
        "adjoint": choice_key("checkpoint", ADJOINTS).describe(
            "continuous depth: `checkpoint` (backpropagate through the solver) or `backsolve` "
            "(the continuous adjoint)"),
        "ode_solver": choice_key("tsit5", tuple(ODE_SOLVERS)).describe(
            "continuous depth: the diffrax solver"),
        "rtol": float_key(1e-5, 0.0, strict=True).describe("continuous depth: relative "
                                                           "tolerance"),
        "atol": float_key(1e-7, 0.0, strict=True).describe("continuous depth: absolute "
                                                           "tolerance"),
        "precision": choice_key("float32", PRECISIONS).describe("floating-point precision"),
        "devices": int_key(None, 1).describe("devices of JAX's default backend to split the run "
                                             "over", "all visible"),
        "shard": choice_key("auto", SHARD_MODES).describe(
            "split the N samples (`data`), the M particles of every slice (`particles`), or "
            "choose (`auto`)"),
        "tile": int_key(None, 1).describe("largest (N, M) block of one field call, in elements",
                                          "on CPUs 2^22 / d within [2^18, 2^21] for `neuron` "
                                          "(2^18 for other blocks), 2^24 on GPUs"),
    },
    "train": {
        "time": float_key(10.0, 0.0).describe(
            "horizon S of the flow; 0: no training, the initial network only (forward pass, "
            "one record)"),
        "dt": float_key(0.01, 0.0, strict=True).describe(
            "step: n = ceil(S / dt) equal steps of S / n"),
        "method": choice_key("euler", METHODS).describe(
            "`euler` (gradient descent with learning rate L M dt), `heun`, `ssprk3`, `ssprk43` "
            "(SSP Runge-Kutta; the last two deterministic only), `adaptive` (diffrax Tsit5 in s)"),
        "l2": float_key(0.0, 0.0).describe("L2 weight lambda of the regularized energy"),
        "l2_schedule": choice_key("constant", L2_SCHEDULES).describe(
            "lambda(s): `constant`, `inverse` l2/(1 + s/decay), `exponential` l2 exp(-s/decay)"),
        "l2_decay": float_key(1.0, 0.0, strict=True).describe("decay of the L2 schedule"),
        "temperature": float_key(0.0, 0.0).describe(
            "tau: mean-field Langevin noise (euler and heun only)"),
        "record_every": int_key(10, 1).describe("steps between history records (the first and "
                                                "last are always recorded)"),
        "snapshots": int_key(5, 2).describe("particle snapshots, evenly spaced, first and last "
                                            "included"),
        "rtol": float_key(1e-4, 0.0, strict=True).describe("`adaptive`: relative tolerance"),
        "atol": float_key(1e-6, 0.0, strict=True).describe("`adaptive`: absolute tolerance"),
        "divergence_factor": float_key(1e6, 1.0, strict=True).describe(
            "a loss above this times the initial loss is a divergence (exit 3)"),
        "on_increase": choice_key("warn", ON_INCREASE).describe(
            "a rise of the energy beyond round-off (the step is above the method's stability "
            "limit): `warn` once with the largest stable step, or `stop` (exit 3)"),
        "reorder": choice_key("none", REORDERS).describe(
            "block reordering (Lu et al. 2020): permute the depth slices, `random` (seeded) or "
            "`sort` (by block strength)"),
        "reorder_every": int_key(10, 1).describe("steps between reorderings"),
    },
    "output": {
        "path": path_key().describe("the run file", "runs/<config stem>.h5"),
        "overwrite": bool_key(False).describe("replace an existing run file"),
        "checkpoint_every": float_key(10.0, 0.0).describe(
            "seconds of wall time between checkpoints of the run file (0: at every record)"),
    },
    # Read by the study verbs only: their defaults and cross-key rules are in
    # wflow/study/_keys.py; `wflow run` ignores the section.
    "study": {
        "L": ints_key(None, 1).describe("limit: depths swept", "[solver.L]"),
        "M": ints_key(None, 1).describe("limit: widths swept", "[solver.M]"),
        "dims": ints_key(None, 1).describe("limit: state dimensions D swept (replaces "
                                           "model.dim)", "not swept"),
        "seeds": int_key(None, 1).describe("repetitions (independent particles and random maps)",
                                           "5"),
        "times": numbers_key(None, lo=0.0).describe(
            "limit: training times at which errors are taken, multiples of train.dt (0: the "
            "forward pass only)", "[train.time]"),
        "metrics": choices_key(None, STUDY_METRICS).describe("limit: the error metrics", "all"),
        "sampling": choice_key(None, STUDY_SAMPLINGS).describe(
            "limit: `iid` (M particles drawn per layer) or `shared` (the same M particles in "
            "every layer)", '"iid"'),
        "reference": choice_key(None, STUDY_REFERENCES).describe(
            "limit: what the finite networks are compared with: `continuous` (the same "
            "particles in continuous depth), `particles` (one large run), `grid` (needs "
            "[study.grid])", '"continuous"'),
        "reference_M": int_key(None, 1).describe("limit, `particles` reference: its particles "
                                                 "per slice", "4 max(M)"),
        "reference_L": int_key(None, 1).describe("limit, `particles`/`grid` reference: its "
                                                 "depth slices", "max(L)"),
        "reference_dim": int_key(None, 1).describe("limit, `particles` reference: its state "
                                                   "dimension", "max(dims)"),
        "reference_depth": choice_key(None, DEPTHS).describe(
            "limit, `particles`/`grid` reference: its depth", '"continuous"'),
        "bootstrap": int_key(None, 0).describe("limit: bootstrap resamples of the seeds for "
                                               "the fits' intervals", "200"),
        "memory": float_key(None, 0.0, strict=True).describe(
            "limit: GiB one compiled block of runs may use", "4.0"),
        "sinkhorn_epsilon": float_key(None, 0.0, strict=True).describe(
            "limit: entropic regularization of the `sinkhorn` metric",
            "0.05 x the mean squared distance of two draws of the initial law"),
        "inits": choices_key(None, STUDY_INITS).describe(
            "zero-loss: initial measures run side by side", '["point", "gaussian"]'),
        "box": float_key(None, 0.0, strict=True).describe(
            "zero-loss: half-width of the theta-box on which sup |grad V| is estimated", "3.0"),
        "box_points": int_key(None, 1).describe("zero-loss: random query points in the box",
                                                "2048"),
        "tail_radius": float_key(None, 0.0, strict=True).describe(
            "zero-loss: tail mass = fraction of particles with |theta| > tail_radius", "box"),
    },
}
# Sections of a verb: validated when present, absent from the resolved config otherwise.
VERB_SECTIONS: dict[str, dict[str, Key]] = {
    "compare": COMPARE_KEYS,
}
# Sub-tables: (section, name) -> keys. Only meaningful for solver.kind = "grid".
SUBTABLES: dict[tuple[str, str], dict[str, Key]] = {
    ("solver", "grid"): {
        "cells": cells_key(32).describe("cells per axis: one integer or k"),
        "bounds": bounds_key([-4.0, 4.0]).describe("the box: one [low, high] for every axis, "
                                                   "or k pairs"),
        "scheme": choice_key("muscl", SCHEMES).describe("`upwind` (first order) or `muscl` "
                                                        "(second order)"),
        "limiter": choice_key("vanleer", LIMITERS).describe("`muscl`: the slope limiter"),
        "cfl": float_key(DEFAULT_CFL, 0.0, strict=True).describe(
            "substep = cfl / (largest rate at which a cell can lose mass); at most 1 (upwind), "
            "2/3 (minmod), 1/2 (vanleer, mc), times the stepper's SSP coefficient"),
    },
    **{("compare", name): keys for name, keys in OPTIMIZER_KEYS.items()},
}
# The grid of a study's grid reference (study.reference = "grid", wflow/study/_keys.py).
SUBTABLES[("study", "grid")] = SUBTABLES[("solver", "grid")]
TOP_KEYS = {"seed": int_key(0, 0, 2**32 - 1).describe(
    "seeds the data, the initial particles (fold_in(PRNGKey(seed), 1)) and the Langevin noise "
    "(fold_in(PRNGKey(seed), 2))")}
PATH_KEYS = (("data", "path"), ("init", "path"))

SECTION_DOCS = {
    "data": "The training data (x_i, y_i), i = 1..N.",
    "model": "The residual block f(z; theta) and the maps into and out of the state z in R^d.",
    "init": "The initial measure rho_0 of the parameters theta in R^k.",
    "solver": "How the flow is discretized: particles or the grid, depth, precision, devices.",
    "train": "The gradient flow in training time s.",
    "output": "The run file.",
    "study": "Read by `wflow study limit` and `wflow study zero-loss` only (`wflow run` ignores "
             "it). A key left out takes the default shown; the cross-key rules are the study "
             "verbs' (`wflow/study/_keys.py`). `[study.grid]` is the grid of "
             "`study.reference = \"grid\"`, with the keys of `[solver.grid]`.",
    "compare": "Read by `wflow compare` only: the finite networks trained beside the flow. "
               "`[compare.<optimizer>]` tables set each optimizer.",
}
REFERENCE_PREAMBLE = """# Configuration reference

<!-- Generated by `wflow config reference` from the declarations in wflow/_config.py;
tests/test_config_schema.py checks that this page equals it. Do not edit by hand. -->

Every key of a config file: its default, the values allowed (the checker's own words: a
value outside them stops the command with that line and exit code 2) and what it does.
Keys that do not apply (`data.path` without `data.kind = "file"`, ...) are errors too; those
cross-key rules and how configs resolve are described in [Configuration](configuration.md).
The same declarations give the JSON Schema for TOML editors (`wflow config schema`)."""


def _sections() -> dict[str, tuple[str, dict[str, Key]]]:
    return {name: (SECTION_DOCS[name], keys) for name, keys in {**SCHEMA, **VERB_SECTIONS}.items()}


def config_json_schema() -> dict:
    """The JSON Schema of a wflow config file (``wflow config schema``)."""
    return json_schema(TOP_KEYS, _sections(), SUBTABLES, "wflow config")


def config_reference() -> str:
    """The configuration reference, Markdown (``wflow config reference``)."""
    return reference_markdown(TOP_KEYS, _sections(), SUBTABLES, REFERENCE_PREAMBLE)


MAX_STEPS = 10**9
MAX_RECORDS = 10**6

def _apply_override(raw: dict, parts: list[str], value: Any) -> None:
    full = ".".join(parts)
    if len(parts) == 1:
        if parts[0] not in TOP_KEYS:
            opts = list(TOP_KEYS) + [f"{s}.<key>" for s in SCHEMA]
            raise unknown_key(full, value, opts, "at the top level")
        raw[parts[0]] = value
        return
    section = parts[0]
    if section not in SCHEMA and section not in VERB_SECTIONS:
        raise _unknown_section(section, value, full)
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{section} = {fmt(table)}: must be a table ([{section}])")
    if len(parts) == 3 and isinstance(SCHEMA.get(section, {}).get(parts[1]), TableKey):
        sub = table.setdefault(parts[1], {})  # a free table: [model.params]
        if not isinstance(sub, dict):
            raise ConfigError(f"{section}.{parts[1]} = {fmt(sub)}: must be a table "
                              f"([{section}.{parts[1]}])")
        sub[parts[2]] = value
        return
    if len(parts) == 3 and (section, parts[1]) in SUBTABLES:
        sub = table.setdefault(parts[1], {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{section}.{parts[1]} = {fmt(sub)}: must be a table "
                              f"([{section}.{parts[1]}])")
        if parts[2] not in SUBTABLES[(section, parts[1])]:
            raise unknown_key(full, value, list(SUBTABLES[(section, parts[1])]),
                           f"in [{section}.{parts[1]}]")
        sub[parts[2]] = value
        return
    if len(parts) != 2 or parts[1] not in {**SCHEMA, **VERB_SECTIONS}[section]:
        raise unknown_key(full, value, _section_options(section), f"in [{section}]")
    table[parts[1]] = value


def _section_options(section: str) -> list[str]:
    return (list({**SCHEMA, **VERB_SECTIONS}[section])
            + [f"[{section}.{n}]" for (s, n) in SUBTABLES if s == section])


def _unknown_section(name: str, value: Any, full: str | None = None) -> ConfigError:
    sections = list(SCHEMA) + list(VERB_SECTIONS)
    options = list(TOP_KEYS) + sections
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = ""
    if close:
        hint = f" (did you mean {'[' + close[0] + ']' if close[0] in sections else close[0]}?)"
    allowed = ", ".join(list(TOP_KEYS) + [f"[{s}]" for s in sections])
    if full is not None:
        shown = f"{full} = {fmt(value)}"
    elif isinstance(value, dict):
        shown = f"[{name}]"
    else:
        shown = f"{name} = {fmt(value)}"
    return ConfigError(f"{shown}: unknown section{hint}; allowed at the top level: {allowed}")


# ----------------------------------------------------------------------------- resolving


def _per_coord_len(key: str, value, k: int) -> None:
    if isinstance(value, list) and len(value) != k:
        raise ConfigError(f"{key} = {fmt(value)}: give a scalar or a list of k = {k} values "
                          f"(k = {len(value)} was given)")


def _resolve(raw: dict, stem: str) -> dict:
    for name, value in raw.items():
        if name not in TOP_KEYS and name not in SCHEMA and name not in VERB_SECTIONS:
            raise _unknown_section(name, value)
    cfg: dict[str, Any] = {}
    given: dict[str, set] = {}
    cfg["seed"] = TOP_KEYS["seed"].check("seed", raw["seed"]) if "seed" in raw else 0
    for section, keys in SCHEMA.items():
        subs = {n: v for (s, n), v in SUBTABLES.items() if s == section}
        cfg[section], given[section] = check_table(section, raw.get(section, {}), keys, subs)
    for section, keys in VERB_SECTIONS.items():
        if section in raw:
            subs = {n: v for (s, n), v in SUBTABLES.items() if s == section}
            cfg[section], given[section] = check_table(section, raw[section], keys, subs)

    data, model, init, solver, train, output = (cfg[s] for s in
                                                ("data", "model", "init", "solver", "train", "output"))
    d_in, d_out = _resolve_data(data, given["data"])
    k = _resolve_model(model, solver, init, data, d_in, d_out)
    _resolve_init(init, solver, k)
    _resolve_solver(raw, solver, init, train, k, given["solver"])
    _resolve_train(cfg, train, solver, given["train"])
    if output["path"] is None:
        output["path"] = os.path.join("runs", f"{stem}.h5")
    if "study" not in raw:  # only the study verbs read [study]; they fill in its defaults
        del cfg["study"]
    return cfg


def _resolve_data(data: dict, given: set) -> tuple[int, int]:
    """[data]: file data read for their shapes, fixed dimensions, classes; (d_in, d_out)."""
    kind = data["kind"]
    if kind == "file":
        if data["path"] is None:
            raise ConfigError('data.path is missing: data.kind = "file" needs a .npz or .h5 file '
                              "with arrays x (N, d_in) and y (N,) or (N, d_out)")
        data["path"] = os.path.abspath(os.path.expanduser(data["path"]))
        try:
            x, y = make_dataset("file", path=data["path"])
        except DataError as e:
            raise ConfigError(str(e)) from None
        n_file, d_in = x.shape[0], x.shape[-1]
        d_out = y.shape[1]
        if x.ndim == 3:  # sequences (N, n, d_in)
            if "tokens" in given and data["tokens"] != x.shape[1]:
                raise ConfigError(f"data.tokens = {data['tokens']}: the file data.path has x of "
                                  f"shape {x.shape}, so n = {x.shape[1]} tokens (leave "
                                  "data.tokens out for file data)")
            data["tokens"] = x.shape[1]
        elif data["tokens"] is not None:
            raise ConfigError(f"data.tokens = {data['tokens']}: the file data.path has x of "
                              f"shape {x.shape} (vectors); sequence data are x (N, n, d_in)")
        if "dim" in given and data["dim"] != d_in:
            raise ConfigError(f"data.dim = {data['dim']}: the file data.path has x of shape "
                              f"{x.shape}, so d_in = {d_in} (leave data.dim out for file data)")
        if data["test_n"] >= n_file:
            raise ConfigError(f"data.test_n = {data['test_n']}: the file data.path holds "
                              f"{n_file} samples; at least one must be left for training")
        n_train = n_file - data["test_n"]
        if "n" in given and data["n"] != n_train:
            held = f" minus data.test_n = {data['test_n']}" if data["test_n"] else ""
            raise ConfigError(f"data.n = {data['n']}: the file data.path holds {n_file} samples"
                              f"{held}, i.e. {n_train} for training (leave data.n out for file "
                              "data)")
        data["dim"], data["n"] = d_in, n_train
    else:
        if data["path"] is not None:
            raise ConfigError(f"data.path = {fmt(data['path'])}: only used with "
                              f'data.kind = "file" (data.kind is {fmt(kind)})')
        fixed = {"circles": 2, "digits": 64}.get(kind)
        if fixed is not None:
            if "dim" in given and data["dim"] != fixed:
                raise ConfigError(f"data.dim = {data['dim']}: {kind} data has d_in = {fixed}")
            data["dim"] = fixed
        d_in = data["dim"]
        if kind == "digits":
            if data["classes"] is None:
                data["classes"] = list(range(10))
            d_out = 1 if len(data["classes"]) == 2 else len(data["classes"])
        else:
            d_out = data["out_dim"] if kind in ("teacher", "gaussian", "teacher_transformer") \
                else 1
    if kind in SEQUENCE_KINDS:
        if data["tokens"] is None:
            data["tokens"] = DEFAULT_TOKENS
        if kind == "in_context_regression" and data["dim"] < 2:
            raise ConfigError(f"data.dim = {data['dim']}: in-context regression tokens are "
                              "(x, w . x) with x in R^(dim - 1): dim must be >= 2")
    elif kind != "file" and data["tokens"] is not None:
        raise ConfigError(f"data.tokens = {data['tokens']}: only used with sequence data "
                          f"(data.kind = {', '.join(map(fmt, SEQUENCE_KINDS))} or file data x of "
                          f"shape (N, n, d_in)); data.kind is {fmt(kind)}")
    if data["classes"] is not None and kind != "digits":
        raise ConfigError(f"data.classes = {fmt(data['classes'])}: only used with "
                          f'data.kind = "digits" (data.kind is {fmt(kind)})')
    if ("out_dim" in given and kind not in ("teacher", "gaussian", "teacher_transformer")
            and data["out_dim"] != d_out):
        raise ConfigError(f"data.out_dim = {data['out_dim']}: only teacher and gaussian data set "
                          "d_out; "
                          f"{kind} data has d_out = {d_out}")
    data["out_dim"] = d_out
    return d_in, d_out


def _resolve_model(model: dict, solver: dict, init: dict, data: dict, d_in: int,
                   d_out: int) -> int:
    """[model]: the state dimension d >= d_in, d_out, the embedding / readout rules and the
    block (built and checked); returns its k."""
    if model["dim"] is None:
        model["dim"] = max(d_in, d_out)
    d = model["dim"]
    if d < d_in and model["embedding"] == "pad":
        raise ConfigError(f"model.dim = {d}: must be >= the input dimension d_in = {d_in} "
                          '(data.dim) with model.embedding = "pad"')
    if d < d_out and model["readout"] == "coordinates":
        raise ConfigError(f"model.dim = {d}: must be >= the output dimension d_out = {d_out} "
                          'with model.readout = "coordinates"')
    kind, tokens = data["kind"], data["tokens"]
    if tokens is None and model["readout_token"] != "last":
        raise ConfigError(f"model.readout_token = {fmt(model['readout_token'])}: only used with "
                          "sequence data (data.tokens); these data are vectors")
    if tokens is not None and isinstance(model["readout_token"], int) \
            and model["readout_token"] >= tokens:
        raise ConfigError(f"model.readout_token = {model['readout_token']}: out of range; a "
                          f"sequence of data.tokens = {tokens} tokens has indices 0..{tokens - 1}")
    if kind in ("teacher", "teacher_transformer") and (
            model["embedding"], model["readout"]) != ("pad", "coordinates"):
        name, value = (("embedding", model["embedding"]) if model["embedding"] != "pad"
                       else ("readout", model["readout"]))
        raise ConfigError(f"model.{name} = {fmt(value)}: teacher data need model.embedding = "
                          '"pad" and model.readout = "coordinates" (the teacher network has no '
                          'random maps); use data.kind = "gaussian" or another data set')
    k = resolve_block(model, solver, init, tokens=tokens).k
    if not model["params"]:
        del model["params"]  # stored only for blocks that take parameters
    return k


def _resolve_init(init: dict, solver: dict, k: int) -> None:
    """[init]: per-coordinate lists have k entries; kind-specific keys; symmetric pairs."""
    for name in ("mean", "std", "low", "high"):
        if init[name] is not None:
            _per_coord_len(f"init.{name}", init[name], k)
    if init["kind"] == "uniform" and init["low"] is not None and init["high"] is not None:
        lo = np.broadcast_to(np.asarray(init["low"]), (k,))
        hi = np.broadcast_to(np.asarray(init["high"]), (k,))
        if np.any(hi < lo):
            raise ConfigError(f"init.high = {fmt(init['high'])}: must be >= init.low = "
                              f"{fmt(init['low'])} in every coordinate")
    if init["symmetric"]:
        if solver["kind"] == "grid":
            raise ConfigError('init.symmetric = true: particles only (solver.kind is "grid"; '
                              "a density symmetric under theta -> R theta is set through init.mean)")
        if init["kind"] == "file":
            raise ConfigError('init.symmetric = true: not used with init.kind = "file" (the file '
                              "gives every particle)")
        if solver["M"] % 2:
            raise ConfigError(f"init.symmetric = true: needs an even solver.M (pairs theta, "
                              f"R theta); solver.M is {solver['M']}")
    for name in ("low", "high"):
        if init[name] is not None and init["kind"] != "uniform":
            raise ConfigError(f"init.{name} = {fmt(init[name])}: only used with "
                              f'init.kind = "uniform" (init.kind is {fmt(init["kind"])})')
    if init["kind"] == "file":
        if init["path"] is None and solver["kind"] == "grid":
            raise ConfigError('init.path is missing: init.kind = "file" needs a .npz or .h5 file '
                              "with an array rho of shape (n_t, *cells) for the grid solver")
        if init["path"] is None:
            raise ConfigError('init.path is missing: init.kind = "file" needs a .npz or .h5 file '
                              f"with an array theta of shape (L, M, k) = "
                              f"({solver['L']}, {solver['M']}, {k})")
        init["path"] = os.path.abspath(os.path.expanduser(init["path"]))
    elif init["path"] is not None:
        raise ConfigError(f"init.path = {fmt(init['path'])}: only used with "
                          f'init.kind = "file" (init.kind is {fmt(init["kind"])})')


def _resolve_solver(raw: dict, solver: dict, init: dict, train: dict, k: int,
                    given: set) -> None:
    """[solver]: the grid's own rules (``resolve_grid_config``) or no [solver.grid]."""
    grid_keys = SUBTABLES[("solver", "grid")]
    if solver["kind"] == "grid":
        raw_grid = raw.get("solver", {}).get("grid", {})
        solver.setdefault("grid", {name: spec.default for name, spec in grid_keys.items()})
        given_grid = {n for n in raw_grid if solver["grid"].get(n) != grid_keys[n].default}
        resolve_grid_config(solver, init, train, k=k, given_solver=given, given_grid=given_grid)
    elif "grid" in solver:
        raise ConfigError(f"solver.grid = {fmt(raw['solver']['grid'])}: only used with "
                          f'solver.kind = "grid" (solver.kind is {fmt(solver["kind"])})')


def _resolve_train(cfg: dict, train: dict, solver: dict, given: set) -> None:
    """[train]: method-dependent keys, block reordering, step and record counts."""
    if train["temperature"] > 0 and train["method"] == "adaptive":
        raise ConfigError(f"train.temperature = {train['temperature']!r}: needs train.method = "
                          '"euler" or "heun" (adaptive integration is deterministic only)')
    study = cfg.get("compare", {}).get("reorder", [])
    if train["reorder"] == "none" and "reorder_every" in given and not study:
        raise ConfigError(f"train.reorder_every = {train['reorder_every']}: only used with "
                          'train.reorder = "random" or "sort" (or a [compare] reorder study); '
                          'train.reorder is "none"')
    if train["reorder"] != "none" and solver["kind"] == "grid":
        raise ConfigError(f"train.reorder = {fmt(train['reorder'])}: block reordering is for "
                          'particles (solver.kind is "grid"); allowed with the grid is "none"')
    if train["reorder"] != "none" and train["method"] == "adaptive":
        fixed = ", ".join(f'"{name}"' for name in STEPPERS)
        raise ConfigError(f"train.reorder = {fmt(train['reorder'])}: needs fixed steps "
                          f'(train.method = {fixed}), not "adaptive"')
    if "compare" in cfg:
        for name in OPTIMIZER_KEYS:
            if name in cfg["compare"]:
                sub = cfg["compare"][name]
                for key, spec in OPTIMIZER_KEYS[name].items():
                    sub.setdefault(key, spec.default)
    n_steps = train["time"] / train["dt"]
    if n_steps > MAX_STEPS:
        raise ConfigError(f"train.dt = {train['dt']!r}: train.time / train.dt = {n_steps:.3g} steps; "
                          f"at most {MAX_STEPS:.0e} are allowed")
    if n_steps / train["record_every"] > MAX_RECORDS:
        raise ConfigError(f"train.record_every = {train['record_every']}: gives "
                          f"{n_steps / train['record_every']:.3g} history records; at most "
                          f"{MAX_RECORDS:.0e} are allowed (increase train.record_every)")
    if train["snapshots"] > MAX_RECORDS:
        raise ConfigError(f"train.snapshots = {train['snapshots']}: at most {MAX_RECORDS:.0e}")


def load_config(path, overrides=(), rerun: bool = True) -> dict:
    """Read, override, validate and resolve a config file (see the module docstring).

    Args:
        path: the TOML file.
        overrides: ``"section.key=value"`` strings (the value is parsed as a TOML
            value, or taken as a string if it does not parse) or
            ``("section.key", value)`` pairs (value used as is).
        rerun: the config is to be run (refuse an output path that is the input file,
            as ``wflow run RUN.h5`` without ``-o`` would give); False to only read it.

    Returns:
        The resolved config: every section with every key, defaults filled in,
        ``model.dim``/``data.dim`` resolved, paths absolute (``None`` where a
        key does not apply).

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """
    path = os.fspath(path)
    raw = _read_source(path)
    base = os.path.dirname(os.path.abspath(path))
    for section, key in PATH_KEYS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key].strip():
            p = os.path.expanduser(table[key])
            table[key] = p if os.path.isabs(p) else os.path.join(base, p)
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("feature"), str):
        model["feature"] = resolve_block_path(model["feature"], base)
    for item in overrides:
        parts, value = parse_override(item)
        _apply_override(raw, parts, value)
    stem = os.path.splitext(os.path.basename(path))[0]
    config = _resolve(raw, stem)
    out = config["output"]["path"]
    if rerun and os.path.exists(out) and os.path.samefile(out, path):
        raise ConfigError(f"output.path = {out!r}: is the file whose stored config is rerun; "
                          "give a new file with -o NEW.h5")
    return config


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _read_source(path: str) -> dict:
    """The raw config of a TOML file, or the config stored in a wflow HDF5 file (run, study or
    compare file: its ``config`` attribute, the resolved config it was made with), less its
    output path (the rerun's output is ``-o`` or runs/<file stem>.h5, never the file itself)."""
    try:  # only a regular file is opened (a FIFO would block): read_toml names the rest
        with open(path, "rb") if stat.S_ISREG(os.stat(path).st_mode) else nullcontext() as fh:
            hdf5 = fh is not None and fh.read(8) == HDF5_SIGNATURE
    except OSError:
        hdf5 = False
    if not hdf5:
        return read_toml(path)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fmt_, text = f.attrs.get("format"), f.attrs.get("config")
    except (OSError, ValueError) as e:
        raise ConfigError(f"config file {path!r}: not a readable HDF5 file ({e})") from None
    fmt_ = fmt_.decode() if isinstance(fmt_, bytes) else fmt_
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if not (isinstance(fmt_, str) and fmt_.startswith("wflow-") and isinstance(text, str)):
        raise ConfigError(f"config file {path!r}: an HDF5 file that is not a wflow run, study or "
                          "compare file (no format and config attributes)")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r}: its stored config is not valid TOML ({e})") \
            from None
    if isinstance(raw.get("output"), dict):
        raw["output"].pop("path", None)
    return raw


def config_warnings(config: dict) -> list[str]:
    """One-line warnings about valid but questionable settings."""
    out = []
    if config["model"]["feature"] == "neuron" and config["model"]["activation"] == "relu":
        out.append('model.activation = "relu" is outside the mean-field theory (it is not '
                   'smooth); results may not converge; "smooth_relu" is the smooth version')
    return out + grid_config_warnings(config)

