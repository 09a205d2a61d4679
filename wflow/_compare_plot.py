"""Figures of one compare file (``_compare``): ``plot_compare(path, out_dir)``.

* ``compare_loss.png``        loss E against the mapped training time s for the mean-field
                              flow (black) and every optimizer; test loss and accuracies
                              beside it when the file has them;
* ``compare_movement.png``    relative parameter movement |Theta(s) - Theta(0)| / |Theta(0)|;
* ``compare_gap.png``         RMS output gap and loss gap between each network and its
                              shallow ensemble over training (Lu et al. 2020);
* ``compare_predictions.png`` final predictions against the targets, one panel per run;
* ``compare_scales.png``      (alpha sweep) loss and movement against s for every alpha and
                              the final movement against alpha (log-log, fitted slope);
* ``compare_reorder.png``     (reordering study) train / test loss (geometric mean over
                              seeds, band exp(mean log +- std log)) and accuracy (mean +- std)
                              against s per reorder mode, and the training loss relative to
                              the plain run of the same seed.

Object-oriented matplotlib only (``Figure``), no pyplot state.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
from matplotlib.figure import Figure

from ._compare import check_compare_file
from ._io import as_text

__all__ = ["plot_compare"]

DPI = 120
MEANFIELD = {"color": "black", "lw": 2.4, "alpha": 0.55, "zorder": 1}
COLORS = {"sgd": "tab:blue", "momentum": "tab:orange", "adam": "tab:green",
          "minibatch": "tab:purple"}
MAX_SCATTER = 4000


def _read(path: str) -> dict:
    check_compare_file(path)
    out = {"runs": {}, "name": os.path.basename(path)}
    with h5py.File(path, "r") as f:
        out["run_names"] = [as_text(n) for n in f.attrs["runs"]]
        for name in out["run_names"]:
            g = f[name]
            out["runs"][name] = {
                "attrs": {k: (as_text(v) if isinstance(v, (str, bytes)) else v)
                          for k, v in g.attrs.items()},
                **{k: np.asarray(g[k][()]) for k in g if isinstance(g[k], h5py.Dataset)}}
        out["data"] = {k: np.asarray(f["data"][k][()]) for k in f["data"]}
        for group in ("scales", "reorder"):
            if group in f:
                g = f[group]
                out[group] = {k: np.asarray(g[k][()]) for k in g}
                out[group]["attrs"] = dict(g.attrs)
    return out


def _style(name: str) -> dict:
    if name == "meanfield":
        return {**MEANFIELD, "label": "mean-field flow"}
    return {"color": COLORS.get(name, None), "lw": 1.4, "label": name}


def _positive(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def _label_run(name: str, run: dict) -> str:
    a = run["attrs"]
    diverged = ", diverged" if a.get("status") != "complete" else ""
    if name == "meanfield":
        return f"mean-field flow ({a.get('method', '')}{diverged})"
    lr = a.get("learning_rate")
    extra = f", lr = {lr:.3g}" if lr is not None else ""
    return f"{name}{extra}{diverged}"


def _save(fig: Figure, out_dir: str, filename: str) -> str:
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=DPI)
    return path


def _series_panel(ax, c: dict, key: str, ylabel: str, log: bool = True, ls: str = "-") -> bool:
    drawn = False
    for name in c["run_names"]:
        run = c["runs"][name]
        if key not in run:
            continue
        v = _positive(run[key]) if log else run[key]
        style = {**_style(name), "label": _label_run(name, run)}
        ax.plot(run["s"], v, ls=ls, **style)
        drawn = True
    if log and drawn:
        ax.set_yscale("log")
    ax.set_xlabel("mapped training time $s$")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    return drawn


def _plot_loss(c: dict, out_dir: str) -> str:
    first = c["runs"]["meanfield"]
    panels = ["loss"] + [k for k in ("test_loss",) if k in first]
    accuracy = "accuracy" in first
    fig = Figure(figsize=(max(8.0, 5.2 * (len(panels) + accuracy)), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels) + accuracy))
    titles = {"loss": "training loss $E$", "test_loss": "held-out (test) loss"}
    for ax, key in zip(axes, panels, strict=False):
        _series_panel(ax, c, key, titles[key])
        ax.set_title(titles[key])
    axes[0].legend(fontsize=8)
    if accuracy:
        ax = axes[-1]
        _series_panel(ax, c, "accuracy", "accuracy", log=False)
        if "test_accuracy" in first:
            for name in c["run_names"]:
                run = c["runs"][name]
                ax.plot(run["s"], run["test_accuracy"], ls="--",
                        **{**_style(name), "label": None})
        ax.set_title("accuracy (solid: train, dashed: test)")
        ax.set_ylim(min(0.4, ax.get_ylim()[0]), 1.02)
    fig.suptitle(f"{c['name']}: finite networks (optax) against the mean-field flow\n"
                 "(s: each optimizer's mapped time, see the time_mapping attributes)", fontsize=11)
    return _save(fig, out_dir, "compare_loss.png")


def _plot_movement(c: dict, out_dir: str) -> str:
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    _series_panel(ax, c, "movement", r"$|\Theta(s) - \Theta(0)|\,/\,|\Theta(0)|$")
    ax.set_title("relative parameter movement")
    ax.legend(fontsize=8)
    fig.suptitle(c["name"], fontsize=11)
    return _save(fig, out_dir, "compare_movement.png")


def _plot_gap(c: dict, out_dir: str) -> str:
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_out, ax_loss = fig.subplots(1, 2)
    _series_panel(ax_out, c, "gap_output",
                  r"RMS$_i\,|g(z(1;x_i)) - g(z_{sh}(x_i))|$")
    ax_out.set_title("output gap: ResNet vs its shallow ensemble")
    ax_out.legend(fontsize=8)
    _series_panel(ax_loss, c, "gap_loss", r"$E(\mathrm{ResNet}) - E(\mathrm{shallow})$", log=False)
    ax_loss.axhline(0.0, color="0.5", lw=0.8)
    ax_loss.set_yscale("symlog", linthresh=max(1e-8, _linthresh(c)))
    ax_loss.set_title("loss gap (signed, symlog)")
    fig.suptitle(f"{c['name']}: shallow ensemble $z_{{sh}}(x) = x + \\alpha\\sum_l w_l F_l(x)$ "
                 "(Lu et al. 2020)", fontsize=11)
    return _save(fig, out_dir, "compare_gap.png")


def _linthresh(c: dict) -> float:
    vals = np.concatenate([np.abs(r["gap_loss"]) for r in c["runs"].values()])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return float(np.min(vals)) if len(vals) else 1e-8


def _plot_predictions(c: dict, out_dir: str) -> str:
    names = c["run_names"]
    y, yt = c["data"]["y"], c["data"].get("y_test")
    fig = Figure(figsize=(3.4 * len(names), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharex=True, sharey=True))
    lo, hi = float(np.min(y)), float(np.max(y))
    for ax, name in zip(axes, names, strict=True):
        run = c["runs"][name]
        p = run["prediction"].ravel()
        idx = np.arange(len(p))[:MAX_SCATTER]
        ax.scatter(y.ravel()[idx], p[idx], s=6, alpha=0.5, color=_style(name)["color"] or "C0",
                   label="train")
        if yt is not None and "test_prediction" in run:
            ax.scatter(yt.ravel()[:MAX_SCATTER], run["test_prediction"].ravel()[:MAX_SCATTER],
                       s=8, marker="x", alpha=0.6, color="tab:red", label="test")
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8)
        ax.set_title(_label_run(name, run), fontsize=9)
        ax.set_xlabel("target $y$")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("prediction $g(z(1; x))$")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{c['name']}: final predictions (all output coordinates)", fontsize=11)
    return _save(fig, out_dir, "compare_predictions.png")


def _plot_scales(c: dict, out_dir: str) -> str:
    sc = c["scales"]
    alpha, s = sc["alpha"], sc["s"]
    test = "test_loss" in sc
    fig = Figure(figsize=(5 * (3 + test), 4.4), layout="constrained")
    axes = fig.subplots(1, 3 + test)
    ax_loss, ax_move, ax_fit = axes[0], axes[-2], axes[-1]
    colors = [f"C{i}" for i in range(len(alpha))]
    panels = [(ax_loss, "loss", "training loss $E$")]
    if test:
        panels.append((axes[1], "test_loss", "held-out (test) loss"))
    panels.append((ax_move, "movement", "relative parameter movement"))
    for ax, key, _ in panels:
        for i, a in enumerate(alpha):
            ax.plot(s, _positive(sc[key][i]), color=colors[i], label=f"alpha = {a:g}")
    for ax, _, title in panels:
        ax.set_yscale("log")
        ax.set_xlabel("training time $s$ (gradient flow of $E/\\alpha^2$)")
        ax.set_title(title)
        ax.grid(True, alpha=0.35)
    ax_loss.legend(fontsize=8)
    final = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan
                      for row in sc["movement"]])
    ok = np.isfinite(final) & (final > 0)
    ax_fit.loglog(alpha[ok], final[ok], "o-", color="tab:blue", label="final movement")
    slope = float(sc["attrs"].get("movement_slope", np.nan))
    if ok.sum() >= 2:
        ref = final[ok][0] * (alpha[ok] / alpha[ok][0]) ** -1.0
        ax_fit.loglog(alpha[ok], ref, "--", color="0.5", label="slope -1 (lazy limit)")
    ax_fit.set_xlabel(r"residual scale $\alpha$")
    ax_fit.set_ylabel("final relative movement")
    ax_fit.set_title(f"movement vs alpha: fitted slope {slope:.3f}")
    ax_fit.grid(True, which="both", alpha=0.35)
    ax_fit.legend(fontsize=8)
    fig.suptitle(f"{c['name']}: mean-field (alpha = 1) to lazy (alpha large) training",
                 fontsize=11)
    return _save(fig, out_dir, "compare_scales.png")


def _plot_reorder(c: dict, out_dir: str) -> str:
    r = c["reorder"]
    modes = [as_text(m) for m in r["modes"]]
    keys = [k for k in ("loss", "test_loss", "accuracy", "test_accuracy") if k in r]
    paired = "none" in modes and len(modes) > 1
    fig = Figure(figsize=(4.6 * (len(keys) + paired), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys) + paired))
    if paired:
        # each seed against its own plain run (same data, same initial particles)
        ax = axes[-1]
        base = r["loss"][modes.index("none")]
        for i, mode in enumerate(modes):
            if mode == "none":
                continue
            ratio = r["loss"][i] / base
            mean, std = np.nanmean(ratio, axis=0), np.nanstd(ratio, axis=0)
            ax.plot(r["s"], mean, color=f"C{i}", label=f"reorder = {mode}")
            ax.fill_between(r["s"], mean - std, mean + std, color=f"C{i}", alpha=0.2)
        ax.axhline(1.0, color=f"C{modes.index('none')}", lw=1.0)
        ax.set_title("training loss / loss without reordering\n(same seed)", fontsize=10)
        ax.set_xlabel("training time $s$")
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=8)
    for ax, key in zip(axes, keys, strict=False):
        log = "loss" in key
        for i, mode in enumerate(modes):
            v = r[key][i]  # (n_seeds, n_eval)
            if log:  # geometric mean, band exp(mean(log) +- std(log))
                lv = np.log(_positive(v))
                mean, std = np.nanmean(lv, axis=0), np.nanstd(lv, axis=0)
                lo, mid, hi = np.exp(mean - std), np.exp(mean), np.exp(mean + std)
            else:
                mid, std = np.nanmean(v, axis=0), np.nanstd(v, axis=0)
                lo, hi = mid - std, mid + std
            ax.plot(r["s"], mid, color=f"C{i}", label=f"reorder = {mode}")
            ax.fill_between(r["s"], lo, hi, color=f"C{i}", alpha=0.2)
        if log:
            ax.set_yscale("log")
        ax.set_title(key.replace("_", " ") + (" (geometric mean)" if log else ""))
        ax.set_xlabel("training time $s$")
        ax.grid(True, alpha=0.35)
    axes[0].legend(fontsize=8)
    n_seeds = len(r["seeds"])
    fig.suptitle(f"{c['name']}: block reordering every {int(r['attrs']['every'])} steps, "
                 f"{n_seeds} seed(s), bands: +-1 std", fontsize=11)
    return _save(fig, out_dir, "compare_reorder.png")


def plot_compare(path: str, out_dir: str) -> list[str]:
    """Write the PNG figures of compare file ``path`` into ``out_dir``; returns their paths."""
    c = _read(path)
    os.makedirs(out_dir, exist_ok=True)
    out = [_plot_loss(c, out_dir), _plot_movement(c, out_dir), _plot_gap(c, out_dir),
           _plot_predictions(c, out_dir)]
    if "scales" in c:
        out.append(_plot_scales(c, out_dir))
    if "reorder" in c:
        out.append(_plot_reorder(c, out_dir))
    return out
