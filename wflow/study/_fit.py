"""Fits of study errors: log-log slopes and the two-term (three-term) model, with bootstrap errors.

Aggregation over repetitions (seeds): the RMS over seeds,

    err(L, M[, D]) = sqrt( mean_r e_r(L, M[, D])^2 ),

the convention of Chaintron, Chizat and Maass (their errors are RMS over
samples, coordinates and repetitions together). Uncertainties come from the
bootstrap over seeds: the seeds are resampled with replacement ``n_boot``
times, the aggregation and the fit are redone, and the standard deviation of
the fitted numbers is reported.

* ``slope``: least squares of log err against log x over the points of one
  line of the grid (all finite and > 0, at least two points); NaN otherwise.
* ``fit_model``: err ~ a / L + b / sqrt(L M)  (fixed state dimension), or
  err ~ a / L + b sqrt(D / (L M)) + c / sqrt(D)  (with a D sweep; the width term
  of "ResNets of all shapes and sizes"), with a, b, c >= 0 found by
  non-negative least squares on the *relative* residuals (model - err) / err,
  so every decade of error counts alike. R^2 is computed on log err:
  1 - sum (log err - log model)^2 / sum (log err - mean log err)^2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ModelFit", "aggregate", "bootstrap_indices", "fit_model", "model_terms", "slope"]


def aggregate(errors: np.ndarray, seed_axis: int = -2) -> np.ndarray:
    """RMS over the seed axis (NaN if any seed is NaN)."""
    return np.sqrt(np.mean(np.square(errors), axis=seed_axis))


def bootstrap_indices(n_seeds: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_seeds) seed indices drawn with replacement (deterministic)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB0075]))
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def slope(x: np.ndarray, err: np.ndarray, axis: int) -> np.ndarray:
    """Least-squares slope of log err against log x along ``axis`` (x matches that axis).

    Lines with a non-finite or non-positive value, or fewer than 2 points, give NaN.
    """
    err = np.moveaxis(np.asarray(err, np.float64), axis, -1)
    n = err.shape[-1]
    if n < 2:
        return np.full(err.shape[:-1], np.nan)
    lx = np.log(np.asarray(x, np.float64))
    lx = lx - lx.mean()
    ok = np.all(np.isfinite(err) & (err > 0), axis=-1)
    ly = np.log(np.where(np.isfinite(err) & (err > 0), err, 1.0))
    s = np.sum(ly * lx, axis=-1) / np.sum(lx * lx)
    return np.where(ok, s, np.nan)


def model_terms(L, M, D=None) -> np.ndarray:
    """Columns of the model: (1/L, 1/sqrt(L M)) or (1/L, sqrt(D/(L M)), 1/sqrt(D)), shape (n, 2|3)."""
    L, M = np.asarray(L, np.float64), np.asarray(M, np.float64)
    if D is None:
        return np.stack([1.0 / L, 1.0 / np.sqrt(L * M)], axis=-1)
    D = np.asarray(D, np.float64)
    return np.stack([1.0 / L, np.sqrt(D / (L * M)), 1.0 / np.sqrt(D)], axis=-1)


class ModelFit(NamedTuple):
    coef: np.ndarray  # (2,) a, b or (3,) a, b, c
    r2: float  # on log err
    n: int  # points used


def fit_model(terms: np.ndarray, err: np.ndarray) -> ModelFit:
    """Non-negative relative least squares of err ~ terms @ coef (module docstring)."""
    from scipy.optimize import nnls  # only a finished study fits: keep ``wflow`` start-up light
    err = np.asarray(err, np.float64).ravel()
    terms = np.asarray(terms, np.float64).reshape(err.size, -1)
    ok = np.isfinite(err) & (err > 0)
    k = terms.shape[1]
    if ok.sum() < k:
        return ModelFit(np.full(k, np.nan), float("nan"), int(ok.sum()))
    X, y = terms[ok] / err[ok, None], np.ones(int(ok.sum()))
    scale = np.max(X, axis=0)  # column scaling: nnls on well-conditioned columns
    scale[scale == 0] = 1.0
    coef, _ = nnls(X / scale, y)
    coef = coef / scale
    model = terms[ok] @ coef
    le = np.log(err[ok])
    with np.errstate(divide="ignore"):
        lm = np.log(model)
    ss_tot = np.sum((le - le.mean()) ** 2)
    r2 = 1.0 - np.sum((le - lm) ** 2) / ss_tot if ss_tot > 0 else float("nan")
    return ModelFit(coef, float(r2), int(ok.sum()))
