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
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["ConfigError", "Key", "bad", "bool_key", "bounds_key", "cells_key", "check_table",
           "choice_key", "choices_key", "digits_key", "float_key", "fmt", "int_key", "ints_key",
           "is_int", "is_num", "json_schema", "name_or_index_key", "numbers_key", "parse_override", "path_key",
           "read_toml", "reference_markdown", "to_toml", "unknown_key"]


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
#
# A key's allowed values are declared once, as a JSON Schema fragment: the checker
# interprets it (``_valid``), ``wflow config schema`` writes it out for TOML editors, and
# the configuration reference prints its message. A rule JSON Schema cannot state (low < high
# in a pair of bounds) is an ``extra`` predicate; the JSON Schema then accepts a little more.


def _identity(v):
    return v


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPES = {"integer": is_int, "number": lambda v: is_num(v) and math.isfinite(v),
          "boolean": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str),
          "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}


def _valid(schema: dict, v: Any) -> bool:
    """Whether the TOML value ``v`` satisfies ``schema`` (the part of JSON Schema keys use;
    "integer" is a TOML integer, so 3.0 is not one, and every number is finite)."""
    if "anyOf" in schema:
        return any(_valid(s, v) for s in schema["anyOf"])
    if "type" in schema and not _TYPES[schema["type"]](v):
        return False
    if "enum" in schema and v not in schema["enum"]:
        return False
    if isinstance(v, str):
        return "pattern" not in schema or re.search(schema["pattern"], v) is not None
    if is_num(v):
        return (v >= schema.get("minimum", -math.inf) and v <= schema.get("maximum", math.inf)
                and v > schema.get("exclusiveMinimum", -math.inf)
                and v < schema.get("exclusiveMaximum", math.inf))
    if isinstance(v, list):
        if not schema.get("minItems", 0) <= len(v) <= schema.get("maxItems", len(v)):
            return False
        if schema.get("uniqueItems") and len({float(x) if is_num(x) else json.dumps(x)
                                              for x in v}) != len(v):
            return False
        return "items" not in schema or all(_valid(schema["items"], x) for x in v)
    return True


@dataclass(frozen=True)
class Key:
    """One config key: its default, its allowed values (a JSON Schema fragment, and the
    one-line message that states them), how a valid value is normalized, and its description.

    ``shown`` is the default as the reference prints it where ``default`` is ``None`` but
    the key has a derived default (``model.dim``: max(d_in, d_out)).
    """

    default: Any
    schema: dict
    allowed: str
    normalize: Callable[[Any], Any] = _identity
    extra: Callable[[Any], bool] | None = None
    doc: str = ""
    shown: str | None = None

    def check(self, key: str, v: Any) -> Any:
        """The normalized value, or ``ConfigError``: ``<key> = <value>: <allowed>``."""
        if not _valid(self.schema, v) or (self.extra is not None and not self.extra(v)):
            raise bad(key, v, self.allowed)
        return self.normalize(v)

    def describe(self, doc: str, shown: str | None = None) -> Key:
        return replace(self, doc=doc, shown=shown)


def bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {fmt(value)}: {allowed}")


def _range(lo, hi, lo_open=False, hi_open=False) -> tuple[dict, str]:
    """JSON Schema bounds and their words: ">= 1", "in (0, 1]"."""
    bounds = {}
    if lo is not None:
        bounds["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi is not None:
        bounds["exclusiveMaximum" if hi_open else "maximum"] = hi
    lo_, hi_ = (str(b) if isinstance(b, int) or b is None else f"{b:g}" for b in (lo, hi))
    if lo is not None and hi is not None:
        words = f"in {'(' if lo_open else '['}{lo_}, {hi_}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"{'>' if lo_open else '>='} {lo_}"
    elif hi is not None:
        words = f"{'<' if hi_open else '<='} {hi_}"
    else:
        words = ""
    return bounds, words


def _list_of(item: dict, unique: bool = False, min_items: int = 0, max_items=None) -> dict:
    out = {"type": "array", "items": item}
    if min_items:
        out["minItems"] = min_items
    if max_items is not None:
        out["maxItems"] = max_items
    if unique:
        out["uniqueItems"] = True
    return out


def int_key(default, lo: int | None = 0, hi: int | None = None) -> Key:
    bounds, words = _range(lo, hi)
    return Key(default, {"type": "integer", **bounds}, f"must be an integer {words}".rstrip(), int)


def float_key(default, lo: float | None = None, strict: bool = False, hi: float | None = None,
              hi_strict: bool = False) -> Key:
    bounds, words = _range(lo, hi, strict, hi_strict)
    return Key(default, {"type": "number", **bounds}, f"must be a finite number {words}".rstrip(),
               float)


def bool_key(default) -> Key:
    return Key(default, {"type": "boolean"}, "must be true or false")


def _names(choices) -> str:
    return ", ".join(json.dumps(c) for c in choices)


def choice_key(default, choices) -> Key:
    choices = list(choices)
    return Key(default, {"type": "string", "enum": choices}, "allowed are " + _names(choices))


def choices_key(default, choices, min_items: int = 1, single: bool = True) -> Key:
    """A list of distinct names out of ``choices``; with ``single``, one name is a one-item list."""
    choices = list(choices)
    name = {"type": "string", "enum": choices}
    many = _list_of(name, unique=True, min_items=min_items)
    schema = {"anyOf": [name, many]} if single else many
    what = "a non-empty list" if min_items else "a list"
    return Key(default, schema, f"must be {what} of distinct names out of {_names(choices)}",
               lambda v: [v] if isinstance(v, str) else list(v))


def ints_key(default, lo: int = 1, hi: int | None = None, min_items: int = 1,
             single: bool = True) -> Key:
    """A list of distinct integers in range; with ``single``, one integer is a one-item list."""
    bounds, words = _range(lo, hi)
    item = {"type": "integer", **bounds}
    many = _list_of(item, unique=True, min_items=min_items)
    what = "a non-empty list" if min_items else "a list"
    allowed = (f"must be an integer {words} or {what} of distinct such integers" if single
               else f"must be {what} of distinct integers {words}")
    return Key(default, {"anyOf": [item, many]} if single else many, allowed,
               lambda v: [int(v)] if is_int(v) else [int(x) for x in v])


def numbers_key(default, lo: float | None = None, strict: bool = False, per_coordinate=True,
                unique: bool = False) -> Key:
    """A finite number or a non-empty list of them (one per coordinate); or, without
    ``per_coordinate``, a list (possibly empty) of numbers."""
    bounds, words = _range(lo, None, strict)
    item = {"type": "number", **bounds}
    if not per_coordinate:
        return Key(default, _list_of(item, unique=unique),
                   f"must be a list of {'distinct ' if unique else ''}finite numbers {words}",
                   lambda v: [float(x) for x in v])
    what = f"a finite number {words}".rstrip()
    return Key(default, {"anyOf": [item, _list_of(item, min_items=1)]},
               f"must be {what} or a list of such numbers (one per coordinate)",
               lambda v: [float(x) for x in v] if isinstance(v, list) else float(v))


def name_or_index_key(default, names) -> Key:
    """One of ``names``, or an integer index >= 0 (checked against its range when resolved)."""
    names = list(names)
    return Key(default, {"anyOf": [{"type": "string", "enum": names},
                                   {"type": "integer", "minimum": 0}]},
               f"allowed are {_names(names)}, or an integer index >= 0")


def block_key(default, registry) -> Key:
    """A registry name, or a user's block as ``"package.module:ClassName"`` /
    ``"path/to/file.py:ClassName"`` (checked when the block is built)."""
    names = list(registry)
    return Key(default, {"anyOf": [{"type": "string", "enum": names},
                                   {"type": "string", "pattern": ":"}]},
               f"allowed are {_names(names)}, or a block of your own as "
               "'package.module:ClassName' or 'path/to/file.py:ClassName'")


def path_key(default=None) -> Key:
    return Key(default, {"type": "string", "pattern": r"\S"},
               "must be a non-empty string (a file path)")


def digits_key(default=None) -> Key:
    return Key(default, _list_of({"type": "integer", "minimum": 0, "maximum": 9}, unique=True,
                                 min_items=2),
               "must be a list of at least 2 distinct digits in 0..9", list)


def cells_key(default, lo: int = 3) -> Key:
    item = {"type": "integer", "minimum": lo}
    return Key(default, {"anyOf": [item, _list_of(item, min_items=1, max_items=3)]},
               f"must be an integer >= {lo} or a list of 1 to 3 such integers (one per axis)",
               lambda v: list(v) if isinstance(v, list) else v)


def _floats(v):
    return [_floats(x) for x in v] if isinstance(v, list) else float(v)


def bounds_key(default) -> Key:
    pair = _list_of({"type": "number"}, min_items=2, max_items=2)

    def ordered(v):
        return all(p[0] < p[1] for p in (v if isinstance(v[0], list) else [v]))

    return Key(default, {"anyOf": [pair, _list_of(pair, min_items=1, max_items=3)]},
               "must be [low, high] with finite low < high, or a list of such pairs "
               "(one per axis)", _floats, extra=ordered)


class TableKey(Key):
    """A free table of TOML values (e.g. ``[model.params]``): any key, checked by its user."""

    def check(self, key: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise bad(key, v, f"must be a table ([{key}]) of parameters")
        for name, value in v.items():
            if isinstance(value, dict):
                raise bad(f"{key}.{name}", value, "must be a number, a string, a boolean or a "
                          "list (a parameter of the block)")
        return dict(v)


def table_key() -> TableKey:
    value = {"type": ["number", "string", "boolean", "array"]}
    return TableKey({}, {"type": "object", "additionalProperties": value}, "a table")


def unknown_key(full: str, value: Any, options: list[str], where: str) -> ConfigError:
    prefix, _, name = full.rpartition(".")
    close = difflib.get_close_matches(name, [o for o in options if not o.startswith("[")], n=1,
                                      cutoff=0.6)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"{full} = {fmt(value)}: unknown key{hint}; allowed {where}: "
                       + ", ".join(options))


# ----------------------------------------------------------------------------- generated


def _property(key: Key) -> dict:
    out = dict(key.schema)
    doc = key.doc + (f" (default: {key.shown})" if key.shown is not None else "")
    if doc:
        out["description"] = doc
    if key.default is not None and not isinstance(key, TableKey):
        out["default"] = key.default
    return out


def _table_schema(keys: dict[str, Key], subtables: dict[str, dict[str, Key]], doc: str) -> dict:
    props = {name: _property(key) for name, key in keys.items()}
    for name, sub in subtables.items():
        props[name] = _table_schema(sub, {}, f"[{name}]")
    return {"type": "object", "description": doc, "properties": props,
            "additionalProperties": False}


def json_schema(top: dict[str, Key], sections: dict[str, tuple[str, dict[str, Key]]],
                subtables: dict[tuple[str, str], dict[str, Key]], title: str) -> dict:
    """A JSON Schema (draft 2020-12) of a config: every table closed (an unknown key is an
    error), every key with its type, range, allowed names, default and description.
    ``sections`` maps a section to (its description, its keys)."""
    root = _table_schema(top, {}, title)
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **root}
    for name, (doc, keys) in sections.items():
        subs = {n: v for (s, n), v in subtables.items() if s == name}
        root["properties"][name] = _table_schema(keys, subs, doc)
    return root


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _reference_rows(prefix: str, keys: dict[str, Key]) -> list[str]:
    rows = []
    for name, key in keys.items():
        default = key.shown if key.shown is not None else (
            "none" if key.default is None else f"`{fmt(key.default)}`")
        allowed = key.allowed.removeprefix("must be ").removeprefix("allowed are ")
        rows.append(f"| `{prefix}{name}` | {_cell(default)} | {_cell(allowed)} | "
                    f"{_cell(key.doc)} |")
    return rows


def reference_markdown(top: dict[str, Key], sections: dict[str, tuple[str, dict[str, Key]]],
                       subtables: dict[tuple[str, str], dict[str, Key]], preamble: str) -> str:
    """The configuration reference as Markdown: a table per section and sub-table."""
    head = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    lines = [preamble.rstrip(), "", "## Top level", "", *head, *_reference_rows("", top)]
    for name, (doc, keys) in sections.items():
        lines += ["", f"## [{name}]", "", doc, "", *head, *_reference_rows(f"{name}.", keys)]
        for (s, sub), sub_keys in subtables.items():
            if s == name:
                lines += ["", f"### [{name}.{sub}]", "", *head,
                          *_reference_rows(f"{name}.{sub}.", sub_keys)]
    return "\n".join(lines) + "\n"


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


