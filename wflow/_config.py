"""Run configuration: TOML files -> a validated, fully resolved dict -> run objects.

The keys: docs/configuration.md, "Configuration reference".

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

Schema (defaults in brackets)::

    seed = 0                                    int >= 0
    [data]   kind ["teacher"] | "sine" | "circles" | "file" | "digits" | "gaussian"
             n [256]; dim [2] (d_in; 2 for circles, 64 for digits, read from the file);
             out_dim [1] (teacher, gaussian); noise [0.0]; path (kind = "file");
             teacher_width [4]; teacher_depth [4]; teacher_std [1.0];
             classes (digits only) [0..9]; test_n [0] (held-out samples)
    [model]  feature ["neuron"] | "linear"; activation ["tanh"]; bias [true];
             dim (state d) [d_in]; sharpness [10.0] (smooth_relu); scale [1.0] (alpha)
             embedding ["pad"] | "random"; readout ["coordinates"] | "random"
    [init]   kind ["gaussian"] | "uniform" | "point" | "file"; mean [0.0]; std [1.0]
             (scalars or lists of k values); low, high (uniform); path (kind = "file");
             symmetric [false] (pairs theta, R theta: zero field at s = 0; M even)
    [solver] kind ["particles"] | "grid" (Eulerian finite volumes, k <= 3; rules in _grid/);
             depth ["layers"] | "continuous"; L [16]; M [64]; adjoint ["checkpoint"] |
             "backsolve"; ode_solver ["tsit5"]; rtol [1e-5]; atol [1e-7];
             precision ["float32"] | "float64"; devices [all visible devices of the
             default backend]; shard ["auto"] | "data" | "particles"; tile [2^18 on CPUs, 2^24 else]
             (largest (N, M) block of one field call, elements; see _sharding.py, _features.py)
             [solver.grid] (kind = "grid" only) cells [32]; bounds [[-4.0, 4.0]];
             scheme ["muscl"] | "upwind"; limiter ["vanleer"] | "minmod" | "mc" (muscl only;
             the registry LIMITERS);
             cfl [0.4]
    [train]  time [10.0]; dt [0.01]; method ["euler"] | "heun" | "ssprk3" | "ssprk43" |
             "adaptive" (the registry STEPPERS, and diffrax); l2 [0.0];
             l2_schedule ["constant"] | "inverse" | "exponential"; l2_decay [1.0];
             temperature [0.0]; record_every [10]; snapshots [5]; rtol [1e-4];
             atol [1e-6]; divergence_factor [1e6]; on_increase ["warn"] | "stop";
             reorder ["none"] | "random" | "sort"; reorder_every [10] (block reordering)
    [output] path ["runs/<config file stem>.h5", relative to the current directory];
             overwrite [false]; checkpoint_every [10.0] (seconds between checkpoints, 0 = every
             record; see _io)
    [study]  keys of ``wflow study limit`` / ``wflow study zero-loss`` (``wflow.study``):
             L, M, dims, seeds, times, metrics, sampling, reference, reference_M,
             reference_L, reference_dim, reference_depth, bootstrap, memory,
             sinkhorn_epsilon; inits, box,
             box_points, tail_radius; [study.grid] (the keys of [solver.grid]: the grid of
             study.reference = "grid"). Defaults (None here) and the cross-key rules belong to
             the study verbs (``wflow/study/_keys.py``); ``wflow run`` ignores the section.
             The resolved config holds [study] only when the file (or --set) has one.

Verb sections (``VERB_SECTIONS``): validated when present, absent from the
resolved config otherwise, accepted by every verb (so ``wflow run`` runs the
mean-field part of a comparison config):

    [compare] optimizers; records; scales; reorder; seeds;
              [compare.sgd] [compare.momentum] [compare.adam] [compare.minibatch]
              (keys and defaults in ``_compare``)

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
    numbers_key,
    parse_override,
    path_key,
    read_toml,
    table_key,
    to_toml,
    unknown_key,
)
from ._sharding import SHARD_MODES
from ._steppers import METHODS, STEPPERS
from .study._metrics import STUDY_METRICS as _STUDY_METRIC_REGISTRY

__all__ = ["ConfigError", "config_warnings", "load_config", "to_toml"]


GRID_SCHEMES = ("upwind", "muscl")
EMBEDDINGS = ("pad", "random")
READOUTS = ("coordinates", "random")
STUDY_METRICS = tuple(_STUDY_METRIC_REGISTRY)  # wflow/study/_metrics: one file per metric
STUDY_SAMPLINGS = ("iid", "shared")
STUDY_REFERENCES = ("continuous", "particles", "grid")
STUDY_INITS = ("point", "gaussian", "uniform")
PRECISIONS = ("float32", "float64")
SOLVER_KINDS = ("particles", "grid")

# Section -> key -> Key. Order here is the order of the resolved config / stored TOML.
SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "kind": choice_key("teacher", DATASETS),
        "n": int_key(256, 1),
        "dim": int_key(2, 1),
        "out_dim": int_key(1, 1),
        "noise": float_key(0.0, 0.0),
        "path": path_key(),
        "teacher_width": int_key(4, 1),
        "teacher_depth": int_key(4, 1),
        "teacher_std": float_key(1.0, 0.0),
        "classes": digits_key(),
        "test_n": int_key(0, 0),
    },
    "model": {
        "feature": block_key("neuron", FEATURES),
        "activation": choice_key("tanh", ACTIVATIONS),
        "bias": bool_key(True),
        "dim": int_key(None, 1),
        "sharpness": float_key(10.0, 0.0, strict=True),
        "scale": float_key(1.0, 0.0, strict=True),
        "embedding": choice_key("pad", EMBEDDINGS),
        "readout": choice_key("coordinates", READOUTS),
        "params": table_key(),
    },
    "init": {
        "kind": choice_key("gaussian", INIT_KINDS),
        "mean": numbers_key(0.0),
        "std": numbers_key(1.0, lo=0.0),
        "low": numbers_key(None),
        "high": numbers_key(None),
        "path": path_key(),
        "symmetric": bool_key(False),
    },
    "solver": {
        "kind": choice_key("particles", SOLVER_KINDS),
        "depth": choice_key("layers", DEPTHS),
        "L": int_key(16, 1),
        "M": int_key(64, 1),
        "adjoint": choice_key("checkpoint", ADJOINTS),
        "ode_solver": choice_key("tsit5", tuple(ODE_SOLVERS)),
        "rtol": float_key(1e-5, 0.0, strict=True),
        "atol": float_key(1e-7, 0.0, strict=True),
        "precision": choice_key("float32", PRECISIONS),
        "devices": int_key(None, 1),
        "shard": choice_key("auto", SHARD_MODES),
        "tile": int_key(None, 1),
    },
    "train": {
        "time": float_key(10.0, 0.0, strict=True),
        "dt": float_key(0.01, 0.0, strict=True),
        "method": choice_key("euler", METHODS),
        "l2": float_key(0.0, 0.0),
        "l2_schedule": choice_key("constant", L2_SCHEDULES),
        "l2_decay": float_key(1.0, 0.0, strict=True),
        "temperature": float_key(0.0, 0.0),
        "record_every": int_key(10, 1),
        "snapshots": int_key(5, 2),
        "rtol": float_key(1e-4, 0.0, strict=True),
        "atol": float_key(1e-6, 0.0, strict=True),
        "divergence_factor": float_key(1e6, 1.0, strict=True),
        "on_increase": choice_key("warn", ON_INCREASE),
        "reorder": choice_key("none", REORDERS),
        "reorder_every": int_key(10, 1),
    },
    "output": {
        "path": path_key(),
        "overwrite": bool_key(False),
        "checkpoint_every": float_key(10.0, 0.0),
    },
    # Defaults are filled in (and the cross-key rules checked) by the study verbs.
    "study": {
        "L": ints_key(None, 1),
        "M": ints_key(None, 1),
        "dims": ints_key(None, 1),
        "seeds": int_key(None, 1),
        "times": numbers_key(None, lo=0.0),
        "metrics": choices_key(None, STUDY_METRICS),
        "sampling": choice_key(None, STUDY_SAMPLINGS),
        "reference": choice_key(None, STUDY_REFERENCES),
        "reference_M": int_key(None, 1),
        "reference_L": int_key(None, 1),
        "reference_dim": int_key(None, 1),
        "reference_depth": choice_key(None, DEPTHS),
        "bootstrap": int_key(None, 0),
        "memory": float_key(None, 0.0, strict=True),
        "sinkhorn_epsilon": float_key(None, 0.0, strict=True),
        "inits": choices_key(None, STUDY_INITS),
        "box": float_key(None, 0.0, strict=True),
        "box_points": int_key(None, 1),
        "tail_radius": float_key(None, 0.0, strict=True),
    },
}
# Sections of a verb: validated when present, absent from the resolved config otherwise.
VERB_SECTIONS: dict[str, dict[str, Key]] = {
    "compare": COMPARE_KEYS,
}
# Sub-tables: (section, name) -> keys. Only meaningful for solver.kind = "grid".
SUBTABLES: dict[tuple[str, str], dict[str, Key]] = {
    ("solver", "grid"): {
        "cells": cells_key(32),
        "bounds": bounds_key([-4.0, 4.0]),
        "scheme": choice_key("muscl", SCHEMES),
        "limiter": choice_key("vanleer", LIMITERS),
        "cfl": float_key(DEFAULT_CFL, 0.0, strict=True),
    },
    **{("compare", name): keys for name, keys in OPTIMIZER_KEYS.items()},
}
# The grid of a study's grid reference (study.reference = "grid", wflow/study/_keys.py).
SUBTABLES[("study", "grid")] = SUBTABLES[("solver", "grid")]
TOP_KEYS = {"seed": int_key(0, 0, 2**32 - 1)}
PATH_KEYS = (("data", "path"), ("init", "path"))

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
    k = _resolve_model(model, solver, init, data["kind"], d_in, d_out)
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
        n_file, d_in = x.shape
        d_out = y.shape[1]
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
            d_out = data["out_dim"] if kind in ("teacher", "gaussian") else 1
    if data["classes"] is not None and kind != "digits":
        raise ConfigError(f"data.classes = {fmt(data['classes'])}: only used with "
                          f'data.kind = "digits" (data.kind is {fmt(kind)})')
    if ("out_dim" in given and kind not in ("teacher", "gaussian")
            and data["out_dim"] != d_out):
        raise ConfigError(f"data.out_dim = {data['out_dim']}: only teacher and gaussian data set "
                          "d_out; "
                          f"{kind} data has d_out = {d_out}")
    data["out_dim"] = d_out
    return d_in, d_out


def _resolve_model(model: dict, solver: dict, init: dict, kind: str, d_in: int,
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
    if kind == "teacher" and (model["embedding"], model["readout"]) != ("pad", "coordinates"):
        name, value = (("embedding", model["embedding"]) if model["embedding"] != "pad"
                       else ("readout", model["readout"]))
        raise ConfigError(f"model.{name} = {fmt(value)}: teacher data need model.embedding = "
                          '"pad" and model.readout = "coordinates" (the teacher network has no '
                          'random maps); use data.kind = "gaussian" or another data set')
    k = resolve_block(model, solver, init).k
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


def load_config(path, overrides=()) -> dict:
    """Read, override, validate and resolve a config file (see the module docstring).

    Args:
        path: the TOML file.
        overrides: ``"section.key=value"`` strings (the value is parsed as a TOML
            value, or taken as a string if it does not parse) or
            ``("section.key", value)`` pairs (value used as is).

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
    if os.path.exists(out) and os.path.samefile(out, path):
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

