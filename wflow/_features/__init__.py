"""Feature maps (residual blocks): the interface, the shipped blocks, the registry, user blocks.

* ``AbstractFeatureMap`` (``base.py``): what a block defines (``k``, ``__call__``) and
  what every block gets for free (batched tiled ``field`` with a reverse rule,
  ``probe`` for grad V anywhere, ``coordinate_names``, ``views``, ``reflection``).
* ``Neuron`` (``neuron.py``) and ``Linear`` (``linear.py``): the shipped blocks, with
  hand-written kernels tested against ``generic_field``.
* ``FEATURES``: the registry, name -> class. ``model.feature`` names one of them, or
  a user's block as ``"package.module:ClassName"`` or ``"path/to/file.py:ClassName"``
  (``load_block``). Adding a block to wflow is one file plus one line here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys

from .base import (
    TILE,
    TILE_CPU,
    AbstractFeatureMap,
    blocked_value,
    blocked_vjp,
    default_tile,
    generic_field,
    split_rows,
    vmapped_value,
)
from .attention import (
    AbstractSequenceBlock,
    Attention,
    AttentionMLP,
    LinearAttention,
    Tokenwise,
    sequence_block,
)
from .linear import Linear
from .neuron import Neuron

FEATURES: dict[str, type[AbstractFeatureMap]] = {
    "neuron": Neuron,
    "linear": Linear,
    "attention": Attention,
    "linear_attention": LinearAttention,
    "attention_mlp": AttentionMLP,
}

# The name the rest of the package used before the block interface; kept for users' code.
FeatureMap = AbstractFeatureMap

__all__ = [
    "FEATURES", "TILE", "TILE_CPU", "AbstractFeatureMap", "AbstractSequenceBlock", "Attention",
    "AttentionMLP", "BlockError", "FeatureMap", "Linear", "LinearAttention", "Neuron",
    "Tokenwise", "block_fields", "blocked_value", "blocked_vjp", "default_tile", "generic_field",
    "is_block_spec", "load_block", "make_feature", "split_rows", "vmapped_value",
]


class BlockError(ValueError):
    """A user's block cannot be loaded, built or evaluated (one line; the config layer adds
    the key ``model.feature``)."""


def is_block_spec(name: str) -> bool:
    """True for ``"module:Class"`` / ``"file.py:Class"`` (a user's block), False for a
    registry name."""
    return isinstance(name, str) and ":" in name


def _split_spec(spec: str) -> tuple[str, str]:
    where, _, cls = spec.rpartition(":")
    if not where or not cls.isidentifier():
        raise BlockError(f"{spec!r} is not of the form 'package.module:ClassName' or "
                         "'path/to/file.py:ClassName'")
    return where, cls


def block_file(spec: str) -> str | None:
    """The source file of a user's block spec (None for a registry name or an unimportable
    module)."""
    if not is_block_spec(spec):
        return None
    where, _ = _split_spec(spec)
    if where.endswith(".py"):
        return where
    found = importlib.util.find_spec(where) if _importable(where) else None
    return found.origin if found is not None and found.origin else None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def block_source(spec: str) -> tuple[str, str] | None:
    """(source text, its SHA-256) of a user's block file, or None for a registry name."""
    path = block_file(spec)
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise BlockError(f"cannot read the block's file {path} ({e.strerror or e})") from None
    return raw.decode("utf-8", errors="replace"), hashlib.sha256(raw).hexdigest()


def load_block(spec: str) -> type[AbstractFeatureMap]:
    """The block class named by ``spec``: a registry name, ``"package.module:ClassName"``
    or ``"path/to/file.py:ClassName"`` (an absolute path, or relative to the current
    directory; the config layer makes it relative to the config file).

    Raises ``BlockError`` with one line for an unknown name, an import that fails
    (with the error raised by the user's module), a missing class, or a class that is not
    an ``AbstractFeatureMap``.
    """
    if not is_block_spec(spec):
        if spec not in FEATURES:
            raise BlockError(f"{spec!r} is not a block: allowed are "
                             + ", ".join(f'"{n}"' for n in FEATURES)
                             + ", or 'package.module:ClassName' / 'path/to/file.py:ClassName'")
        return FEATURES[spec]
    where, name = _split_spec(spec)
    if where.endswith(".py"):
        module = _import_file(where)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # the user's module may raise anything while importing
            raise BlockError(f"cannot import {where!r} ({type(e).__name__}: "
                             f"{_first_line(e)})") from None
    cls = getattr(module, name, None)
    if cls is None:
        have = sorted(n for n, v in vars(module).items()
                      if inspect.isclass(v) and issubclass(v, AbstractFeatureMap)
                      and v is not AbstractFeatureMap)
        hint = f"; its blocks are {', '.join(have)}" if have else ""
        raise BlockError(f"{where} has no class {name!r}{hint}")
    if not (inspect.isclass(cls) and issubclass(cls, AbstractFeatureMap)):
        raise BlockError(f"{where}:{name} is not a subclass of wflow.AbstractFeatureMap")
    return cls


def _import_file(path: str):
    if not os.path.isfile(path):
        raise BlockError(f"the block's file {path} does not exist")
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    module_name = f"wflow_user_block_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BlockError(f"cannot import {path} (not a Python file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file may raise anything while importing
        del sys.modules[module_name]
        raise BlockError(f"cannot import {path} ({type(e).__name__}: {_first_line(e)})") from None
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no detail"


def block_fields(cls: type[AbstractFeatureMap]) -> dict[str, dataclasses.Field]:
    """The hyperparameters of a block class (its dataclass fields other than ``d`` and
    ``tile``), by name."""
    return {f.name: f for f in dataclasses.fields(cls)
            if f.name not in ("d", "tile", "tokens", "token_dim")}


def make_feature(kind: str, d: int, activation: str = "tanh", bias: bool = True,
                 sharpness: float = 10.0, tile: int | None = None,
                 params: dict | None = None, tokens: int | None = None) -> AbstractFeatureMap:
    """Build a block by name (a registry name or a user's spec, ``load_block``).

    ``tokens``: the state is a sequence of that many tokens of dimension ``d`` (flattened,
    ``attention.py``): a sequence block gets ``tokens``, a block of vectors acts on every
    token (``Tokenwise``). None: the state is one vector of dimension d.
    ``params`` are its hyperparameters (config ``[model.params]``). ``activation``,
    ``bias`` and ``sharpness`` (config ``model.activation`` ...) are passed to blocks
    that declare a field of that name (``Neuron`` does); ``tile`` bounds the (N, M)
    intermediates of one field call (elements; None: the backend's ``default_tile``).
    """
    cls = load_block(kind)
    fields = block_fields(cls)
    kwargs = {name: value for name, value in
              (("activation", activation), ("bias", bias), ("sharpness", sharpness))
              if name in fields}
    for name, value in (params or {}).items():
        if name not in fields:
            allowed = ", ".join(fields) or "none"
            raise BlockError(f"unknown parameter {name!r} of the block {cls.__name__} "
                             f"(its parameters: {allowed})")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise BlockError(f"the block {cls.__name__} needs the parameter {missing[0]!r} "
                         "(set it in [model.params])")
    if tokens is None and issubclass(cls, AbstractSequenceBlock):
        raise BlockError(f"the block {cls.__name__} acts on sequences of tokens; it needs "
                         "sequence data (data.tokens, or file data x of shape (N, n, d_in))")
    try:
        if tokens is not None:
            return sequence_block(cls, d, tokens, tile=tile, **kwargs)
        return cls(d=d, tile=tile, **kwargs)
    except TypeError as e:
        if "abstract" in str(e):
            raise BlockError(f"the block {cls.__name__} does not define k and __call__ "
                             f"({_first_line(e)})") from None
        raise BlockError(f"the block {cls.__name__} cannot be built ({_first_line(e)})") from None


MAX_CHECKED_K = 10**6  # check_block builds coordinate_names and reflection up to this k


def check_block(feature: AbstractFeatureMap) -> None:
    """Static checks of a block: ``k`` a positive integer, ``coordinate_names`` of length k,
    ``reflection`` None or (k,), and ``__call__`` traceable by JAX with output (d,).

    Raises ``BlockError`` with one line. Runs ``__call__`` abstractly (``jax.eval_shape``):
    no computation.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    name = type(feature).__name__
    try:
        k = feature.k
    except Exception as e:  # a user's property may raise anything
        raise BlockError(f"the block {name}: k raised {type(e).__name__}: {_first_line(e)}") from None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BlockError(f"the block {name}: k = {k!r} must be an integer >= 1")
    if k <= MAX_CHECKED_K:  # both are O(k) objects: a model too large to run is refused later
        names = feature.coordinate_names  # by the memory preflight, not built here
        if len(names) != k:
            raise BlockError(f"the block {name}: coordinate_names has {len(names)} entries, "
                             f"k = {k}")
        R = feature.reflection
        if R is not None and np.shape(R) != (k,):
            raise BlockError(f"the block {name}: reflection has shape {np.shape(R)}, "
                             f"need ({k},)")
    d = feature.d
    z = jax.ShapeDtypeStruct((d,), jnp.float32)
    theta = jax.ShapeDtypeStruct((int(k),), jnp.float32)
    try:
        out = jax.eval_shape(feature, z, theta)
    except Exception as e:  # the user's code may raise anything while tracing
        raise BlockError(f"the block {name}: __call__(z, theta) with z ({d},) and theta ({k},) "
                         f"cannot be traced by JAX ({type(e).__name__}: {_first_line(e)})") from None
    shape = getattr(out, "shape", None)
    if shape != (d,):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise BlockError(f"the block {name}: __call__(z, theta) returns {got} for z of shape "
                         f"({d},); it must return shape ({d},)")


def check_values(feature: AbstractFeatureMap, Z, Theta, limit: int = 64) -> None:
    """f(z; theta) is finite for up to ``limit`` states Z (N, d) and every particle of
    Theta (S, M, k) (S slices of M particles); ``BlockError`` naming one offending pair
    otherwise.

    Each slice is checked through its field sum_m f(Z; theta_m) / M (tiled, so the memory
    is that of one forward pass: a non-finite value makes the sum non-finite); only a slice
    that fails is evaluated particle by particle, to name the culprit.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    Z = jnp.asarray(Z)[:limit]
    Theta = jnp.asarray(Theta).reshape(-1, *np.shape(Theta)[-2:])
    fields = jax.jit(lambda T: jax.lax.map(lambda theta: feature.field(Z, theta), T))(Theta)
    bad_slices = np.flatnonzero(~np.isfinite(np.asarray(fields)).all(axis=(1, 2)))
    if not bad_slices.size:
        return
    sl = int(bad_slices[0])
    values = jax.vmap(lambda t: jax.vmap(lambda z: feature(z, t))(Z))(Theta[sl])  # (M, N, d)
    bad = np.argwhere(~np.isfinite(np.asarray(values)).all(axis=-1))
    m, i = bad[0] if bad.size else (0, 0)  # (a sum that overflowed: name the slice's first)
    theta = np.array2string(np.asarray(Theta[sl, m]), precision=3, threshold=8)
    raise BlockError(f"the block {type(feature).__name__} returns non-finite values at the "
                     f"initial particles (slice {sl}, particle {m}: theta = {theta}, sample {i})")
