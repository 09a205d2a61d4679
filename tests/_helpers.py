"""Helpers shared by the command-line test files (configs as TOML text, in-process CLI calls,
the datasets of a run file)."""

from __future__ import annotations

import h5py

from wflow.cli import main


def toml_text(base: dict, edits: dict | None = None) -> str:
    """``base`` ({section: {key: raw TOML literal}} and top-level keys) with ``edits``
    ({"section.key": raw TOML literal, or None to delete}) as TOML text."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for name, raw in (edits or {}).items():
        section, _, key = name.rpartition(".")
        table = cfg.setdefault(section, {}) if section else cfg
        if raw is None:
            table.pop(key, None)
        else:
            table[key] = raw
    lines = [f"{k} = {v}" for k, v in cfg.items() if not isinstance(v, dict)]
    for section, table in cfg.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def cli(capsys, *args):
    """``wflow ARGS`` in this process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def datasets(path) -> dict:
    """Every dataset of an HDF5 file by path, except the wall times (which differ between
    otherwise identical runs)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "wall_time" not in name:
                out[name] = obj[()]
        f.visititems(visit)
    return out
