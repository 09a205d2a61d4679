"""Run configuration: TOML files (SPEC §3) -> a validated, fully resolved dict -> run objects.

``load_config(path, overrides)`` reads a TOML file with ``tomllib``, applies
``--set section.key=value`` overrides, checks every key against the schema
below (type, range, allowed values, cross-key consistency) and fills in the
defaults, so the returned dict names every setting the run uses. It is what
the run file stores (as TOML text, ``to_toml``) and what ``--resume``
compares. ``build_run(config)`` turns it into the library objects (problem,
depth discretization, schedule, regularization, initial particles, Langevin
key), reading data and init files on the way.

Every problem raises ``ConfigError`` with one line of the form
``<key> = <value>: <what is allowed>``; the CLI prints it and exits with 2.

Schema (defaults in brackets)::

    seed = 0                                    int >= 0
    [data]   kind ["teacher"] | "sine" | "circles" | "file" | "digits"
             n [256]; dim [2] (d_in; 2 for circles, 64 for digits, read from the file);
             out_dim [1] (teacher only); noise [0.0]; path (kind = "file");
             teacher_width [4]; teacher_depth [4]; teacher_std [1.0];
             classes (digits only) [0..9]
    [model]  feature ["neuron"] | "linear"; activation ["tanh"]; bias [true];
             dim (state d) [d_in]; sharpness [10.0] (smooth_relu)
    [init]   kind ["gaussian"] | "uniform" | "point" | "file"; mean [0.0]; std [1.0]
             (scalars or lists of k values); low, high (uniform); path (kind = "file")
    [solver] kind ["particles"] | "grid" (not implemented in this version);
             depth ["layers"] | "continuous"; L [16]; M [64]; adjoint ["checkpoint"] |
             "backsolve"; ode_solver ["tsit5"]; rtol [1e-5]; atol [1e-7];
             precision ["float32"] | "float64"
             [solver.grid] cells [32]; bounds [[-3.0, 3.0]]; scheme ["muscl"]; cfl [0.5]
    [train]  time [10.0]; dt [0.01]; method ["euler"] | "heun" | "adaptive"; l2 [0.0];
             l2_schedule ["constant"] | "inverse" | "exponential"; l2_decay [1.0];
             temperature [0.0]; record_every [10]; snapshots [5]; rtol [1e-4];
             atol [1e-6]; divergence_factor [1e6]
    [output] path ["runs/<config file stem>.h5", relative to the current directory];
             overwrite [false]

Relative ``data.path`` / ``init.path`` in a config file are taken relative to
the directory of that file (so a config and its data travel together); given
with ``--set`` they are relative to the current directory. The resolved config
stores them as absolute paths.

Seeds: the dataset uses ``seed``; the initial particles use
``fold_in(PRNGKey(seed), 1)``; the Langevin noise ``fold_in(PRNGKey(seed), 2)``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import ACTIVATIONS
from ._data import DATASETS, DataError, make_dataset
from ._depth import (
    ADJOINTS,
    DEPTHS,
    ODE_SOLVERS,
    ContinuousDepth,
    DepthDiscretization,
    LayeredDepth,
)
from ._features import FEATURES, make_feature
from ._integrate import L2_SCHEDULES, METHODS, Regularization, Schedule
from ._measures import MEASURES, init_particles
from ._problem import Problem

__all__ = ["ConfigError", "RunSetup", "build_run", "load_config", "to_toml"]


class ConfigError(ValueError):
    """A bad configuration; the one-line message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    """A value as it would be written in TOML (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite float {value} as TOML")
        return repr(value)  # shortest round-tripping form; always has '.' or 'e'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)  # JSON escapes are valid TOML escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: dict) -> str:
    """Serialize a (resolved) config dict as TOML text; ``None`` values are omitted.

    Handles what configs hold: top-level scalars, tables of scalars/lists and
    one level of sub-tables (``[solver.grid]``). ``tomllib.loads(to_toml(c))``
    gives ``c`` back (without the ``None`` entries).
    """
    lines = []

    def scalars(table: dict):
        for k, v in table.items():
            if v is not None and not isinstance(v, dict):
                lines.append(f"{k} = {_toml_value(v)}")

    def tables(table: dict, prefix: str):
        for k, v in table.items():
            if isinstance(v, dict):
                name = f"{prefix}{k}"
                lines.append("")
                lines.append(f"[{name}]")
                scalars(v)
                tables(v, name + ".")

    scalars(config)
    tables(config, "")
    return "\n".join(lines).lstrip("\n") + "\n"


# ----------------------------------------------------------------------------- key types


@dataclass(frozen=True)
class _Key:
    """One config key: default, a checker returning the normalized value, its description."""

    default: Any
    check: Callable[[str, Any], Any]


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {_fmt(value)}: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(default, lo: int = 0, hi: int | None = None) -> _Key:
    allowed = (f"must be an integer >= {lo}" if hi is None
               else f"must be an integer in [{lo}, {hi}]")

    def check(key, v):
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise _bad(key, v, allowed)
        return int(v)

    return _Key(default, check)


def _float(default, lo: float | None = None, strict: bool = False,
           hi: float | None = None) -> _Key:
    if lo is None:
        allowed = "must be a finite number"
    elif hi is not None:
        allowed = f"must be a finite number in ({lo}, {hi}]" if strict else \
            f"must be a finite number in [{lo}, {hi}]"
    else:
        allowed = f"must be a finite number {'>' if strict else '>='} {lo:g}"

    def check(key, v):
        if not _is_num(v) or not math.isfinite(v):
            raise _bad(key, v, allowed)
        v = float(v)
        if lo is not None and (v < lo or (strict and v == lo)):
            raise _bad(key, v, allowed)
        if hi is not None and v > hi:
            raise _bad(key, v, allowed)
        return v

    return _Key(default, check)


def _bool(default) -> _Key:
    def check(key, v):
        if not isinstance(v, bool):
            raise _bad(key, v, "must be true or false")
        return v

    return _Key(default, check)


def _choice(default, choices) -> _Key:
    choices = tuple(choices)
    allowed = "allowed are " + ", ".join(json.dumps(c) for c in choices)

    def check(key, v):
        if not isinstance(v, str) or v not in choices:
            raise _bad(key, v, allowed)
        return v

    return _Key(default, check)


def _path(default=None) -> _Key:
    def check(key, v):
        if not isinstance(v, str) or not v.strip():
            raise _bad(key, v, "must be a non-empty string (a file path)")
        return v

    return _Key(default, check)


def _numbers(default, lo: float | None = None) -> _Key:
    """A finite number or a non-empty list of finite numbers (one per coordinate)."""
    what = "a finite number" if lo is None else f"a finite number >= {lo:g}"
    allowed = f"must be {what} or a list of such numbers (one per coordinate)"

    def ok(x):
        return _is_num(x) and math.isfinite(x) and (lo is None or x >= lo)

    def check(key, v):
        if ok(v):
            return float(v)
        if isinstance(v, list) and v and all(ok(x) for x in v):
            return [float(x) for x in v]
        raise _bad(key, v, allowed)

    return _Key(default, check)


def _digits(default=None) -> _Key:
    allowed = "must be a list of at least 2 distinct digits in 0..9"

    def check(key, v):
        if (not isinstance(v, list) or len(v) < 2 or not all(_is_int(c) and 0 <= c <= 9 for c in v)
                or len(set(v)) != len(v)):
            raise _bad(key, v, allowed)
        return [int(c) for c in v]

    return _Key(default, check)


def _cells(default) -> _Key:
    allowed = "must be an integer >= 2 or a list of 1 to 3 such integers (one per axis)"

    def check(key, v):
        if _is_int(v) and v >= 2:
            return int(v)
        if isinstance(v, list) and 1 <= len(v) <= 3 and all(_is_int(c) and c >= 2 for c in v):
            return [int(c) for c in v]
        raise _bad(key, v, allowed)

    return _Key(default, check)


def _bounds(default) -> _Key:
    allowed = "must be [low, high] with finite low < high, or a list of such pairs (one per axis)"

    def pair(p):
        return (isinstance(p, list) and len(p) == 2 and all(_is_num(x) and math.isfinite(x) for x in p)
                and p[0] < p[1])

    def check(key, v):
        if pair(v):
            return [float(v[0]), float(v[1])]
        if isinstance(v, list) and 1 <= len(v) <= 3 and all(pair(p) for p in v):
            return [[float(p[0]), float(p[1])] for p in v]
        raise _bad(key, v, allowed)

    return _Key(default, check)


GRID_SCHEMES = ("upwind", "muscl")
PRECISIONS = ("float32", "float64")
SOLVER_KINDS = ("particles", "grid")

# Section -> key -> _Key. Order here is the order of the resolved config / stored TOML.
SCHEMA: dict[str, dict[str, _Key]] = {
    "data": {
        "kind": _choice("teacher", DATASETS),
        "n": _int(256, 1),
        "dim": _int(2, 1),
        "out_dim": _int(1, 1),
        "noise": _float(0.0, 0.0),
        "path": _path(),
        "teacher_width": _int(4, 1),
        "teacher_depth": _int(4, 1),
        "teacher_std": _float(1.0, 0.0),
        "classes": _digits(),
    },
    "model": {
        "feature": _choice("neuron", FEATURES),
        "activation": _choice("tanh", ACTIVATIONS),
        "bias": _bool(True),
        "dim": _int(None, 1),
        "sharpness": _float(10.0, 0.0, strict=True),
    },
    "init": {
        "kind": _choice("gaussian", MEASURES),
        "mean": _numbers(0.0),
        "std": _numbers(1.0, lo=0.0),
        "low": _numbers(None),
        "high": _numbers(None),
        "path": _path(),
    },
    "solver": {
        "kind": _choice("particles", SOLVER_KINDS),
        "depth": _choice("layers", DEPTHS),
        "L": _int(16, 1),
        "M": _int(64, 1),
        "adjoint": _choice("checkpoint", ADJOINTS),
        "ode_solver": _choice("tsit5", tuple(ODE_SOLVERS)),
        "rtol": _float(1e-5, 0.0, strict=True),
        "atol": _float(1e-7, 0.0, strict=True),
        "precision": _choice("float32", PRECISIONS),
    },
    "train": {
        "time": _float(10.0, 0.0, strict=True),
        "dt": _float(0.01, 0.0, strict=True),
        "method": _choice("euler", METHODS),
        "l2": _float(0.0, 0.0),
        "l2_schedule": _choice("constant", L2_SCHEDULES),
        "l2_decay": _float(1.0, 0.0, strict=True),
        "temperature": _float(0.0, 0.0),
        "record_every": _int(10, 1),
        "snapshots": _int(5, 2),
        "rtol": _float(1e-4, 0.0, strict=True),
        "atol": _float(1e-6, 0.0, strict=True),
        "divergence_factor": _float(1e6, 1.0, strict=True),
    },
    "output": {
        "path": _path(),
        "overwrite": _bool(False),
    },
}
# Sub-tables: (section, name) -> keys. Only meaningful for solver.kind = "grid".
SUBTABLES: dict[tuple[str, str], dict[str, _Key]] = {
    ("solver", "grid"): {
        "cells": _cells(32),
        "bounds": _bounds([-3.0, 3.0]),
        "scheme": _choice("muscl", GRID_SCHEMES),
        "cfl": _float(0.5, 0.0, strict=True, hi=1.0),
    },
}
TOP_KEYS = {"seed": _int(0, 0, 2**32 - 1)}
PATH_KEYS = (("data", "path"), ("init", "path"))

MAX_STEPS = 10**9
MAX_RECORDS = 10**6


def _unknown(full: str, value: Any, options: list[str], where: str) -> ConfigError:
    prefix, _, name = full.rpartition(".")
    close = difflib.get_close_matches(name, [o for o in options if not o.startswith("[")], n=1,
                                      cutoff=0.6)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"{full} = {_fmt(value)}: unknown key{hint}; allowed {where}: "
                       + ", ".join(options))


# ----------------------------------------------------------------------------- reading


def _read_toml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r}: file not found")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r}: is a directory, expected a .toml file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config file {path!r}: cannot be read ({e.strerror})") from None


def _parse_override(item) -> tuple[list[str], Any]:
    """'section.key=value' -> (['section', 'key'], value); the value is TOML or else a string."""
    if isinstance(item, tuple):
        name, value = item
        return name.split("."), value
    text = str(item)
    name, sep, raw = text.partition("=")
    name = name.strip()
    parts = name.split(".")
    if not sep or not name or not all(p.strip() and p.strip() == p for p in parts):
        raise ConfigError(f"--set {text!r}: must look like section.key=value "
                          "(e.g. --set solver.L=32)")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # not a TOML value: take it as a string (paths, names)
    return parts, value


def _apply_override(raw: dict, parts: list[str], value: Any) -> None:
    full = ".".join(parts)
    if len(parts) == 1:
        if parts[0] not in TOP_KEYS:
            opts = list(TOP_KEYS) + [f"{s}.<key>" for s in SCHEMA]
            raise _unknown(full, value, opts, "at the top level")
        raw[parts[0]] = value
        return
    section = parts[0]
    if section not in SCHEMA:
        raise _unknown_section(section, value, full)
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{section} = {_fmt(table)}: must be a table ([{section}])")
    if len(parts) == 3 and (section, parts[1]) in SUBTABLES:
        sub = table.setdefault(parts[1], {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{section}.{parts[1]} = {_fmt(sub)}: must be a table "
                              f"([{section}.{parts[1]}])")
        if parts[2] not in SUBTABLES[(section, parts[1])]:
            raise _unknown(full, value, list(SUBTABLES[(section, parts[1])]),
                           f"in [{section}.{parts[1]}]")
        sub[parts[2]] = value
        return
    if len(parts) != 2 or parts[1] not in SCHEMA[section]:
        raise _unknown(full, value, _section_options(section), f"in [{section}]")
    table[parts[1]] = value


def _section_options(section: str) -> list[str]:
    return list(SCHEMA[section]) + [f"[{section}.{n}]" for (s, n) in SUBTABLES if s == section]


def _unknown_section(name: str, value: Any, full: str | None = None) -> ConfigError:
    options = list(TOP_KEYS) + list(SCHEMA)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = ""
    if close:
        hint = f" (did you mean {'[' + close[0] + ']' if close[0] in SCHEMA else close[0]}?)"
    allowed = ", ".join(list(TOP_KEYS) + [f"[{s}]" for s in SCHEMA])
    if full is not None:
        shown = f"{full} = {_fmt(value)}"
    elif isinstance(value, dict):
        shown = f"[{name}]"
    else:
        shown = f"{name} = {_fmt(value)}"
    return ConfigError(f"{shown}: unknown section{hint}; allowed at the top level: {allowed}")


# ----------------------------------------------------------------------------- resolving


def _check_table(section: str, table: Any, keys: dict[str, _Key], subtables: dict) -> tuple[dict, set]:
    if not isinstance(table, dict):
        raise ConfigError(f"{section} = {_fmt(table)}: must be a table ([{section}])")
    out, given = {}, set()
    for name, value in table.items():
        full = f"{section}.{name}"
        if name in keys:
            out[name] = keys[name].check(full, value)
            given.add(name)
        elif name in subtables:
            sub, _ = _check_table(full, value, subtables[name], {})
            out[name] = sub
            given.add(name)
        else:
            raise _unknown(full, value, list(keys) + [f"[{section}.{n}]" for n in subtables],
                           f"in [{section}]")
    resolved = {}
    for name, spec in keys.items():
        resolved[name] = out.get(name, spec.default)
    for name in subtables:
        if name in out:
            resolved[name] = out[name]
    return resolved, given


def _feature_k(feature: str, d: int, bias: bool) -> int:
    return d * d if feature == "linear" else 2 * d + (1 if bias else 0)


def _per_coord_len(key: str, value, k: int) -> None:
    if isinstance(value, list) and len(value) != k:
        raise ConfigError(f"{key} = {_fmt(value)}: give a scalar or a list of k = {k} values "
                          f"(k = {len(value)} was given)")


def _resolve(raw: dict, stem: str) -> dict:
    for name, value in raw.items():
        if name not in TOP_KEYS and name not in SCHEMA:
            raise _unknown_section(name, value)
    cfg: dict[str, Any] = {}
    given: dict[str, set] = {}
    cfg["seed"] = TOP_KEYS["seed"].check("seed", raw["seed"]) if "seed" in raw else 0
    for section, keys in SCHEMA.items():
        subs = {n: v for (s, n), v in SUBTABLES.items() if s == section}
        cfg[section], given[section] = _check_table(section, raw.get(section, {}), keys, subs)

    data, model, init, solver, train, output = (cfg[s] for s in SCHEMA)

    # --- data: d_in and d_out
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
        if "dim" in given["data"] and data["dim"] != d_in:
            raise ConfigError(f"data.dim = {data['dim']}: the file data.path has x of shape "
                              f"{x.shape}, so d_in = {d_in} (leave data.dim out for file data)")
        if "n" in given["data"] and data["n"] != n_file:
            raise ConfigError(f"data.n = {data['n']}: the file data.path holds {n_file} samples "
                              "(leave data.n out for file data)")
        data["dim"], data["n"] = d_in, n_file
    else:
        if data["path"] is not None:
            raise ConfigError(f"data.path = {_fmt(data['path'])}: only used with "
                              f'data.kind = "file" (data.kind is {_fmt(kind)})')
        fixed = {"circles": 2, "digits": 64}.get(kind)
        if fixed is not None:
            if "dim" in given["data"] and data["dim"] != fixed:
                raise ConfigError(f"data.dim = {data['dim']}: {kind} data has d_in = {fixed}")
            data["dim"] = fixed
        d_in = data["dim"]
        if kind == "digits":
            if data["classes"] is None:
                data["classes"] = list(range(10))
            d_out = 1 if len(data["classes"]) == 2 else len(data["classes"])
        else:
            d_out = data["out_dim"] if kind == "teacher" else 1
    if data["classes"] is not None and kind != "digits":
        raise ConfigError(f"data.classes = {_fmt(data['classes'])}: only used with "
                          f'data.kind = "digits" (data.kind is {_fmt(kind)})')
    if "out_dim" in given["data"] and kind != "teacher" and data["out_dim"] != d_out:
        raise ConfigError(f"data.out_dim = {data['out_dim']}: only the teacher data sets d_out; "
                          f"{kind} data has d_out = {d_out}")
    data["out_dim"] = d_out

    # --- model: state dimension d >= d_in, d_out
    if model["dim"] is None:
        model["dim"] = max(d_in, d_out)
    d = model["dim"]
    if d < d_in:
        raise ConfigError(f"model.dim = {d}: must be >= the input dimension d_in = {d_in} "
                          "(data.dim)")
    if d < d_out:
        raise ConfigError(f"model.dim = {d}: must be >= the output dimension d_out = {d_out}")
    k = _feature_k(model["feature"], d, model["bias"])

    # --- init: per-coordinate lists have k entries
    for name in ("mean", "std", "low", "high"):
        if init[name] is not None:
            _per_coord_len(f"init.{name}", init[name], k)
    if init["kind"] == "uniform" and init["low"] is not None and init["high"] is not None:
        lo = np.broadcast_to(np.asarray(init["low"]), (k,))
        hi = np.broadcast_to(np.asarray(init["high"]), (k,))
        if np.any(hi < lo):
            raise ConfigError(f"init.high = {_fmt(init['high'])}: must be >= init.low = "
                              f"{_fmt(init['low'])} in every coordinate")
    for name in ("low", "high"):
        if init[name] is not None and init["kind"] != "uniform":
            raise ConfigError(f"init.{name} = {_fmt(init[name])}: only used with "
                              f'init.kind = "uniform" (init.kind is {_fmt(init["kind"])})')
    if init["kind"] == "file":
        if init["path"] is None:
            raise ConfigError('init.path is missing: init.kind = "file" needs a .npz or .h5 file '
                              f"with an array theta of shape (L, M, k) = "
                              f"({solver['L']}, {solver['M']}, {k})")
        init["path"] = os.path.abspath(os.path.expanduser(init["path"]))
    elif init["path"] is not None:
        raise ConfigError(f"init.path = {_fmt(init['path'])}: only used with "
                          f'init.kind = "file" (init.kind is {_fmt(init["kind"])})')

    # --- solver
    if solver["kind"] == "grid":
        if k > 3:
            raise ConfigError(f'solver.kind = "grid": the grid solver needs k <= 3 parameters per '
                              f"particle, this model has k = {k} (model.feature = "
                              f"{_fmt(model['feature'])}, model.dim = {d})")
        raise ConfigError('solver.kind = "grid": the grid solver is not implemented in this '
                          'version; allowed is "particles"')
    if "grid" in solver:
        grid = solver["grid"]
        for name, spec in SUBTABLES[("solver", "grid")].items():
            grid.setdefault(name, spec.default)

    # --- train
    if train["temperature"] > 0 and train["method"] == "adaptive":
        raise ConfigError(f"train.temperature = {train['temperature']!r}: needs train.method = "
                          '"euler" or "heun" (adaptive integration is deterministic only)')
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

    # --- output
    if output["path"] is None:
        output["path"] = os.path.join("runs", f"{stem}.h5")
    return cfg


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
    raw = _read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    for section, key in PATH_KEYS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key].strip():
            p = os.path.expanduser(table[key])
            table[key] = p if os.path.isabs(p) else os.path.join(base, p)
    for item in overrides:
        parts, value = _parse_override(item)
        _apply_override(raw, parts, value)
    stem = os.path.splitext(os.path.basename(path))[0]
    return _resolve(raw, stem)


def config_warnings(config: dict) -> list[str]:
    """One-line warnings about valid but questionable settings."""
    out = []
    if config["model"]["feature"] == "neuron" and config["model"]["activation"] == "relu":
        out.append('model.activation = "relu" is outside the mean-field theory (it is not '
                   'smooth); results may not converge; "smooth_relu" is the smooth version')
    return out


# ----------------------------------------------------------------------------- building


class RunSetup(NamedTuple):
    """The library objects a config describes (``build_run``)."""

    problem: Problem
    depth: DepthDiscretization
    schedule: Schedule
    regularization: Regularization
    theta0: jax.Array  # (L, M, k) in the run's precision
    key: jax.Array  # Langevin key fold_in(PRNGKey(seed), 2)


def dtype_of(config: dict):
    """The run's floating dtype; enables JAX float64 when the config asks for it."""
    if config["solver"]["precision"] == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


def build_run(config: dict) -> RunSetup:
    """Build problem, depth, schedule, regularization, initial particles and key.

    Reads the data / init files and checks their shapes; every failure is a
    ``ConfigError``. ``solver.precision = "float64"`` switches on JAX's x64
    mode first (before any array is made).
    """
    dtype = dtype_of(config)
    seed = config["seed"]
    data, model, init, solver, train = (config[s] for s in ("data", "model", "init", "solver",
                                                              "train"))
    try:
        feature = make_feature(model["feature"], model["dim"], model["activation"], model["bias"],
                               model["sharpness"])
        x, y = make_dataset(
            data["kind"], n=data["n"], dim=data["dim"], seed=seed, feature=feature,
            out_dim=data["out_dim"], noise=data["noise"], path=data["path"],
            teacher_width=data["teacher_width"], teacher_depth=data["teacher_depth"],
            teacher_std=data["teacher_std"],
            classes=None if data["classes"] is None else tuple(data["classes"]),
        )
        if x.shape[1] != data["dim"]:
            raise ConfigError(f"data.dim = {data['dim']}: the data have d_in = {x.shape[1]}")
        if y.shape[1] != data["out_dim"]:
            raise ConfigError(f"data.out_dim = {data['out_dim']}: the data have d_out = "
                              f"{y.shape[1]}")
        problem = Problem(feature, jnp.asarray(np.asarray(x, dtype)), jnp.asarray(np.asarray(y, dtype)))
        if solver["depth"] == "layers":
            depth: DepthDiscretization = LayeredDepth()
        else:
            depth = ContinuousDepth(adjoint=solver["adjoint"], solver=solver["ode_solver"],
                                    rtol=solver["rtol"], atol=solver["atol"])
        schedule = Schedule(train["time"], train["dt"], train["method"], train["record_every"],
                            train["snapshots"], train["rtol"], train["atol"],
                            train["divergence_factor"])
        regularization = Regularization(train["l2"], train["l2_schedule"], train["l2_decay"],
                                        train["temperature"])
        root = jax.random.PRNGKey(seed)
        theta0 = init_particles(init["kind"], jax.random.fold_in(root, 1), solver["L"], solver["M"],
                                feature.k, mean=init["mean"], std=init["std"], low=init["low"],
                                high=init["high"], path=init["path"], dtype=dtype)
        key = jax.random.fold_in(root, 2)
    except ConfigError:
        raise
    except (DataError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return RunSetup(problem, depth, schedule, regularization, theta0, key)
