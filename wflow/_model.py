"""The ``[model]`` section's block: from config keys to a checked ``AbstractFeatureMap``.

This is the configuration layer of the block interface (``_features``): it
adds the TOML key to the core's messages. ``model.feature`` is a registry
name (``"neuron"``, ``"linear"``) or a user's block, ``"package.module:ClassName"``
or ``"path/to/file.py:ClassName"`` (relative to the config file; the resolved
config stores the absolute path), and ``[model.params]`` is passed to the
block's constructor. ``model.activation``, ``model.bias`` and ``model.sharpness``
go to blocks that declare a field of that name.

A block is built and checked once while the config is resolved
(``resolve_block``): import, class, parameters, ``k``, and the shape of
``__call__`` traced abstractly. Its values at the initial particles are
checked when the run is built (``_build``). Every failure is a ``ConfigError``
``model.feature = ...: <what is wrong>``.

A run file of a user's block stores its source text and SHA-256 (attributes
``block_source``, ``block_sha256``, ``block_attrs``), so the file describes the
model it was made with, and ``--resume`` refuses a block whose source changed.
"""

from __future__ import annotations

import os

from ._features import (
    AbstractFeatureMap,
    BlockError,
    block_fields,
    block_source,
    check_block,
    is_block_spec,
    load_block,
    make_feature,
)
from ._schema import ConfigError, fmt

# Keys of [model] that blocks declaring a field of the same name receive.
MODEL_KEYS = ("activation", "bias", "sharpness")

__all__ = ["block_attrs", "check_block_unchanged", "feature_from_config", "feature_k",
           "resolve_block_path", "resolve_block"]


def resolve_block_path(spec, base: str):
    """``"file.py:Class"`` with a relative path -> the path relative to ``base`` (the
    config file's folder); anything else unchanged."""
    if not is_block_spec(spec):
        return spec
    where, _, cls = spec.rpartition(":")
    if where.endswith(".py"):
        where = os.path.expanduser(where)
        if not os.path.isabs(where):
            where = os.path.normpath(os.path.join(base, where))
        return f"{where}:{cls}"
    return spec


def feature_from_config(model: dict, *, dim: int | None = None, tile: int | None = None,
                        check: bool = False, tokens: int | None = None) -> AbstractFeatureMap:
    """The block of a resolved ``[model]`` table (``dim`` overrides ``model.dim``);
    ``tokens``: sequence data of that many tokens (``data.tokens``; None: vectors).

    ``check``: also run ``check_block`` (k, coordinate names, traced output shape).
    Raises ``ConfigError`` naming ``model.feature`` (or ``model.params.<name>``).
    """
    spec = model["feature"]
    try:
        feature = make_feature(spec, model["dim"] if dim is None else dim,
                               model.get("activation", "tanh"), model.get("bias", True),
                               model.get("sharpness", 10.0), tile=tile,
                               params=model.get("params") or {}, tokens=tokens)
        if check:
            check_block(feature)
    except BlockError as e:
        raise ConfigError(f"model.feature = {fmt(spec)}: {e}") from None
    except ConfigError:
        raise
    except Exception as e:  # a user's constructor or __check_init__ may raise anything
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, ValueError) and text.startswith("model."):
            raise ConfigError(text) from None  # a shipped block already named the key
        raise ConfigError(f"model.feature = {fmt(spec)}: building the block failed "
                          f"({type(e).__name__}: {text})") from None
    return feature


def resolve_block(model: dict, solver: dict, init: dict,
                  tokens: int | None = None) -> AbstractFeatureMap:
    """Build and check the block of a config being resolved; returns it (its ``k`` sizes
    the per-coordinate init lists). Checks the block against the rest of the config:
    ``init.symmetric`` needs a reflection."""
    params = model.get("params")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"model.params = {fmt(params)}: must be a table ([model.params])")
    try:
        cls = load_block(model["feature"])
    except BlockError as e:
        raise ConfigError(f"model.feature = {fmt(model['feature'])}: {e}") from None
    fields = block_fields(cls)
    for name, value in (params or {}).items():
        if name in MODEL_KEYS:
            raise ConfigError(f"model.params.{name} = {fmt(value)}: set model.{name} instead "
                              f"(it is a key of [model], passed to every block with a field "
                              f"{name!r})")
        if name not in fields:
            allowed = ", ".join(n for n in fields if n not in MODEL_KEYS) or "none"
            raise ConfigError(f"model.params.{name} = {fmt(value)}: the block {cls.__name__} "
                              f"has no parameter {name!r} (its parameters: {allowed})")
    feature = feature_from_config(model, tile=solver.get("tile"), check=True, tokens=tokens)
    if init.get("symmetric") and feature.reflection is None:
        raise ConfigError(f"init.symmetric = true: the block {type(feature).__name__} "
                          f"(model.feature = {fmt(model['feature'])}) declares no reflection "
                          "(f(z; R theta) = -f(z; theta)); define its reflection property or "
                          "set init.symmetric = false")
    return feature


def feature_k(model: dict, tokens: int | None = None) -> int | None:
    """k of a resolved ``[model]`` table (``tokens``: data.tokens), or None when its block
    cannot be built here (a user's block whose file is gone)."""
    try:
        return int(feature_from_config(model, tokens=tokens).k)
    except ConfigError:
        return None


def block_attrs(model: dict) -> dict:
    """Run-file attributes describing a user's block: its spec, source text and SHA-256
    (empty for a shipped block)."""
    spec = model["feature"]
    try:
        found = block_source(spec)
    except BlockError as e:
        raise ConfigError(f"model.feature = {fmt(spec)}: {e}") from None
    if found is None:
        return {}
    text, digest = found
    return {"block": spec, "block_source": text, "block_sha256": digest}


def check_block_unchanged(model: dict, stored_attrs: dict, path: str) -> None:
    """``--resume``: the block's source must be the one the run started with."""
    stored = stored_attrs.get("block_sha256")
    now = block_attrs(model).get("block_sha256")
    if stored is None and now is None:
        return
    if stored != now:
        raise ConfigError(f"model.feature = {fmt(model['feature'])}: the block's source "
                          f"changed since {path} was written (sha256 {str(stored)[:12]}... "
                          f"stored, {str(now)[:12]}... now); --resume needs the same block "
                          "(start a new run, or restore the file's source from its "
                          "block_source attribute)")
