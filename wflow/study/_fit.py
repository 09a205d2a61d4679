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

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "THEORY_EXPONENTS",
    "FreeFit",
    "ModelFit",
    "aggregate",
    "aic",
    "bootstrap_indices",
    "exponent_interval",
    "fit_free",
    "fit_model",
    "free_model",
    "free_params",
    "identified",
    "log_rss",
    "model_terms",
    "slope",
]


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


# ----------------------------------------------------------------------------- free exponents

THEORY_EXPONENTS = {"p": 1.0, "q": 0.5, "r": 0.5}
"""The theory's exponents of err ~ a L^-p + b (L M)^-q + c D^-r (docs/theory.md)."""

# exponents are searched in [0, MAX_EXPONENT]; coefficients in log space within +-LOG_RANGE
MAX_EXPONENT = 4.0
_LOG_RANGE = 60.0


class FreeFit(NamedTuple):
    """A free-exponent fit err ~ a L^-p + b (L M)^-q [+ c D^-r] (``fit_free``).

    ``params``: the names ("a", "p", "b", "q"[, "c", "r"]); ``value`` their values, NaN for
    what the sweep does not identify; ``note`` says what was left out and why ("" if nothing).
    ``aic`` = n log(rss / n) + 2 k with rss the sum of squared log residuals and k the
    number of fitted parameters. ``se`` (P,): the exponents' standard errors from the
    residuals (lack of fit), s^2 (J^T J)^-1 with s^2 = rss / (n - k) and J the Jacobian of
    the log residuals at the solution, NaN for coefficients and where n <= k; ``dof`` = n - k.
    ``correction``: e of a fit with ``fit_free(correction=True)``, else NaN.
    """

    params: tuple[str, ...]
    value: np.ndarray
    r2: float
    aic: float
    n: int
    note: str
    se: np.ndarray = np.full(0, np.nan)
    dof: int = 0
    correction: float = float("nan")


def free_params(with_dims: bool) -> tuple[str, ...]:
    return ("a", "p", "b", "q") + (("c", "r") if with_dims else ())


def free_model(params: np.ndarray, L, M, D=None) -> np.ndarray:
    """a L^-p + b (L M)^-q [+ c D^-r]; a term with a NaN coefficient is left out and a term
    with a NaN exponent is the constant coefficient (its variable is not swept)."""
    L, M = np.asarray(L, np.float64), np.asarray(M, np.float64)
    params = np.asarray(params, np.float64)
    xs = [L, L * M] + ([np.asarray(D, np.float64)] if D is not None else [])
    out = np.zeros(np.broadcast(*xs).shape)
    for i, x in enumerate(xs):
        c, e = params[2 * i], params[2 * i + 1]
        if np.isfinite(c):
            out = out + c * (x ** -e if np.isfinite(e) else 1.0)
    return out


def identified(n_L: int, n_M: int, n_D: int | None) -> tuple[np.ndarray, str]:
    """Which parameters of ``free_params`` a sweep of n_L x n_M [x n_D] values identifies.

    Returns a (P,) int array: 1 fitted, 0 a constant term (coefficient fitted, exponent
    NaN: its variable has one value), -1 left out (NaN). With one L the depth term a L^-p is
    a constant; with one M the width term b (L M)^-q is a power of L like the depth term,
    so only err ~ a L^-p is fitted; with one D the term c D^-r is a constant that cannot
    be told from a L^-p's, so it is left out. The note says so.
    """
    use = [1, 1, 1, 1] + ([1, 1] if n_D is not None else [])
    notes = []
    if n_M < 2 and n_L >= 2:
        use[2] = use[3] = -1
        notes.append("one M: the width term (L M)^-q is a power of L like the depth term; "
                     "fitted err ~ a L^-p only")
    elif n_L < 2:
        use[1] = 0
        notes.append("one L: a L^-p is a constant (p not identified)")
        if n_M < 2:
            use[2] = use[3] = -1
    if n_D is not None and n_D < 2:
        use[4] = use[5] = -1
        notes.append("one D: the term c D^-r is left out")
    return np.asarray(use), "; ".join(notes)


def fit_free(L, M, err, D=None, use=None, start=None, correction: bool = False) -> FreeFit:
    """Least squares of log err against log(a L^-p + b (L M)^-q [+ c D^-r]).

    ``correction``: the depth term with its first correction, a L^-p (1 + e / L) with e of
    either sign (a depth discretization's error expands in powers of 1/L); one parameter
    more, ``FreeFit.correction`` = e (NaN when p is not fitted or too few points).

    ``L, M, D, err``: flat arrays of the points (non-finite or non-positive errors are left
    out). ``use``: ``identified``'s (P,) array (default: every parameter). The coefficients
    are fitted as their logarithms (so they stay > 0; a term the data do not need goes to a
    tiny coefficient and its exponent is then loosely determined), the exponents in
    [0, MAX_EXPONENT]. ``start``: one starting point (P,) (the bootstrap starts from the
    main fit); default: a few starts around the theory's exponents, the best kept.
    Too few points (n <= number of fitted parameters) give NaN.
    """
    from scipy.optimize import least_squares

    err = np.asarray(err, np.float64).ravel()
    cols = [np.asarray(L, np.float64).ravel(), np.asarray(L, np.float64).ravel()
            * np.asarray(M, np.float64).ravel()]
    if D is not None:
        cols.append(np.asarray(D, np.float64).ravel())
    names = free_params(D is not None)
    use = np.ones(len(names), int) if use is None else np.asarray(use)
    ok = np.isfinite(err) & (err > 0)
    le = np.log(err[ok])
    logx = [np.log(c[ok]) for c in cols]
    terms = [i for i in range(len(cols)) if use[2 * i] >= 0]
    free_e = [i for i in terms if use[2 * i + 1] == 1]
    corrected = correction and 0 in free_e
    Lmin = float(np.min(cols[0][ok])) if ok.any() else 1.0
    k = len(terms) + len(free_e) + int(corrected)
    nan = FreeFit(names, np.full(len(names), np.nan), float("nan"), float("nan"), int(ok.sum()),
                  "", np.full(len(names), np.nan), 0)
    if ok.sum() <= k or not terms:
        return nan

    # x = [log c_i for i in terms] + [e_i for i in free_e]
    def unpack(x):
        logc = dict(zip(terms, x[:len(terms)], strict=True))
        ex = dict(zip(free_e, x[len(terms):len(terms) + len(free_e)], strict=True))
        return logc, ex

    def parts(x):
        logc, ex = unpack(x)
        out = [(i, np.exp(logc[i] - ex.get(i, 0.0) * logx[i])) for i in terms]
        if corrected:  # the depth term times (1 + e / L)
            out[0] = (0, out[0][1] * (1.0 + x[-1] / np.exp(logx[0])))
        return out

    def resid(x):
        total = sum(p for _, p in parts(x))
        return np.log(np.maximum(total, 1e-300)) - le

    def jac(x):
        ps = parts(x)
        total = np.maximum(sum(p for _, p in ps), 1e-300)
        J = np.empty((le.size, x.size))
        for j, (i, p) in enumerate(ps):
            J[:, j] = p / total
        for j, i in enumerate(free_e):
            J[:, len(terms) + j] = -dict(ps)[i] * logx[i] / total
        if corrected:
            inv_L = np.exp(-logx[0])
            J[:, -1] = dict(ps)[0] * inv_L / (1.0 + x[-1] * inv_L) / total
        return J

    lo = np.r_[np.full(len(terms), -_LOG_RANGE), np.zeros(len(free_e))]
    hi = np.r_[np.full(len(terms), _LOG_RANGE), np.full(len(free_e), MAX_EXPONENT)]
    if corrected:  # 1 + e / L > 0 at every L of the sweep
        lo, hi = np.r_[lo, -0.99 * Lmin], np.r_[hi, 100.0 * Lmin]
    if start is not None and np.all(np.isfinite(start[[2 * i for i in terms]])):
        starts = [np.r_[np.log(np.maximum(start[[2 * i for i in terms]], 1e-20)),
                        np.clip(start[[2 * i + 1 for i in free_e]], 0.0, MAX_EXPONENT)]]
    else:
        theory = [THEORY_EXPONENTS["pqr"[i]] for i in free_e]
        base = np.log(np.exp(le).mean() / len(terms))
        starts = []
        for f in (1.0, 0.5, 2.0):
            e0 = np.clip(np.asarray(theory) * f, 0.0, MAX_EXPONENT)
            logc = [base + (e0[free_e.index(i)] * logx[i].mean() if i in free_e else 0.0)
                    for i in terms]
            starts.append(np.r_[logc, e0])
    if corrected:
        starts = [np.r_[x0, e] for x0 in starts for e in (0.0, Lmin, -0.5 * Lmin)]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        sol = least_squares(resid, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac")
        if best is None or sol.cost < best.cost:
            best = sol
    logc, ex = unpack(best.x)
    value = np.full(len(names), np.nan)
    for i in terms:
        value[2 * i] = math.exp(logc[i])
        value[2 * i + 1] = ex.get(i, np.nan)
    rss = float(np.sum(resid(best.x) ** 2))
    n = int(ok.sum())
    ss_tot = float(np.sum((le - le.mean()) ** 2))
    r2 = 1.0 - rss / ss_tot if ss_tot > 0 else float("nan")
    se = np.full(len(names), np.nan)
    J = jac(best.x)
    with np.errstate(all="ignore"):
        cov = (rss / (n - k)) * np.linalg.pinv(J.T @ J)
    for j, i in enumerate(free_e):
        v = cov[len(terms) + j, len(terms) + j]
        se[2 * i + 1] = math.sqrt(v) if np.isfinite(v) and v >= 0 else np.nan
    return FreeFit(names, value, r2, aic(rss, n, k), n, "", se, n - k,
                   float(best.x[-1]) if corrected else float("nan"))


def exponent_interval(value: np.ndarray, boot_lo: np.ndarray, boot_hi: np.ndarray,
                      se: np.ndarray, dof: int, level: float = 0.95) -> np.ndarray:
    """The interval of a fitted exponent from both of its sources of error, (..., 2).

    The seed bootstrap (``boot_lo``, ``boot_hi``: its percentiles) measures the sampling
    noise of the finite networks; it cannot see that the model itself misses the data (a
    subleading term such as 1/L^2 bends the log-log line, identically for every seed, and
    then the bootstrap interval is narrow around a biased value). The residuals' standard
    error ``se`` (``FreeFit.se``, with ``dof`` degrees of freedom) measures that lack of
    fit. The two are independent and add in quadrature on each side:
    value -/+ sqrt(bootstrap half-width^2 + (t_{dof} se)^2), t the Student quantile.
    With no residual degrees of freedom (or no se) it is the bootstrap interval as is.
    """
    from scipy.stats import t as student

    value, lo, hi, se = (np.asarray(a, np.float64) for a in (value, boot_lo, boot_hi, se))
    if dof < 1:
        return np.stack([lo, hi], axis=-1)
    q = float(student.ppf(0.5 + level / 2, dof))
    extra = np.where(np.isfinite(se), q * se, 0.0)
    with np.errstate(invalid="ignore"):
        below = np.sqrt(np.maximum(value - lo, 0.0) ** 2 + extra ** 2)
        above = np.sqrt(np.maximum(hi - value, 0.0) ** 2 + extra ** 2)
    return np.stack([value - below, value + above], axis=-1)


def aic(rss: float, n: int, k: int) -> float:
    """Akaike's criterion of a least-squares fit on log residuals: n log(rss / n) + 2 k."""
    return n * math.log(max(rss, 1e-300) / n) + 2 * k


def log_rss(model: np.ndarray, err: np.ndarray) -> float:
    """Sum of squared log residuals over the points where both are finite and > 0."""
    ok = np.isfinite(err) & (err > 0) & np.isfinite(model) & (model > 0)
    return float(np.sum((np.log(model[ok]) - np.log(err[ok])) ** 2))
