"""Figures of a study file: ``plot_study(path, out_dir)`` -> list of PNG paths.

Limit study (``kind = "limit"``), at the last study time, one column per metric of
the study (``study.metrics``), its axis labelled with the metric's ``label``:

* ``limit_L.png``   RMS error against L, one line per M (per D: the largest D),
                    with the better-fitting model (lower AIC on log residuals) of the
                    free-exponent fit a L^-p + b (LM)^-q [+ c D^-r] and the fixed one
                    a/L + b/sqrt(LM) [+ c/sqrt(D)] drawn over the points (dashed; dotted and
                    labelled "poor fit" when its R^2 < 0.9), seed bootstrap error bars and
                    the reference's own error (``/reference/floor``) as a grey band;
* ``limit_M.png``   against M, one line per L (largest D);
* ``limit_D.png``   against D, one line per M (largest L), with dims;
* ``limit_map.png`` heat map of log10 error over (L, M) (with dims: over (M, D) at the
                    largest L).

Zero-loss study: ``zero_loss.png``: E(s)/E(0), stationarity residual, sup over the
box of |grad_theta V| and tail mass against s, one line per initial measure
(delta_0 and full support side by side); a curve that is exactly zero (the
delta_0 residual) is drawn at the bottom of its log axis and labelled "= 0".

matplotlib's object API only (no pyplot), as in ``wflow/_plot.py``.
"""

from __future__ import annotations

import os
import tomllib

import numpy as np
from matplotlib.figure import Figure

from ._file import read_study
from ._fit import free_model, model_terms
from ._metrics import STUDY_METRICS

__all__ = ["limit_figures", "plot_study", "zero_loss_figures"]

DPI = 120


def plot_study(path: str, out_dir: str) -> list[str]:
    data = read_study(path)
    os.makedirs(out_dir, exist_ok=True)
    kind = data["attrs"].get("kind")
    figures = limit_figures(data) if kind == "limit" else zero_loss_figures(data)
    return [_save(fig, out_dir, name) for name, fig in figures.items()]


def _save(fig: Figure, out_dir: str, name: str) -> str:
    p = os.path.join(out_dir, name)
    fig.savefig(p, dpi=DPI, bbox_inches="tight")
    return p


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def _label(metric: str) -> str:
    """The metric's axis label (its name for a metric this version does not know)."""
    known = STUDY_METRICS.get(metric)
    return metric if known is None else known.label


class _Limit:
    """A limit study file's errors at its last time, as the figures read them."""

    def __init__(self, data: dict):
        cfg = tomllib.loads(data["attrs"]["config"])
        self.data = data
        # the study's metrics, in its own order, that have fits (a complete study)
        self.metrics = [m for m in cfg["study"].get("metrics", []) if f"fit/{m}/rms" in data]
        self.L, self.M = data["study/L"].astype(float), data["study/M"].astype(float)
        self.dims = data.get("study/dims")
        times = data["study/times"]
        self.t = len(times) - 1
        self.model = data["attrs"].get("fit_model", "")
        self.title = (f"s = {times[self.t]:g}, reference {cfg['study']['reference']}, "
                      f"{len(data['study/seeds'])} seeds")
        self.D = self.dims.astype(float) if self.dims is not None else np.asarray([np.nan])
        self.iD = len(self.D) - 1
        self.dlabel = f", D = {int(self.D[self.iD])}" if self.dims is not None else ""
        # what a particle is: a head for attention blocks (sequence data), else a neuron
        feature = str(cfg.get("model", {}).get("feature", ""))
        self.units = "heads" if "attention" in feature or cfg.get("data", {}).get("tokens") \
            else "neurons"

    def rms(self, metric):
        """RMS over seeds and its bootstrap std, (n_L, n_M, n_D) (n_D = 1 without dims)."""
        t, data = self.t, self.data
        rms, err = data[f"fit/{metric}/rms"][..., t], data.get(f"fit/{metric}/rms_err")
        err = err[..., t] if err is not None else np.zeros_like(rms)
        if self.dims is not None:  # (L, M, D)
            return rms, err
        return rms[..., None], err[..., None]

    def better(self, metric) -> tuple[str, float]:
        """("free" | "fixed", its R^2): the model with the lower AIC (the fixed one in a file
        without free fits)."""
        t, data = self.t, self.data
        fb = data.get(f"fit/{metric}/free_better")
        if fb is not None and fb[t] and np.any(np.isfinite(data[f"fit/{metric}/free"][t])):
            return "free", float(data[f"fit/{metric}/free_r2"][t])
        return "fixed", float(data[f"fit/{metric}/model_r2"][t])

    def model_at(self, metric, Lv, Mv, Dv):
        """The better fitted model (``better``) at the points (Lv, Mv, Dv), or None if it was
        not fitted."""
        D = Dv if self.dims is not None else None
        if self.better(metric)[0] == "free":
            return free_model(self.data[f"fit/{metric}/free"][self.t], Lv, Mv, D)
        coef = self.data[f"fit/{metric}/model"][self.t]
        if not np.any(np.isfinite(coef)):
            return None
        coef = np.where(np.isfinite(coef), coef, 0.0)  # a term not swept is left out
        return model_terms(Lv, Mv, D) @ coef

    def floor(self, metric) -> float | None:
        """The reference's own error at the figure's time (``/reference/floor``), or None."""
        f = self.data.get(f"reference/floor/{metric}")
        return None if f is None or not np.isfinite(f[self.t]) else float(f[self.t])

    def panels(self):
        """A figure with one panel per metric: (fig, [(ax, metric), ...])."""
        n = len(self.metrics)
        fig = Figure(figsize=(4.6 * n, 3.9), layout="constrained")
        return fig, [(fig.add_subplot(1, n, i + 1), m) for i, m in enumerate(self.metrics)]


def limit_figures(data: dict) -> dict[str, Figure]:
    """The figures of a limit study (module docstring), by file name; one panel per metric."""
    s = _Limit(data)
    figures = {}
    if len(s.L) >= 2:
        figures["limit_L.png"] = _against(s, "L")
    if len(s.M) >= 2:
        figures["limit_M.png"] = _against(s, "M")
    if s.dims is not None and len(s.dims) >= 2:
        figures["limit_D.png"] = _against(s, "D")
    figures["limit_map.png"] = _heat_map(s)
    return figures


def _against(s: _Limit, over: str) -> Figure:
    """Error against L (one line per M), M (one line per L) or D (per M, at the largest L).

    A line is (legend, index into the (n_L, n_M, n_D) errors, its fixed (L, M, D) with None
    for the swept variable).
    """
    L, M, D, iD = s.L, s.M, s.D, s.iD
    if over == "L":
        xs, xlabel, title = L, "L (layers)", f"against L{s.dlabel}"
        lines = [(f"M = {int(m)}", (slice(None), j, iD), (None, m, D[iD]))
                 for j, m in enumerate(M)]
    elif over == "M":
        xs, xlabel, title = M, f"M ({s.units} per layer)", f"against M{s.dlabel}"
        lines = [(f"L = {int(l)}", (i, slice(None), iD), (l, None, D[iD]))
                 for i, l in enumerate(L)]
    else:
        iL = len(L) - 1
        xs, xlabel, title = D, "D (state dimension)", f"against D, L = {int(L[iL])}"
        pick = np.unique(np.linspace(0, len(M) - 1, min(len(M), 6)).round().astype(int))
        lines = [(f"M = {int(M[j])}", (iL, j, slice(None)), (L[iL], M[j], None)) for j in pick]
    fig, panels = s.panels()
    cols = _colors(len(lines))
    xf = np.geomspace(xs[0], xs[-1], 50)
    for ax, metric in panels:
        rms, err = s.rms(metric)
        which, r2 = s.better(metric)
        poor = not r2 >= 0.9  # a fit that misses its points is dotted and says so
        style = ":" if poor else "--"
        for c, (label, at, fixed) in enumerate(lines):
            ax.errorbar(xs, rms[at], yerr=err[at], fmt="o", ms=4, color=cols[c], label=label,
                        capsize=2)
            fitv = s.model_at(metric, *(xf if v is None else np.full_like(xf, v) for v in fixed))
            if fitv is not None:
                ax.plot(xf, fitv, style, color=cols[c], lw=1.2 if poor else 1)
        ax.plot([], [], style, color="0.3",
                label=f"{which} fit, R^2 = {r2:.2f}" + (" < 0.9: poor fit" if poor else ""))
        _loglog(ax, xlabel, _label(metric), xs)
        _floor_band(ax, s.floor(metric))
        ax.set_title(f"{metric}: {title}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{s.title}; lines: the model with the lower AIC (free exponents "
                 f"a L^-p + b (LM)^-q, or fixed {s.model}); grey band: the reference's own "
                 "error (floor to 3x floor)", fontsize=8)
    return fig


def _floor_band(ax, floor: float | None) -> None:
    """The reference's error floor as a grey band: below it darker, up to 3x floor lighter
    (points there are left out of the fits)."""
    if floor is None or floor <= 0:
        return
    lo, hi = ax.get_ylim()
    bottom = min(lo, floor / 3)
    ax.axhspan(bottom, floor, color="0.5", alpha=0.3, lw=0, label="reference floor")
    ax.axhspan(floor, 3 * floor, color="0.5", alpha=0.12, lw=0)
    ax.set_ylim(bottom, max(hi, 4 * floor))


def _heat_map(s: _Limit) -> Figure:
    """log10 error over (L, M), or over (M, D) at the largest L with a D sweep."""
    fig, panels = s.panels()
    for ax, metric in panels:
        rms, _ = s.rms(metric)
        if s.dims is not None and len(s.dims) >= 2:
            grid, xs, ys, xl, yl = rms[len(s.L) - 1], s.D, s.M, "D", "M"
            sub = f"L = {int(s.L[-1])}"
        else:
            grid, xs, ys, xl, yl = rms[:, :, s.iD].T, s.L, s.M, "L", "M"
            sub = s.dlabel.lstrip(", ")
        with np.errstate(divide="ignore", invalid="ignore"):
            img = np.log10(np.where(grid > 0, grid, np.nan))
        im = ax.imshow(img, origin="lower", aspect="auto", cmap="magma")
        ax.set_xticks(range(len(xs)), [f"{int(v)}" for v in xs], fontsize=7, rotation=90)
        ax.set_yticks(range(len(ys)), [f"{int(v)}" for v in ys], fontsize=7)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{metric}: log10 error {sub}", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85, label=_label(metric))
    fig.suptitle(s.title, fontsize=9)
    return fig


def _loglog(ax, xlabel, ylabel, xs=None):
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    if xs is not None and len(xs) <= 10:  # label the swept values themselves
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def zero_loss_figures(data: dict) -> dict[str, Figure]:
    """The figure of a zero-loss study (module docstring), by file name."""
    names = sorted({k.split("/")[1] for k in data if k.startswith("runs/")},
                   key=lambda n: (n != "point", n))
    panels = (("loss", "E(s) / E(0)"), ("stationarity", "stationarity residual"),
              ("sup_grad_v", "sup over the box of |grad V|"), ("tail_mass", "tail mass"))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    cols = {n: c for n, c in zip(names, ["tab:red", "tab:blue", "tab:green", "tab:purple"],
                                 strict=False)}
    for ax, (col, label) in zip(axes, panels, strict=True):
        for name in names:
            s = data[f"runs/{name}/history/s"]
            v = data[f"runs/{name}/history/{col}"].astype(float)
            if col == "loss":
                v = v / v[0] if v[0] > 0 else v
            lab = "delta_0" if name == "point" else name
            if col != "tail_mass" and np.all(v == 0):
                ax.plot(s, np.zeros_like(s), color=cols[name], lw=2, label=f"{lab} (= 0)")
                continue
            ax.plot(s, v, color=cols[name], lw=1.6, label=lab)
        if col != "tail_mass":
            ax.set_yscale("symlog", linthresh=_linthresh(data, names, col))
        ax.set_xlabel("training time s")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    cfg = tomllib.loads(data["attrs"]["config"])
    fig.suptitle(f"zero-loss study: {cfg['data']['kind']} data, {cfg['model']['activation']}, "
                 f"L = {cfg['solver']['L']}, M = {cfg['solver']['M']}; box [-{cfg['study']['box']:g}, "
                 f"{cfg['study']['box']:g}]^k", fontsize=9)
    return {"zero_loss.png": fig}


def _linthresh(data, names, col) -> float:
    """Linear range of the symlog axis: below the smallest positive value drawn (exact zeros
    sit at 0, everything else on the log part)."""
    vals = []
    for name in names:
        v = data[f"runs/{name}/history/{col}"].astype(float)
        if col == "loss" and v[0] > 0:
            v = v / v[0]
        vals.extend(v[v > 0].tolist())
    return float(min(vals)) / 2 if vals else 1e-12
