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
    /errors/<metric>     (grid..., S, T)      loss |E - E_ref|, output, hidden
                                              (NaN: not computed yet, or diverged)
    /values/loss         (grid..., S, T)      E of the finite networks
    /done                (grid..., S)         uint8, 1 = computed (the checkpoint)
    /reference/loss      (S, T) for "particles", (grid..., S, T) for "continuous"
    /reference/prediction, /reference/state   ("particles": (S, T, N, d_out), (S, T, N, D_ref))
    /reference/done      (S,)                 "particles": uint8, 1 = reference run computed
    /fit/<metric>/rms, rms_err   (grid..., T)  RMS over seeds and its bootstrap std
    /fit/<metric>/slope_L, slope_L_err  (T, n_M[, n_D])   log-log slope against L
    /fit/<metric>/slope_M, slope_M_err  (T, n_L[, n_D])   against M
    /fit/<metric>/slope_D, slope_D_err  (T, n_L, n_M)     against D (with dims)
    /fit/<metric>/model, model_err      (T, 2|3)   a, b[, c] of the model (attr ``model``)
    /fit/<metric>/model_r2, model_n     (T,)       R^2 on log err, points used
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
from datetime import UTC, datetime

import h5py
import numpy as np

from .._io import RunFileError, _text, check_format, verify_file

FORMAT = "wflow-study"
FORMAT_VERSION = 1

__all__ = ["FORMAT", "StudyFileError", "check_study_file", "read_study", "write_study"]


class StudyFileError(ValueError):
    """A file that is not a readable wflow study file."""


def write_study(path: str, attrs: dict, arrays: dict) -> None:
    """Write ``arrays`` ({"group/name": array}) and root ``attrs`` to ``path`` atomically."""
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
            f.create_dataset(name, data=value if isinstance(value, str) else np.asarray(value))

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
                out[name] = _text(value) if isinstance(value, bytes) else np.asarray(value)
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = _text(v) if isinstance(v, (str, bytes)) else v

        f.visititems(visit)
    return out
