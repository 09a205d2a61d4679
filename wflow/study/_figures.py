"""Figures of a study file: ``plot_study(path, out_dir)`` -> list of PNG paths.

Limit study (``kind = "limit"``), at the last study time, one column per metric:

* ``limit_L.png``   RMS error against L, one line per M (per D: the largest D),
                    with the fitted model a/L + b/sqrt(LM) [+ c/sqrt(D)] drawn over the
                    points (dashed) and seed bootstrap error bars;
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
from ._fit import model_terms

__all__ = ["plot_study"]

DPI = 120
METRIC_LABEL = {"loss": "|E - E_ref|", "output": "RMS |g - g_ref| (output)",
                "hidden": "RMS |z(1) - z_ref(1)| (hidden)"}


def plot_study(path: str, out_dir: str) -> list[str]:
    data = read_study(path)
    os.makedirs(out_dir, exist_ok=True)
    if data["attrs"].get("kind") == "limit":
        return _limit(data, out_dir)
    return _zero_loss(data, out_dir)


def _save(fig: Figure, out_dir: str, name: str) -> str:
    p = os.path.join(out_dir, name)
    fig.savefig(p, dpi=DPI, bbox_inches="tight")
    return p


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def _limit(data: dict, out_dir: str) -> list[str]:
    cfg = tomllib.loads(data["attrs"]["config"])
    metrics = [m for m in ("loss", "output", "hidden") if f"fit/{m}/rms" in data]
    L, M = data["study/L"].astype(float), data["study/M"].astype(float)
    dims = data.get("study/dims")
    times = data["study/times"]
    t = len(times) - 1
    model = data["attrs"].get("fit_model", "")
    paths = []
    ref = cfg["study"]["reference"]
    title = f"s = {times[t]:g}, reference {ref}, {len(data['study/seeds'])} seeds"

    def panel_grid(n):
        fig = Figure(figsize=(4.6 * n, 3.9), layout="constrained")
        return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]

    def rms_of(metric):
        rms, err = data[f"fit/{metric}/rms"][..., t], data.get(f"fit/{metric}/rms_err")
        err = err[..., t] if err is not None else np.zeros_like(rms)
        if dims is not None:  # (L, M, D)
            return rms, err
        return rms[..., None], err[..., None]

    def model_of(metric, Lv, Mv, Dv):
        coef = data[f"fit/{metric}/model"][t]
        if not np.any(np.isfinite(coef)):
            return None
        coef = np.where(np.isfinite(coef), coef, 0.0)  # a term not swept is left out
        return model_terms(Lv, Mv, Dv if dims is not None else None) @ coef

    D_all = dims.astype(float) if dims is not None else np.asarray([np.nan])
    iD = len(D_all) - 1
    dlabel = f", D = {int(D_all[iD])}" if dims is not None else ""

    # error against L, one line per M
    if len(L) >= 2:
        fig, axes = panel_grid(len(metrics))
        cols = _colors(len(M))
        for ax, metric in zip(axes, metrics, strict=True):
            rms, err = rms_of(metric)
            Lf = np.geomspace(L[0], L[-1], 50)
            for j, m in enumerate(M):
                ax.errorbar(L, rms[:, j, iD], yerr=err[:, j, iD], fmt="o", ms=4, color=cols[j],
                            label=f"M = {int(m)}", capsize=2)
                fitv = model_of(metric, Lf, np.full_like(Lf, m), np.full_like(Lf, D_all[iD]))
                if fitv is not None:
                    ax.plot(Lf, fitv, "--", color=cols[j], lw=1)
            _loglog(ax, "L (layers)", METRIC_LABEL[metric], L)
            ax.set_title(f"{metric}: against L{dlabel}", fontsize=10)
            ax.legend(fontsize=7, ncol=2)
        fig.suptitle(f"{title}; dashed: fit {model}", fontsize=9)
        paths.append(_save(fig, out_dir, "limit_L.png"))

    # error against M, one line per L
    if len(M) >= 2:
        fig, axes = panel_grid(len(metrics))
        cols = _colors(len(L))
        for ax, metric in zip(axes, metrics, strict=True):
            rms, err = rms_of(metric)
            Mf = np.geomspace(M[0], M[-1], 50)
            for i, l in enumerate(L):
                ax.errorbar(M, rms[i, :, iD], yerr=err[i, :, iD], fmt="o", ms=4, color=cols[i],
                            label=f"L = {int(l)}", capsize=2)
                fitv = model_of(metric, np.full_like(Mf, l), Mf, np.full_like(Mf, D_all[iD]))
                if fitv is not None:
                    ax.plot(Mf, fitv, "--", color=cols[i], lw=1)
            _loglog(ax, "M (neurons per layer)", METRIC_LABEL[metric], M)
            ax.set_title(f"{metric}: against M{dlabel}", fontsize=10)
            ax.legend(fontsize=7, ncol=2)
        fig.suptitle(f"{title}; dashed: fit {model}", fontsize=9)
        paths.append(_save(fig, out_dir, "limit_M.png"))

    # error against D, one line per M (largest L)
    if dims is not None and len(dims) >= 2:
        fig, axes = panel_grid(len(metrics))
        pick = np.unique(np.linspace(0, len(M) - 1, min(len(M), 6)).round().astype(int))
        cols = _colors(len(pick))
        iL = len(L) - 1
        Df = np.geomspace(D_all[0], D_all[-1], 50)
        for ax, metric in zip(axes, metrics, strict=True):
            rms, err = rms_of(metric)
            for c, j in enumerate(pick):
                ax.errorbar(D_all, rms[iL, j, :], yerr=err[iL, j, :], fmt="o", ms=4,
                            color=cols[c], label=f"M = {int(M[j])}", capsize=2)
                fitv = model_of(metric, np.full_like(Df, L[iL]), np.full_like(Df, M[j]), Df)
                if fitv is not None:
                    ax.plot(Df, fitv, "--", color=cols[c], lw=1)
            _loglog(ax, "D (state dimension)", METRIC_LABEL[metric], D_all)
            ax.set_title(f"{metric}: against D, L = {int(L[iL])}", fontsize=10)
            ax.legend(fontsize=7, ncol=2)
        fig.suptitle(f"{title}; dashed: fit {model}", fontsize=9)
        paths.append(_save(fig, out_dir, "limit_D.png"))

    # heat map
    fig, axes = panel_grid(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        rms, _ = rms_of(metric)
        if dims is not None and len(dims) >= 2:
            grid, xs, ys, xl, yl = rms[len(L) - 1], D_all, M, "D", "M"
            sub = f"L = {int(L[-1])}"
        else:
            grid, xs, ys, xl, yl = rms[:, :, iD].T, L, M, "L", "M"
            sub = dlabel.lstrip(", ")
        with np.errstate(divide="ignore", invalid="ignore"):
            img = np.log10(np.where(grid > 0, grid, np.nan))
        im = ax.imshow(img, origin="lower", aspect="auto", cmap="magma")
        ax.set_xticks(range(len(xs)), [f"{int(v)}" for v in xs], fontsize=7, rotation=90)
        ax.set_yticks(range(len(ys)), [f"{int(v)}" for v in ys], fontsize=7)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{metric}: log10 error {sub}", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title, fontsize=9)
    paths.append(_save(fig, out_dir, "limit_map.png"))
    return paths


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


def _zero_loss(data: dict, out_dir: str) -> list[str]:
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
    return [_save(fig, out_dir, "zero_loss.png")]


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
