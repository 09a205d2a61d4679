"""Datasets (``[data]``, docs/configuration.md, "Configuration reference"), deterministic
from a seed.

All generators return float64 NumPy arrays x (N, d_in) and y (N, d_out); the
caller casts to the run's precision.

* ``teacher``: x ~ N(0, I); y = g(z(1; x)) of a random *teacher* ResNet of the
  model's own family (same feature map, activation, state dimension) with
  ``teacher_depth`` layers of ``teacher_width`` neurons whose parameters are
  i.i.d. N(0, teacher_std^2). A student with the same depth and a width that
  is a multiple of the teacher's can represent it exactly, so zero loss is
  attainable.
* ``sine``: x ~ U[-1, 1]^{d_in}, y = sin(pi x_0) (+ optional Gaussian noise).
* ``gaussian``: random labels, x ~ N(0, I_{d_in} / d_in) and, independently,
  y ~ N(0, I_{d_out} / d_out) (E|x|^2 = E|y|^2 = 1): a memorization task with
  no structure to learn, the data of Chaintron, Chizat and Maass's "ResNets of
  all shapes and sizes" experiments (there x, y ~ N(0, I); docs/configuration.md,
  "Random embedding and readout", for the mapping).
* ``circles``: two concentric circles of radii 1 and 1/2 in R^2 (d_in = 2),
  labels +1 (outer) / -1 (inner), optional radial noise.
* ``file``: ``.npz`` or ``.h5``/``.hdf5`` holding ``x`` (N, d_in) and ``y``
  (N,) or (N, d_out).
* ``in_context_regression`` (sequences of ``tokens`` tokens): per prompt w ~ N(0, I_p / p),
  context tokens (w . x_j, x_j), j < n, and the query (0, x_n), target w . x_n
  (p = ``dim`` - 1; Zhang, Frei and Bartlett's in-context linear regression).
* ``teacher_transformer`` (sequences): tokens x_j ~ N(0, I / d_in), y of a random teacher
  network of the model's own block (attention heads), so zero loss is attainable.
  Sequence inputs are x (N, n, d_in); ``Problem`` takes them flattened to (N, n d_in).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, nothing is
  downloaded): x in [0, 1]^64; y one-hot over ``classes`` (+-1 labels when two
  classes are chosen).

Held-out data (``test_n`` > 0, config ``data.test_n``), deterministic from the
seed and never overlapping the training set where the data are a finite pool:

* teacher, sine, circles, gaussian: ``test_n`` fresh samples of the same distribution
  (same teacher network), drawn from a generator seeded by (seed, 0x7E57)
  that is independent of the training draws, so the training set is the
  same with or without a test set;
* digits: the images that follow the training images in the seeded
  permutation (n + test_n must not exceed the images of the chosen classes);
* file: ``test_n`` rows chosen at random (seeded) are held out; the training
  set is the remaining N_file - test_n rows in file order.

``make_dataset`` returns the training part, ``make_test_set`` the held-out
part (same arguments); ``is_labelled`` says whether accuracies are defined.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

class DataError(ValueError):
    """Malformed or missing data; the message names the offending key."""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0xDA7A]))


def _test_rng(seed: int) -> np.random.Generator:
    """The held-out set's generator: independent of the training draws (module docstring)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x7E57]))


def is_labelled(kind: str, y: np.ndarray) -> bool:
    """True for class labels: circles and digits, and file data whose y is +-1 (one column)
    or one-hot (several columns); accuracies are recorded for labelled data."""
    if kind in ("circles", "digits"):
        return True
    if kind != "file" or y.size == 0:
        return False
    if y.shape[1] == 1:
        return bool(np.all(np.abs(y) == 1.0))
    return bool(np.all((y == 0.0) | (y == 1.0)) and np.all(y.sum(axis=1) == 1.0))


def _circles(rng: np.random.Generator, n: int, noise: float):
    label = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    rng.shuffle(label)
    radius = np.where(label > 0, 1.0, 0.5) + noise * rng.normal(size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return x, label[:, None]


def load_array_file(path: str, names: tuple[str, ...], key: str) -> dict[str, np.ndarray]:
    """Read arrays ``names`` from a .npz or .h5 file; DataError naming ``key`` otherwise.

    Whatever the file holds (a .npy renamed .npz, a truncated or corrupt archive,
    object, string or complex arrays, non-finite values), the result is either
    real, finite arrays or a one-line DataError.
    """
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "file not found"
        raise DataError(f"{key} = {path!r}: {what}")
    ext = os.path.splitext(path)[1].lower()
    out = {}
    try:
        if ext == ".npz":
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DataError(f"{key} = {path!r}: not an .npz archive (a single .npy array "
                                "renamed?); save the arrays with numpy.savez(path, x=..., y=...)")
            with loaded as f:
                for n in names:
                    if n in f.files:
                        out[n] = np.asarray(f[n])
        elif ext in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                for n in names:
                    if n in f and isinstance(f[n], h5py.Dataset):
                        out[n] = np.asarray(f[n][()])
        else:
            raise DataError(f"{key} = {path!r}: allowed file types are .npz, .h5, .hdf5")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode an untrusted file
        detail = " ".join(str(e).split()) or "no detail"
        raise DataError(f"{key} = {path!r}: cannot be read ({type(e).__name__}: {detail})") from None
    for n, a in out.items():
        if a.dtype.kind == "c":
            raise DataError(f"{key} = {path!r}: array {n!r} is complex ({a.dtype}); the arrays "
                            "must be real")
        if not np.issubdtype(a.dtype, np.number) or a.dtype.kind not in "fiu":
            raise DataError(f"{key} = {path!r}: array {n!r} has dtype {a.dtype}, must be numeric")
        if not np.all(np.isfinite(a)):
            raise DataError(f"{key} = {path!r}: array {n!r} contains non-finite values")
    return out


def teacher_targets(x, feature, *, width: int, depth: int, std: float, out_dim: int, seed: int,
                    tokens: int | None = None):
    """y = g(z(1; x)) of a random layered teacher ResNet (float64 on the host); with
    ``tokens``, x (N, n d_in) are flattened sequences read out at their last token."""
    import jax
    import jax.numpy as jnp

    from ._depth import LayeredDepth
    from ._problem import Problem

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7EAC]))
    theta = rng.normal(0.0, std, size=(depth, width, feature.k))
    dummy_y = np.zeros((x.shape[0], out_dim))
    # Always float64 on the CPU, whatever the process's x64 flag and devices: the
    # same seed gives the same targets everywhere, and y = teacher(x) holds to
    # float64 round-off (the linear teacher gives y = a x exactly,
    # docs/theory.md, "Closed form: linear, d = 1").
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # jax < 0.6
        from jax.experimental import enable_x64
    # local_devices: in a multi-process run jax.devices()[0] belongs to process 0.
    with enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        f64 = jnp.float64
        maps = {}
        if tokens is not None:
            from ._problem import sequence_maps

            A, C = sequence_maps(tokens, feature.d // tokens, x.shape[1] // tokens, out_dim)
            maps = {"embedding": jnp.asarray(A, f64), "readout_matrix": jnp.asarray(C, f64)}
        problem = Problem(feature, jnp.asarray(x, f64), jnp.asarray(dummy_y, f64), **maps)
        y = LayeredDepth().predict(problem, jnp.asarray(theta, f64))
    return np.asarray(y, dtype=np.float64)


def make_dataset(
    kind: str,
    *,
    n: int = 256,
    dim: int = 2,
    seed: int = 0,
    feature=None,
    out_dim: int = 1,
    noise: float = 0.0,
    path: str | None = None,
    teacher_width: int = 4,
    teacher_depth: int = 4,
    teacher_std: float = 1.0,
    classes: tuple[int, ...] | None = None,
    test_n: int = 0,
    tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Build dataset ``kind`` (see the module docstring). Returns the training (x, y), float64.

    ``test_n`` only matters where the held-out rows come out of a finite pool
    (file data lose them; digits check that enough images remain).
    """
    return _make(kind, n=n, dim=dim, seed=seed, feature=feature, out_dim=out_dim, noise=noise,
                 path=path, teacher_width=teacher_width, teacher_depth=teacher_depth,
                 teacher_std=teacher_std, classes=classes, test_n=test_n, tokens=tokens,
                 part="train")


# make_dataset's keywords and their defaults (make_test_set takes the same)
_OPTIONS = {name: p.default for name, p in inspect.signature(make_dataset).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "test_n"}


def make_test_set(kind: str, *, test_n: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """The held-out (x_test (test_n, d_in), y_test (test_n, d_out)) of ``make_dataset``'s data.

    ``options`` are ``make_dataset``'s keywords (n, dim, seed, feature, ...), with the same
    defaults; an unknown keyword is a TypeError.
    """
    if not (isinstance(test_n, int) and test_n >= 1):
        raise DataError(f"data.test_n = {test_n!r}: make_test_set needs an integer >= 1")
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"make_test_set got unknown keyword(s) {sorted(unknown)}; it takes "
                        f"make_dataset's: {', '.join(_OPTIONS)}")
    return _make(kind, **{**_OPTIONS, **options, "test_n": test_n}, part="test")


class Request(NamedTuple):
    """What a data kind is asked for (``make_dataset``'s arguments); ``part`` is "train" or
    "test"."""

    n: int
    dim: int
    seed: int
    feature: Any
    out_dim: int
    noise: float
    path: str | None
    teacher_width: int
    teacher_depth: int
    teacher_std: float
    classes: tuple[int, ...] | None
    test_n: int
    tokens: int | None
    part: str


def _teacher(r: Request, rng: np.random.Generator):
    if r.feature is None:
        raise ValueError("teacher data needs the model's feature map")
    x = rng.normal(size=(r.n, r.dim))
    y = teacher_targets(x, r.feature, width=r.teacher_width, depth=r.teacher_depth,
                        std=r.teacher_std, out_dim=r.out_dim, seed=r.seed)
    if r.noise > 0:
        y = y + r.noise * rng.normal(size=y.shape)
    return x, y


def _sine(r: Request, rng: np.random.Generator):
    x = rng.uniform(-1.0, 1.0, size=(r.n, r.dim))
    return x, np.sin(np.pi * x[:, :1]) + r.noise * rng.normal(size=(r.n, 1))


def _gaussian(r: Request, rng: np.random.Generator):
    x = rng.normal(size=(r.n, r.dim)) / np.sqrt(r.dim)
    y = rng.normal(size=(r.n, r.out_dim)) / np.sqrt(r.out_dim)
    if r.noise > 0:
        y = y + r.noise * rng.normal(size=y.shape)
    return x, y


def _circles_kind(r: Request, rng: np.random.Generator):
    if r.dim != 2:
        raise DataError(f"data.dim = {r.dim}: circles data lives in 2 dimensions (dim = 2)")
    return _circles(rng, r.n, r.noise)


def _file(r: Request, rng: np.random.Generator):
    path = r.path
    if not path:
        raise DataError("data.path is missing: kind = 'file' needs a .npz or .h5 file with x, y")
    arrays = load_array_file(path, ("x", "y"), "data.path")
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(f"data.path = {path!r}: no array named {name!r} in the file")
    x, y = arrays["x"].astype(np.float64), arrays["y"].astype(np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim not in (2, 3) or y.ndim != 2:
        raise DataError(
            f"data.path = {path!r}: x must be (N, d_in), or (N, n, d_in) for sequences of n "
            f"tokens, and y (N,) or (N, d_out); got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"data.path = {path!r}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise DataError(f"data.path = {path!r}: the file holds no samples")
    if 0 in x.shape[1:] or y.shape[1] == 0:
        raise DataError(f"data.path = {path!r}: x has shape {x.shape} and y {y.shape}; "
                        "both need at least one column")
    if r.test_n > 0:
        if r.test_n >= x.shape[0]:
            raise DataError(f"data.test_n = {r.test_n}: the file data.path holds {x.shape[0]} "
                            "samples; at least one must be left for training")
        held = np.zeros(x.shape[0], bool)
        held[_test_rng(r.seed).choice(x.shape[0], size=r.test_n, replace=False)] = True
        keep = held if r.part == "test" else ~held
        x, y = x[keep], y[keep]
    return x, y


def _digits(r: Request, rng: np.random.Generator):
    from sklearn.datasets import load_digits

    data = load_digits()
    classes = tuple(range(10)) if r.classes is None else tuple(int(c) for c in r.classes)
    if len(classes) < 2 or any(c < 0 or c > 9 for c in classes) or len(set(classes)) != len(classes):
        raise DataError(f"data.classes = {list(classes)}: need >= 2 distinct digits in 0..9")
    keep = np.isin(data.target, classes)
    x = data.data[keep] / 16.0
    t = data.target[keep]
    order = _rng(r.seed).permutation(len(t))
    n_train = min(r.n, len(t))
    if r.test_n > 0 and n_train + r.test_n > len(t):
        raise DataError(f"data.test_n = {r.test_n}: the digits {list(classes)} have {len(t)} "
                        f"images; data.n + data.test_n = {n_train + r.test_n} must not exceed it")
    idx = order[n_train : n_train + r.test_n] if r.part == "test" else order[:n_train]
    x, t = x[idx], t[idx]
    if len(classes) == 2:
        y = np.where(t == classes[0], 1.0, -1.0)[:, None]
    else:
        y = (t[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
    return x, y


def _in_context_regression(r: Request, rng: np.random.Generator):
    """Prompts of linear regression: w ~ N(0, I_p / p) per prompt, tokens (w . x_j, x_j) for
    the n - 1 context tokens and (0, x_n) for the query, target w . x_n (p = dim - 1; label
    noise on every label). The label comes first, so the default readout (the first
    coordinate of the last token) reads the query's label slot. x (N, n, p + 1), y (N, 1)."""
    n, p = r.tokens, r.dim - 1
    w = rng.normal(size=(r.n, p)) / np.sqrt(p)
    xs = rng.normal(size=(r.n, n, p))
    labels = np.einsum("inp,ip->in", xs, w)
    if r.noise > 0:
        labels = labels + r.noise * rng.normal(size=labels.shape)
    x = np.concatenate([labels[..., None], xs], axis=2)
    y = labels[:, -1:].copy()
    x[:, -1, 0] = 0.0  # the query's label is what is asked
    return x, y


def _teacher_transformer(r: Request, rng: np.random.Generator):
    """Sequences x of n tokens, x_j ~ N(0, I / d_in), and y = g(z(1; x)) of a random teacher
    network of the model's own family (``teacher_width`` heads in each of ``teacher_depth``
    layers, parameters N(0, teacher_std^2)): zero loss is attainable."""
    if r.feature is None:
        raise ValueError("teacher_transformer data needs the model's block")
    x = rng.normal(size=(r.n, r.tokens, r.dim)) / np.sqrt(r.dim)
    y = teacher_targets(x.reshape(r.n, -1), r.feature, width=r.teacher_width,
                        depth=r.teacher_depth, std=r.teacher_std, out_dim=r.out_dim,
                        seed=r.seed, tokens=r.tokens)
    if r.noise > 0:
        y = y + r.noise * rng.normal(size=y.shape)
    return x, y


class DataKind(NamedTuple):
    """A data kind: ``make(request, rng) -> (x, y)``; ``fresh_test``: the held-out set is
    ``test_n`` fresh samples of the same distribution (else the kind holds them out of a
    finite pool itself)."""

    make: Callable[[Request, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    fresh_test: bool


# The registry of data kinds (config ``data.kind``): adding one is a function and a line.
DATASETS: dict[str, DataKind] = {
    "teacher": DataKind(_teacher, True),
    "sine": DataKind(_sine, True),
    "circles": DataKind(_circles_kind, True),
    "file": DataKind(_file, False),
    "digits": DataKind(_digits, False),
    "gaussian": DataKind(_gaussian, True),
    "in_context_regression": DataKind(_in_context_regression, True),
    "teacher_transformer": DataKind(_teacher_transformer, True),
}


def _make(kind, *, part, **args):
    if kind not in DATASETS:
        raise DataError(f"data.kind = {kind!r}: allowed are {', '.join(DATASETS)}")
    test = part == "test"
    request = Request(**args, part=part)
    if test and DATASETS[kind].fresh_test:
        request = request._replace(n=request.test_n)
    return DATASETS[kind].make(request, _test_rng(request.seed) if test else _rng(request.seed))
