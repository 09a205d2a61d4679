"""The study verbs from Python: ``wflow.study.limit`` and ``wflow.study.zero_loss``.

Each does what ``wflow study limit|zero-loss CONFIG -o PATH [--set ...]`` does up to the
study file -- resolve the [study] keys, run (checkpointing the file; resumable), fit -- and
returns the file opened as an ``xarray.DataTree`` (``wflow.open_run``). The printed table
and the figures are left to the caller (``wflow.study.plot_study(path, folder)`` draws the
command's figures).
"""

from __future__ import annotations

import os

from .._config import load_config
from .._io import OutputLock, RunFileError, remove_stale_temporaries
from .._paths import check_output_file
from .._schema import ConfigError

__all__ = ["limit", "zero_loss"]


def limit(config, path, *, overrides=(), resume: bool = False, progress: bool = True):
    """Run ``wflow study limit`` from Python and open its study file.

    Args:
        config: a TOML config with a [study] section (or a wflow file whose stored config is
            rerun), or a config ``wflow.load_config`` returned.
        path: the study file to write (the command's ``-o``); its folder is created. An
            existing file is replaced only with ``output.overwrite = true``, or finished with
            ``resume``.
        overrides: ``"section.key=value"`` strings or ``("section.key", value)`` pairs, as
            ``--set`` (with a config file only).
        resume: finish an interrupted study file written with the same config.
        progress: the progress bar on stderr.

    Returns:
        The study file as an ``xarray.DataTree``: errors (L, M[, D], seed, time), fits
        (``/fit/<metric>``: rms, slopes, the fixed model, the free exponents with 95%
        intervals), the reference and its error floor (docs/studies.md).

    Raises:
        ConfigError: a bad config or [study] section, or a path that cannot be written (what
            the command reports with exit 2); nothing is computed.
    """
    return _study("limit", config, path, overrides, resume, progress)


def zero_loss(config, path, *, overrides=(), resume: bool = False, progress: bool = True):
    """Run ``wflow study zero-loss`` from Python and open its study file.

    The arguments are those of ``limit``; the file holds one history per initial measure
    (``/runs/<init>/history/*`` along s: loss, stationarity residual, sup |grad V| on the
    box, |grad V(0)|, tail mass).
    """
    return _study("zero-loss", config, path, overrides, resume, progress)


def _study(name: str, config, path, overrides, resume: bool, progress: bool):
    from .._dims import open_run
    from ._command import VERBS

    if isinstance(config, dict):
        if overrides:
            raise ValueError("overrides apply to a config file; edit the config dict instead")
    else:
        config = load_config(config, list(overrides))
    path = os.fspath(path)
    check_output_file(path, f"path = {path!r}", "STUDY.h5")
    if resume and not os.path.exists(path):
        raise ConfigError(f"path = {path!r}: no study file to resume (resume=False starts one)")
    if not resume and os.path.exists(path) and not config["output"]["overwrite"]:
        raise ConfigError(f"path = {path!r}: the file exists; set output.overwrite = true in the "
                          "config (overrides=['output.overwrite=true']) or pass resume=True")
    verb = VERBS[name]
    study = verb.resolve(config)
    lock = OutputLock(path, kind="study file", key="path")
    try:
        lock.acquire()  # one writer per study file
    except RunFileError as e:
        raise ConfigError(str(e)) from None
    try:
        remove_stale_temporaries(path)
        status = verb.execute(config, study, path, resume=resume, progress=progress)
    finally:
        lock.release()
    if status != "complete":  # pragma: no cover - no should_stop is passed
        raise RuntimeError(f"{path}: the study stopped with status {status!r}")
    return open_run(path)
