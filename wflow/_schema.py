"""Typed config keys and TOML text: the config discipline every verb shares.

A config is a TOML document of sections (``[data]``, ``[solver]``, ...) whose
keys are declared as ``Key`` objects: a default and a checker that returns
the normalized value or raises ``ConfigError`` with one line of the form
``<key> = <value>: <what is allowed>``. ``check_table`` validates one table
against its declared keys (unknown keys are errors, with a "did you mean"
hint); ``to_toml`` writes a resolved config back as TOML text (what run
files store). The wflow schema itself (which sections and keys exist, and the
cross-key rules) is in ``_config.py``; verb-specific sections declare their
keys next to their code with the constructors below.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "Key", "bad", "bool_key", "bounds_key", "cells_key", "check_table",
           "choice_key", "choices_key", "digits_key", "float_key", "fmt", "int_key", "ints_key",
           "is_int", "is_num", "numbers_key", "parse_override", "path_key", "read_toml", "to_toml",
           "unknown_key"]


class ConfigError(ValueError):
    """A bad configuration; the one-line message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
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
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {fmt(v)}" for k, v in value.items()) + "}"
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
class Key:
    """One config key: default, a checker returning the normalized value, its description."""

    default: Any
    check: Callable[[str, Any], Any]


def bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {fmt(value)}: {allowed}")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_key(default, lo: int = 0, hi: int | None = None) -> Key:
    allowed = (f"must be an integer >= {lo}" if hi is None
               else f"must be an integer in [{lo}, {hi}]")

    def check(key, v):
        if not is_int(v) or v < lo or (hi is not None and v > hi):
            raise bad(key, v, allowed)
        return int(v)

    return Key(default, check)


def float_key(default, lo: float | None = None, strict: bool = False,
           hi: float | None = None) -> Key:
    if lo is None:
        allowed = "must be a finite number"
    elif hi is not None:
        allowed = f"must be a finite number in ({lo}, {hi}]" if strict else \
            f"must be a finite number in [{lo}, {hi}]"
    else:
        allowed = f"must be a finite number {'>' if strict else '>='} {lo:g}"

    def check(key, v):
        if not is_num(v) or not math.isfinite(v):
            raise bad(key, v, allowed)
        v = float(v)
        if lo is not None and (v < lo or (strict and v == lo)):
            raise bad(key, v, allowed)
        if hi is not None and v > hi:
            raise bad(key, v, allowed)
        return v

    return Key(default, check)


def bool_key(default) -> Key:
    def check(key, v):
        if not isinstance(v, bool):
            raise bad(key, v, "must be true or false")
        return v

    return Key(default, check)


def choice_key(default, choices) -> Key:
    choices = tuple(choices)
    allowed = "allowed are " + ", ".join(json.dumps(c) for c in choices)

    def check(key, v):
        if not isinstance(v, str) or v not in choices:
            raise bad(key, v, allowed)
        return v

    return Key(default, check)


class TableKey(Key):
    """A free table of TOML values (e.g. ``[model.params]``): any key, checked by its user."""


def table_key() -> TableKey:
    def check(key, v):
        if not isinstance(v, dict):
            raise bad(key, v, f"must be a table ([{key}]) of parameters")
        for name, value in v.items():
            if isinstance(value, dict):
                raise bad(f"{key}.{name}", value, "must be a number, a string, a boolean or a "
                          "list (a parameter of the block)")
        return dict(v)

    return TableKey({}, check)


def block_key(default, registry) -> Key:
    """A registry name, or a user's block as ``"package.module:ClassName"`` /
    ``"path/to/file.py:ClassName"`` (checked when the block is built)."""
    names = tuple(registry)
    allowed = ("allowed are " + ", ".join(json.dumps(c) for c in names)
               + ", or a block of your own as 'package.module:ClassName' or "
               "'path/to/file.py:ClassName'")

    def check(key, v):
        if not isinstance(v, str) or not (v in names or ":" in v):
            raise bad(key, v, allowed)
        return v

    return Key(default, check)


def path_key(default=None) -> Key:
    def check(key, v):
        if not isinstance(v, str) or not v.strip():
            raise bad(key, v, "must be a non-empty string (a file path)")
        return v

    return Key(default, check)


def numbers_key(default, lo: float | None = None) -> Key:
    """A finite number or a non-empty list of finite numbers (one per coordinate)."""
    what = "a finite number" if lo is None else f"a finite number >= {lo:g}"
    allowed = f"must be {what} or a list of such numbers (one per coordinate)"

    def ok(x):
        return is_num(x) and math.isfinite(x) and (lo is None or x >= lo)

    def check(key, v):
        if ok(v):
            return float(v)
        if isinstance(v, list) and v and all(ok(x) for x in v):
            return [float(x) for x in v]
        raise bad(key, v, allowed)

    return Key(default, check)


def digits_key(default=None) -> Key:
    allowed = "must be a list of at least 2 distinct digits in 0..9"

    def check(key, v):
        if (not isinstance(v, list) or len(v) < 2 or not all(is_int(c) and 0 <= c <= 9 for c in v)
                or len(set(v)) != len(v)):
            raise bad(key, v, allowed)
        return [int(c) for c in v]

    return Key(default, check)


def cells_key(default, lo: int = 3) -> Key:
    allowed = f"must be an integer >= {lo} or a list of 1 to 3 such integers (one per axis)"

    def check(key, v):
        if is_int(v) and v >= lo:
            return int(v)
        if isinstance(v, list) and 1 <= len(v) <= 3 and all(is_int(c) and c >= lo for c in v):
            return [int(c) for c in v]
        raise bad(key, v, allowed)

    return Key(default, check)


def bounds_key(default) -> Key:
    allowed = "must be [low, high] with finite low < high, or a list of such pairs (one per axis)"

    def pair(p):
        return (isinstance(p, list) and len(p) == 2 and all(is_num(x) and math.isfinite(x) for x in p)
                and p[0] < p[1])

    def check(key, v):
        if pair(v):
            return [float(v[0]), float(v[1])]
        if isinstance(v, list) and 1 <= len(v) <= 3 and all(pair(p) for p in v):
            return [[float(p[0]), float(p[1])] for p in v]
        raise bad(key, v, allowed)

    return Key(default, check)


def ints_key(default, lo: int = 1) -> Key:
    """A non-empty list of distinct integers >= lo (a single integer is taken as a one-item list)."""
    allowed = f"must be an integer >= {lo} or a non-empty list of distinct such integers"

    def check(key, v):
        items = [v] if is_int(v) else v
        if (not isinstance(items, list) or not items
                or not all(is_int(x) and x >= lo for x in items) or len(set(items)) != len(items)):
            raise bad(key, v, allowed)
        return [int(x) for x in items]

    return Key(default, check)


def choices_key(default, choices) -> Key:
    """A non-empty list of distinct names out of ``choices`` (a single name is a one-item list)."""
    choices = tuple(choices)
    allowed = ("must be a non-empty list of distinct names out of "
               + ", ".join(json.dumps(c) for c in choices))

    def check(key, v):
        items = [v] if isinstance(v, str) else v
        if (not isinstance(items, list) or not items
                or not all(isinstance(x, str) and x in choices for x in items)
                or len(set(items)) != len(items)):
            raise bad(key, v, allowed)
        return list(items)

    return Key(default, check)


def unknown_key(full: str, value: Any, options: list[str], where: str) -> ConfigError:
    prefix, _, name = full.rpartition(".")
    close = difflib.get_close_matches(name, [o for o in options if not o.startswith("[")], n=1,
                                      cutoff=0.6)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"{full} = {fmt(value)}: unknown key{hint}; allowed {where}: "
                       + ", ".join(options))


# ----------------------------------------------------------------------------- reading


MAX_CONFIG_BYTES = 16 * 2**20  # a config is a small text file


def read_toml(path: str) -> dict:
    """Parse a TOML config file; ``ConfigError`` (one line) for anything but a readable,
    regular, reasonably small file of valid TOML (a FIFO or device is refused, not read)."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r}: file not found")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r}: is a directory, expected a .toml file")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"config file {path!r}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {path!r}: not a regular file (a FIFO, device or socket); "
                          "give a .toml file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path!r}: {st.st_size} bytes; a config file is at most "
                          f"{MAX_CONFIG_BYTES // 2**20} MiB of TOML")
    try:
        with open(path, "rb") as f:
            return tomllib.loads(f.read(MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r}: not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise ConfigError(f"config file {path!r}: invalid TOML: arrays or tables nested too "
                          "deeply") from None
    except OSError as e:
        raise ConfigError(f"config file {path!r}: cannot be read ({e.strerror})") from None


def parse_override(item) -> tuple[list[str], Any]:
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
    except RecursionError:
        raise ConfigError(f"--set {name}: the value is nested too deeply") from None
    return parts, value


def check_table(section: str, table: Any, keys: dict[str, Key], subtables: dict) -> tuple[dict, set]:
    if not isinstance(table, dict):
        raise ConfigError(f"{section} = {fmt(table)}: must be a table ([{section}])")
    out, given = {}, set()
    for name, value in table.items():
        full = f"{section}.{name}"
        if name in keys:
            out[name] = keys[name].check(full, value)
            # a key equal to its default counts as not given: a resolved config (which
            # writes every default, e.g. into a run file) is accepted as it is
            if out[name] != keys[name].default:
                given.add(name)
        elif name in subtables:
            sub, _ = check_table(full, value, subtables[name], {})
            out[name] = sub
            given.add(name)
        else:
            raise unknown_key(full, value, list(keys) + [f"[{section}.{n}]" for n in subtables],
                           f"in [{section}]")
    resolved = {}
    for name, spec in keys.items():
        resolved[name] = out.get(name, spec.default)
    for name in subtables:
        if name in out:
            resolved[name] = out[name]
    return resolved, given


