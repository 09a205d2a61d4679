"""The HDF5 study file (``format = "wflow-study"``): written whole and atomically.

A study file is small (errors, not particles), so it is rewritten as a whole
at every checkpoint: written under a temporary name in the same folder, then
``os.replace``d onto the path, so a reader (or a resumed study) never sees a
half-written file, whatever happens to the process. It is sealed like a run file
(``attrs_sha256``) and with a SHA-256 of every dataset (``data_sha256``); every
reader (``check_study_file``, ``read_study``, ``--resume``, ``study plot``)
verifies both, and ``wflow study`` holds the run file's lock (``<path>.lock``)
while it writes.

Root attributes: ``format`` = "wflow-study", ``format_version`` = 1, ``kind``
("limit" or "zero-loss"), ``wflow_version``, ``config`` (the resolved config
with the resolved [study] section, TOML text), ``status`` ("running",
"interrupted", "complete"), ``seed``, ``created_utc``, ``jax_version``,
``backend``, ``wall_time`` (seconds of work so far, over resumes).

Limit study (``kind = "limit"``; the grid axes are (n_L, n_M) or, with
``study.dims``, (n_L, n_M, n_D); S = seeds, T = times)::

    /study/L (n_L,), /study/M (n_M,), /study/dims (n_D,), /study/times (T,),
    /study/seeds (S,)                         repetition indices 0..S-1
    /errors/<metric>     (grid..., S, T)      one per metric of study.metrics (``_metrics``)
                                              (NaN: not computed yet, or diverged)
    /values/loss         (grid..., S, T)      E of the finite networks
    /done                (grid..., S)         uint8, 1 = computed (the checkpoint)
    /reference/loss      (S, T) for "particles", (grid..., S, T) for "continuous"
    /reference/prediction, /reference/state   ("particles", "grid": (S, T, N, d_out),
                                              (S, T, N, D_ref); the quantities the metrics need)
    /reference/done      (S,)                 "particles": uint8, 1 = reference run computed
    /reference/floor/<metric>   (T,)          the reference's own error (``_floor``)
    /fit/<metric>/rms, rms_err   (grid..., T)  RMS over seeds and its bootstrap std
    /fit/<metric>/slope_L, slope_L_err  (T, n_M[, n_D])   log-log slope against L
    /fit/<metric>/slope_M, slope_M_err  (T, n_L[, n_D])   against M
    /fit/<metric>/slope_D, slope_D_err  (T, n_L, n_M)     against D (with dims)
    /fit/<metric>/model, model_err      (T, 2|3)   a, b[, c] of the model (attr ``model``)
    /fit/<metric>/model_r2, model_n, model_aic  (T,)  R^2 and AIC on log err, points used
    /fit/<metric>/free          (T, P)      the free-exponent fit a L^-p + b (L M)^-q
                                            [+ c D^-r], attribute ``params`` (["a", "p", "b",
                                            "q"[, "c", "r"]]) and ``note`` (what the sweep does
                                            not identify); NaN: not fitted
    /fit/<metric>/free_ci       (T, P, 2)   95% intervals: the seed bootstrap's and the
                                            residuals' (lack of fit) errors in quadrature
                                            (``_fit.exponent_interval``)
    /fit/<metric>/free_se       (T, P)      the exponents' standard errors from the residuals
    /fit/<metric>/free_p_corrected, free_correction  (T,)  p and e of a L^-p (1 + e / L) where
                                            that fit has the lower AIC (p's interval then
                                            covers its interval too); NaN otherwise
    /fit/<metric>/free_r2, free_aic, free_n, free_dof  (T,)  (dof: points - fitted parameters)
    /fit/<metric>/theory_inside (T, P)      1 / 0: the theory's exponent (1, 1/2, 1/2, times the
                                            metric's ``order``: 2 for Sinkhorn; attribute
                                            ``theory`` of ``free``) in the interval; NaN for
                                            coefficients, exponents not fitted
    /fit/<metric>/free_better   (T,)        1: the free fit has the lower AIC
    /fit/<metric>/below_floor   (grid..., T)  1: RMS error below 3x the floor (not fitted)
    /fit/<metric>/floor_excluded (T,)       how many points that is
    /data/x, /data/y

Zero-loss study (``kind = "zero-loss"``), one group per initial measure::

    /runs/<init>/history/s, loss, stationarity, sup_grad_v, grad_v_origin,
                 tail_mass, wall_time   (n,)
    /runs/<init>/snapshots/s (n_snap,), /runs/<init>/snapshots/theta (n_snap, L, M, k)
    /runs/<init>/state/theta, step, key, initial_loss, status
                                           the resumable state; status "running",
                                           "complete", "diverged" or "interrupted"
    /box/query (Q, k)                      the query points of sup |grad V|
    /data/x, /data/y
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime

import h5py
import numpy as np

from .._io import RunFileError, as_text, check_format, verify_file
from .._schema import ConfigError, to_toml

FORMAT = "wflow-study"
FORMAT_VERSION = 1

__all__ = ["FORMAT", "StudyFileError", "check_study_file", "config_text", "read_study",
           "resume_study", "write_study"]


class StudyFileError(ValueError):
    """A file that is not a readable wflow study file."""


def write_study(path: str, attrs: dict, arrays: dict) -> None:
    """Write ``arrays`` ({"group/name": array}) and root ``attrs`` to ``path`` atomically.

    A key "group/name@attr" is the attribute ``attr`` of the dataset "group/name" (read back
    by ``read_study`` under the same key).
    """
    import jax

    from .. import __version__
    from .._io import commit_h5

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    base = {"format": FORMAT, "format_version": FORMAT_VERSION, "wflow_version": __version__,
            "jax_version": jax.__version__, "backend": jax.default_backend(),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}

    def build(f):
        for name, value in {**base, **attrs}.items():
            f.attrs[name] = value
        for name, value in arrays.items():
            if "@" not in name:
                f.create_dataset(name, data=value if isinstance(value, str) else np.asarray(value))
        for name, value in arrays.items():  # "group/name@attr": an attribute of that dataset
            if "@" in name:
                target, attr = name.split("@")
                f[target].attrs[attr] = value

    # temporary file, fsync, rename: old or new, never half; sealed with checksums of the
    # attributes and of every dataset (verified by every reader)
    commit_h5(path, build, fresh=True, seal_data=True)


def check_study_file(path: str) -> dict:
    """Root attributes of a study file whose checksums hold (``attrs_sha256``, ``data_sha256``:
    ``_io.verify_file``); ``StudyFileError`` naming the file otherwise."""
    attrs = check_format(path, FORMAT, FORMAT_VERSION, "study", StudyFileError)
    try:
        verify_file(path)
    except RunFileError as e:
        raise StudyFileError(str(e)) from None
    return attrs


def read_study(path: str) -> dict:
    """The whole study file: ``attrs`` and one entry per dataset path ("errors/hidden", ...)."""
    attrs = check_study_file(path)
    out: dict = {"attrs": attrs}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                out[name] = as_text(value) if isinstance(value, bytes) else np.asarray(value)
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = as_text(v) if isinstance(v, (str, bytes)) else v

        f.visititems(visit)
    return out


def config_text(config: dict, study: dict) -> str:
    """The ``config`` attribute: the resolved config (less [output]) with the resolved [study]."""
    stored = {k: v for k, v in config.items() if k != "output"}
    stored["study"] = {k: v for k, v in study.items() if v is not None}
    return to_toml(stored)


def resume_study(path: str, text: str, kind: str) -> dict:
    """The study file to resume (``read_study``), checked: a readable wflow study file of this
    ``kind``, not complete, written with the same config ``text`` (``config_text``).

    Raises ConfigError naming ``-o path`` otherwise.
    """
    try:
        attrs = check_study_file(path)
    except ValueError as e:
        raise ConfigError(f"-o {path}: {e}") from None
    if attrs.get("kind") != kind:
        raise ConfigError(f"-o {path}: a {attrs.get('kind')!r} study file; this is wflow study "
                          f"{kind}")
    if attrs.get("status") == "complete":
        raise ConfigError(f"-o {path}: the study is already complete; nothing to resume")
    if tomllib.loads(attrs.get("config", "")) != tomllib.loads(text):
        raise ConfigError(f"-o {path}: the config stored in the study file differs from this one "
                          "(with --set applied); --resume needs the same config")
    return read_study(path)
