"""One source of truth for the configuration: the declarations in wflow/_config.py give the
checker, the generated reference page, the JSON Schema for editors and ``wflow config show``.

The JSON Schema is checked against the checker value by value: over a set of probe values
for every key, whatever the checker accepts the schema accepts, and whatever the schema
accepts the checker accepts, except where JSON cannot tell (an integer-valued float such as
3.0 is an "integer" to JSON Schema but a float to TOML; nan) or where a rule is beyond JSON
Schema (``Key.extra``: low < high in grid bounds).
"""

import json
import math
import tomllib
from pathlib import Path

import jsonschema
import pytest

from wflow import cli
from wflow._config import (
    SCHEMA,
    SUBTABLES,
    TOP_KEYS,
    VERB_SECTIONS,
    config_json_schema,
    config_reference,
    load_config,
)
from wflow._schema import ConfigError, TableKey, to_toml

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = sorted((ROOT / "configs").glob("*.toml")) + sorted((ROOT / "examples").glob("*.toml"))


@pytest.fixture(scope="module")
def validator():
    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _all_keys():
    yield from ((f"{name}", key) for name, key in TOP_KEYS.items())
    for section, keys in {**SCHEMA, **VERB_SECTIONS}.items():
        yield from ((f"{section}.{name}", key) for name, key in keys.items())
    for (section, sub), keys in SUBTABLES.items():
        yield from ((f"{section}.{sub}.{name}", key) for name, key in keys.items())


KEYS = dict(_all_keys())


def _probes(key):
    names = list(key.schema.get("enum", [])) + [n for s in key.schema.get("anyOf", [])
                                                for n in s.get("enum", [])]
    return [-1, 0, 1, 2, 3, 9, 10, 2**33, 0.5, 1e-9, 2.5, -0.5, 1.0, 3.0, math.nan, math.inf,
            True, False, "", " ", "x", "a:b", "tanh", [], [1], [1, 2], [1, 1], [0, 9],
            [0.5, 0.5], [0.5, 1.5], [1, 2, 3, 4], [-1.0, 1.0], [[0, 1]], [[1, 0]],
            [[0, 1], [0, 1]], [[0, 1]] * 4, ["x"], ["x", "x"], {}, *names, names, names[:1],
            names[:1] * 2]


def _schema_ok(validator, name, value):
    parts = name.split(".")
    doc = value
    for part in reversed(parts):
        doc = {part: doc}
    return validator.is_valid(doc)


def _checker_ok(key, name, value):
    try:
        key.check(name, value)
    except ConfigError:
        return False
    return True


def _json_cannot_tell(value):
    flat = value if isinstance(value, list) else [value]
    flat = [x for v in flat for x in (v if isinstance(v, list) else [v])]
    return any(isinstance(x, float) and (not math.isfinite(x) or x.is_integer()) for x in flat)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_json_schema_accepts_exactly_what_the_checker_accepts(validator, name):
    key = KEYS[name]
    if isinstance(key, TableKey):  # [model.params]: any table of TOML values
        assert _schema_ok(validator, name, {"h": 3, "act": "tanh", "w": [1.0]})
        assert not _schema_ok(validator, name, 3)
        return
    disagree = []
    for value in _probes(key):
        checker, schema = _checker_ok(key, name, value), _schema_ok(validator, name, value)
        if checker and not schema:
            disagree.append((value, "checker accepts, schema rejects"))
        elif schema and not checker and key.extra is None and not _json_cannot_tell(value):
            disagree.append((value, "schema accepts, checker rejects"))
    assert not disagree, (name, key.allowed, disagree)
    if key.default is not None:
        assert key.check(name, key.default) == key.default, name


def test_every_key_is_described():
    bare = [name for name, key in KEYS.items() if not key.doc]
    assert not bare, f"keys without a description: {bare}"


def test_reference_page_equals_the_schema(capsys):
    page = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert page == config_reference(), ("docs/config-reference.md is out of date: regenerate it "
                                        "with `wflow config reference > docs/config-reference.md`")
    assert cli.main(["config", "reference"]) == 0
    assert capsys.readouterr().out == page
    for name in KEYS:  # every key has its row
        assert f"| `{name}` |" in page, name


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_configs_satisfy_the_json_schema(validator, path):
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    errors = [e.message for e in validator.iter_errors(raw)]
    assert not errors, errors


@pytest.mark.parametrize("text, where", [
    ('[solver]\nLL = 8\n', "LL"),                       # a misspelt key
    ('[sovler]\nL = 8\n', "sovler"),                    # a misspelt section
    ('[solver.grid]\ncels = 8\n', "cels"),             # in a sub-table
    ('[compare.adam]\nbeta1 = 0.9\n', "beta1"),        # in a verb's sub-table
    ('seeed = 1\n', "seeed"),                           # at the top level
])
def test_unknown_keys_are_flagged_by_the_json_schema(validator, text, where, tmp_path):
    raw = tomllib.loads(text)
    errors = list(validator.iter_errors(raw))
    assert errors and any(where in e.message for e in errors), [e.message for e in errors]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=where):  # the checker refuses it as well
        load_config(config)


def test_bad_values_are_flagged_by_the_json_schema(validator):
    for raw in ({"solver": {"L": 0}}, {"model": {"activation": "tahn"}},
                {"train": {"dt": -0.1}}, {"solver": {"grid": {"cells": [8, 8, 8, 8]}}},
                {"study": {"metrics": ["output", "output"]}}, {"compare": {"optimizers": "sgd"}}):
        assert not validator.is_valid(raw), raw


def test_config_show_prints_the_resolved_config(tmp_path, capsys, validator):
    source = ROOT / "configs" / "quickstart.toml"
    assert cli.main(["config", "show", str(source), "--set", "solver.L=6"]) == 0
    text = capsys.readouterr().out
    shown = tomllib.loads(text)
    assert shown == tomllib.loads(to_toml(load_config(source, ["solver.L=6"])))
    assert shown["solver"]["L"] == 6 and shown["train"]["method"] == "euler"  # defaults filled in
    assert validator.is_valid(shown)
    # what it prints is a config: it resolves to itself
    again = tmp_path / "shown.toml"
    again.write_text(text)
    assert tomllib.loads(to_toml(load_config(again))) == shown


def test_config_show_reads_a_run_file_and_refuses_a_bad_key(tmp_path, capsys, validator):
    run = tmp_path / "r.h5"
    source = ROOT / "configs" / "quickstart.toml"
    assert cli.main(["run", str(source), "-o", str(run), "-q", "--set", "train.time=0.02",
                     "--set", "train.dt=0.01", "--set", "solver.L=2", "--set", "solver.M=4"]) == 0
    capsys.readouterr()
    assert cli.main(["config", "show", str(run)]) == 0  # its output path is not the input's
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["solver"]["M"] == 4 and validator.is_valid(shown)
    assert cli.main(["config", "show", str(source), "--set", "solver.LL=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "solver.LL = 3: unknown key (did you mean solver.L?)" in err[0]


def test_config_schema_is_json(capsys):
    assert cli.main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(config_json_schema()))
    assert schema["properties"]["solver"]["properties"]["L"]["default"] == 16
    assert schema["properties"]["solver"]["additionalProperties"] is False


def test_study_defaults_shown_in_the_reference_are_the_ones_the_verbs_fill_in():
    """[study] keys default to None in the schema and are filled in by the study verbs; the
    default the reference shows (where it is a TOML value) is the one they fill in."""
    from wflow.study._keys import resolve_limit, resolve_zero_loss

    config = load_config(ROOT / "configs" / "quickstart.toml")
    filled = {**resolve_zero_loss(config), **resolve_limit(config)}
    checked = []
    for name, key in SCHEMA["study"].items():
        try:
            shown = tomllib.loads(f"v = {key.shown}")["v"]
        except (tomllib.TOMLDecodeError, TypeError):
            continue  # a derived default in words ("[solver.L]", "4 max(M)")
        if filled.get(name) is not None:  # None: does not apply to this study
            assert filled[name] == shown, (name, filled[name], key.shown)
            checked.append(name)
    assert len(checked) >= 7, checked
