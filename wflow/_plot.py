"""Figures of one run file (docs/getting-started.md, "Reading the figures"):
``plot_run(run_path, out_dir)``.

Reads a ``wflow-run`` HDF5 file and writes PNGs into ``out_dir``:

* ``loss.png``        loss E(s) (and the held-out loss when the run has one) and
                      stationarity residual
                      R(s) = int int |grad_theta V|^2 rho dtheta dt against training
                      time s, log y scale (non-positive / non-finite values are masked,
                      and a panel with no positive value says so instead of staying empty);
                      grid runs add the wall mass (``/history/wall_mass``) with its
                      warning level;
* ``particles.png``   particle clouds of a few depth slices, initial snapshot in grey
                      and final snapshot in colour (particle runs, ``/snapshots/theta``);
* ``density.png``     grid runs (``/snapshots/rho``): k = 1, rho(theta) of a few depth
                      slices at every snapshot, coloured by s; k = 2, heat maps of
                      a few depth slices, initial and final; k = 3, the same for two
                      2-D marginals;
* ``predictions.png`` final predictions g(z(1; x_i)) against the targets y_i
                      (only when ``/final/prediction`` exists, i.e. the run completed);
* ``tokens.png``      sequence runs (``data.tokens``): the token paths z_i(t) through depth
                      of a few prompts under the final measure, rescaled per depth by their
                      RMS norm, with the convex hull of the final tokens.

A block with ``statistics`` (attention) draws particles.png as those per-particle summaries
against depth (the norms of Q, K, V per head) instead of raw coordinate pairs.

Only numpy, h5py and matplotlib's object API are used: no pyplot, so no global
figure state and no backend switch for a caller that has its own (figures are
rendered by the Agg canvas that ``Figure.savefig`` picks for PNG).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

import h5py
import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._io import as_text, verify_run

__all__ = ["plot_run"]

DPI = 120
MAX_POINTS = 2000       # particles drawn per depth slice and snapshot
MAX_SCATTER = 5000      # data points drawn in predictions.png
MAX_PATHS = 200         # up to this many particles, each is joined initial -> final
N_SLICES = 4            # depth slices shown: first, 1/3, 2/3, last
INITIAL_COLOR = "0.72"  # light grey for the initial snapshot
FINAL_COLOR = "tab:blue"
CMAP = "coolwarm"       # diverging map for signed values


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Run:
    """Everything the figures need, read eagerly so the file is closed before plotting."""

    name: str
    status: str
    config: dict
    s: np.ndarray
    loss: np.ndarray
    stationarity: np.ndarray
    wall_time: np.ndarray
    wall_mass: np.ndarray | None   # grid runs: mass in the wall cells (max over slices)
    theta: np.ndarray | None       # (n, L, M, k): first and last snapshot (n <= 2)
    theta_s: np.ndarray | None     # (n,) their training times s, None if not recorded
    rho: np.ndarray | None         # (n, n_t, *cells): all snapshots for 1-D cells, else first/last
    rho_s: np.ndarray | None       # (n,) their training times s
    rho_index: np.ndarray | None   # (n,) their indices in /snapshots/rho
    grid_t: np.ndarray | None      # (n_t,)
    grid_axes: list[np.ndarray]    # cell centres per grid dimension
    x: np.ndarray | None           # (N, d_in)
    y: np.ndarray | None           # (N, d_out)
    prediction: np.ndarray | None  # (N, d_out)
    embedding: np.ndarray | None = None  # /model/embedding (sequences: the token map A)
    test_loss: np.ndarray | None = None  # (n,) held-out loss (data.test_n > 0)

    def get(self, section: str, key: str, default=None):
        value = self.config.get(section, {})
        return value.get(key, default) if isinstance(value, dict) else default


def _read(run_path: str) -> _Run:
    name = os.path.basename(run_path)
    verify_run(run_path)  # RunFileError (a ValueError, one line) for a foreign or damaged file
    f = h5py.File(run_path, "r")
    with f:
        try:
            config = tomllib.loads(as_text(f.attrs.get("config", "")))
        except tomllib.TOMLDecodeError:
            config = {}  # figures only use the config for labels: plot without it

        def arr(path: str) -> np.ndarray | None:
            obj = f.get(path)
            return np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None

        def snapshots(path: str, every: bool):
            """(values, their s, their indices): all snapshots or only the first and last.

            Only the ends are read when that is all a figure shows, so a long run's
            snapshots are never loaded whole.
            """
            obj = f.get(path)
            if not isinstance(obj, h5py.Dataset) or obj.ndim < 3 or obj.shape[0] == 0:
                return None, None, None
            n_snap = obj.shape[0]
            index = np.arange(n_snap) if every else np.unique([0, n_snap - 1])
            values = np.asarray(obj[()]) if every else np.stack([obj[i] for i in index])
            all_s = arr("snapshots/s")
            ok = all_s is not None and all_s.shape == (n_snap,)
            return values, (all_s[index].astype(float) if ok else None), index

        try:
            s, loss = arr("history/s"), arr("history/loss")
            if s is None or loss is None:
                missing = "/history/s" if s is None else "/history/loss"
                raise ValueError(f"{run_path}: wflow run file without {missing}")
            stationarity = arr("history/stationarity")
            wall_time = arr("history/wall_time")
            wall_mass = arr("history/wall_mass")
            # a file written while running may hold history arrays of unequal length
            n = min(len(a) for a in (s, loss, stationarity, wall_time, wall_mass)
                    if a is not None)
            s, loss = s[:n], loss[:n]
            theta, theta_s, _ = snapshots("snapshots/theta", every=False)
            rho_obj = f.get("snapshots/rho")
            one_d = isinstance(rho_obj, h5py.Dataset) and rho_obj.ndim == 3
            rho, rho_s, rho_index = snapshots("snapshots/rho", every=one_d)
            grid_axes = []
            while (axis := arr(f"grid/axis_{len(grid_axes)}")) is not None:
                grid_axes.append(axis.astype(float))
            return _Run(
                name=name,
                status=as_text(f.attrs.get("status", "unknown")),
                config=config,
                s=s.astype(float),
                loss=loss.astype(float),
                stationarity=(np.full(n, np.nan) if stationarity is None
                              else stationarity[:n].astype(float)),
                wall_time=(np.full(n, np.nan) if wall_time is None
                           else wall_time[:n].astype(float)),
                wall_mass=None if wall_mass is None else wall_mass[:n].astype(float),
                theta=theta,
                theta_s=theta_s,
                rho=rho,
                rho_s=rho_s,
                rho_index=rho_index,
                grid_t=arr("grid/t"),
                grid_axes=grid_axes,
                x=arr("data/x"),
                y=arr("data/y"),
                prediction=arr("final/prediction"),
                embedding=arr("model/embedding"),
                test_loss=(None if arr("history/test_loss") is None
                           else arr("history/test_loss")[:n].astype(float)),
            )
        except (OSError, KeyError) as err:  # truncated / corrupted datasets
            raise ValueError(f"{run_path}: unreadable wflow run file ({err})") from None


# ----------------------------------------------------------------------------- helpers


def _fmt(v: float) -> str:
    return f"{v:.4g}"


_GREEK = {"theta", "alpha", "beta", "gamma", "lambda", "mu", "sigma", "tau", "omega"}


def _mathtext(name: str) -> str:
    """A coordinate name as mathtext: "u_0" -> $u_{0}$, "theta_01" -> $\\theta_{01}$."""
    base, _, sub = name.partition("_")
    if not base.isidentifier():
        return name
    head = f"\\{base}" if base in _GREEK else base
    return f"${head}_{{{sub}}}$" if sub else f"${head}$"


def _feature_of(run: _Run, k: int):
    """The run's block, built from its stored [model] table (None when it cannot be built
    here: a hand-written file, a user's block whose file is gone, or a different k)."""
    from ._model import feature_from_config

    model = run.config.get("model", {})
    if not isinstance(model, dict) or model.get("feature") is None or model.get("dim") is None:
        return None
    try:
        data = run.config.get("data", {})
        tokens = data.get("tokens") if isinstance(data, dict) else None
        feature = feature_from_config(model, tokens=tokens)
        return feature if feature.k == k else None
    except Exception:  # any failure only costs the figure its coordinate names
        return None


def _coord_names(run: _Run, k: int) -> list[str]:
    """Mathtext names of the k coordinates of theta (the block's ``coordinate_names``)."""
    feature = _feature_of(run, k)
    names = feature.coordinate_names if feature is not None else [f"theta_{i}" for i in range(k)]
    return [_mathtext(n) for n in names]


def _views(run: _Run, k: int) -> list[tuple[int, int]]:
    """Coordinate pairs (x, y) shown in particles.png, one row of panels each (the block's
    ``views``; neuron: (w_0, u_0) and, for d >= 2, (w_0, w_1))."""
    feature = _feature_of(run, k)
    return list(feature.views) if feature is not None else [(0, 1)]


def _slices(n: int) -> list[int]:
    """Up to N_SLICES distinct indices spread over range(n): first, 1/3, 2/3, last."""
    return sorted({round(i) for i in np.linspace(0, n - 1, min(n, N_SLICES))})


def _layer_times(run: _Run, n_layers: int) -> np.ndarray:
    """Depth time of each slice: t_l = l / L (layers), (l + 1/2) / L (continuous nodes)."""
    offset = 0.5 if run.get("solver", "depth") == "continuous" else 0.0
    return (np.arange(n_layers) + offset) / n_layers


def _depth_label(run: _Run, layer: int, n_layers: int) -> str:
    kind = "node" if run.get("solver", "depth") == "continuous" else "layer"
    return f"{kind} {layer} of {n_layers} (t = {_layer_times(run, n_layers)[layer]:.2f})"


def _summary(run: _Run) -> str:
    """One line describing the model, solver and data from the resolved config."""
    parts = []
    feature = run.get("model", "feature")
    if feature:
        act = run.get("model", "activation")
        parts.append(f"{feature}" + (f" ({act})" if act and feature == "neuron" else ""))
    if run.get("model", "dim") is not None:
        parts.append(f"d = {run.get('model', 'dim')}")
    kind = run.get("solver", "kind")
    if kind:
        depth = run.get("solver", "depth")
        parts.append(kind + (f"/{depth}" if depth and kind == "particles" else ""))
    for key in ("L", "M"):
        if run.get("solver", key) is not None and not (key == "M" and kind == "grid"):
            parts.append(f"{key} = {run.get('solver', key)}")
    if run.get("data", "kind"):
        n = run.get("data", "n")
        parts.append(f"data {run.get('data', 'kind')}" + (f" (N = {n})" if n else ""))
    if run.get("train", "time") == 0:
        parts.append("no training")
    elif run.get("train", "method"):
        parts.append(f"{run.get('train', 'method')}, dt = {run.get('train', 'dt')}")
    return ",  ".join(parts)


def _title(fig: Figure, run: _Run, what: str) -> None:
    sub = _summary(run)
    fig.suptitle(f"{run.name}: {what}   [status: {run.status}]" + (f"\n{sub}" if sub else ""),
                 fontsize=11)


def _note(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            wrap=True, bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6", "alpha": 0.9})


def _save(fig: Figure, out_dir: str, filename: str) -> str:
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=DPI)
    return path


def _subsample(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    # fixed generator: the same particles are drawn at both snapshots and on every call
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


# ----------------------------------------------------------------------------- loss.png


def _log_panel(ax, s: np.ndarray, v: np.ndarray, label: str, color: str, what: str) -> None:
    """Plot v(s) on a log axis, masking what a log axis cannot show and saying so."""
    finite = np.isfinite(v)
    positive = finite & (v > 0)
    marker = "o" if len(s) <= 30 else None
    ax.set_xlabel("training time $s$")
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.4)
    if not len(v):
        ax.set_yticks([])
        _note(ax, "no records yet")
        return
    if not positive.any():
        # nothing a log axis can show: draw the finite values linearly and explain
        ax.plot(s[finite], v[finite], color=color, marker=marker, label=what)
        if finite.any() and np.all(v[finite] == 0):
            ax.set_ylim(-1, 1)
            _note(ax, f"{what} is exactly 0 at every record\n"
                      "(stationary point: the flow does not move)", y=0.7)
        else:
            _note(ax, f"no positive finite {what} value to show on a log scale")
        if finite.any():
            ax.legend(loc="lower right", fontsize=9)
        return
    ax.set_yscale("log")
    ax.plot(s, np.where(positive, v, np.nan), color=color, marker=marker, label=what)
    lo, hi = v[positive].min(), v[positive].max()
    if hi <= 10 * lo:
        # less than a decade: pad to one decade either side so the axis has major ticks
        ax.set_ylim(lo / 10 ** 0.5, hi * 10 ** 0.5)
    notes = []
    if lo == hi and positive.sum() > 1:
        notes.append(f"{what} constant at {_fmt(lo)}")
    if (n_zero := int(np.sum(finite & (v <= 0)))):
        notes.append(f"{n_zero} record(s) <= 0 not shown")
    if (n_bad := int(np.sum(~finite))):
        notes.append(f"{n_bad} non-finite record(s) not shown")
    if notes:
        _note(ax, "\n".join(notes), y=0.85)
    ax.legend(loc="lower left", fontsize=9)


def _plot_loss(run: _Run, out_dir: str) -> str:
    if run.wall_mass is None:
        fig = Figure(figsize=(11, 4.4), layout="constrained")
        ax_loss, ax_res = fig.subplots(1, 2, sharex=True)
    else:
        fig = Figure(figsize=(15.5, 4.4), layout="constrained")
        ax_loss, ax_res, ax_wall = fig.subplots(1, 3, sharex=True)
        _plot_wall_mass(ax_wall, run)
    _log_panel(ax_loss, run.s, run.loss, "loss $E$", "tab:blue", "loss")
    _log_panel(ax_res, run.s, run.stationarity,
               r"$\int\!\!\int |\nabla_\theta V|^2\,\rho\;d\theta\,dt$", "tab:orange",
               "stationarity residual")
    ax_loss.set_title("training loss")
    if run.test_loss is not None and ax_loss.get_yscale() == "log":
        test = np.where(np.isfinite(run.test_loss) & (run.test_loss > 0), run.test_loss, np.nan)
        if np.isfinite(test).any():
            ax_loss.plot(run.s, test, color="tab:green", ls="--", label="held-out (test) loss")
            both = np.concatenate([test[np.isfinite(test)], run.loss[run.loss > 0]])
            ax_loss.set_ylim(both.min() / 10 ** 0.5, both.max() * 10 ** 0.5)
            ax_loss.legend(loc="lower left", fontsize=9)
            ax_loss.set_title("training and held-out loss")
    ax_res.set_title("stationarity residual ($= -dE/ds$ without regularization)")
    if not len(run.s):
        final = "no records"
    elif np.isfinite(run.loss[-1]):
        final = f"final loss {_fmt(run.loss[-1])}, residual {_fmt(run.stationarity[-1])}"
    elif np.isfinite(run.loss).any():
        i = np.flatnonzero(np.isfinite(run.loss))[-1]
        final = (f"final loss {_fmt(run.loss[-1])} (last finite {_fmt(run.loss[i])} "
                 f"at s = {_fmt(run.s[i])})")
    else:
        final = "no finite loss recorded"
    if len(run.s) and np.isfinite(run.wall_time[-1]):
        final += f", wall time {run.wall_time[-1]:.3g} s"
    _title(fig, run, final)
    return _save(fig, out_dir, "loss.png")


def _plot_wall_mass(ax, run: _Run) -> None:
    """Mass in the cells touching the box walls (worst depth slice) and the warning level."""
    from ._grid import WALL_MASS_WARNING

    _log_panel(ax, run.s, run.wall_mass, "mass in the wall cells", "tab:red", "wall mass")
    ax.axhline(WALL_MASS_WARNING, color="0.3", ls="--", lw=1,
               label=f"warning level {WALL_MASS_WARNING:g}")
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(min(lo, WALL_MASS_WARNING / 3), max(hi, WALL_MASS_WARNING * 3))
    ax.legend(loc="lower right", fontsize=9)
    over = run.wall_mass > WALL_MASS_WARNING
    ax.set_title("wall mass (max over depth slices)" + ("  -- box too small" if over.any() else ""),
                 color="tab:red" if over.any() else "black")


# ----------------------------------------------------------------------------- particles.png


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return a[np.all(np.isfinite(a), axis=-1)]


def _plot_particles(run: _Run, out_dir: str) -> str:
    theta = run.theta.astype(float)
    n_snap, L, M, k = theta.shape
    names = _coord_names(run, k)
    layers = _slices(L)
    keep = _subsample(M, MAX_POINTS)
    snap_s = run.theta_s
    s_first = f" ($s$ = {_fmt(snap_s[0])})" if snap_s is not None else ""
    s_last = f" ($s$ = {_fmt(snap_s[-1])})" if snap_s is not None else ""
    first, last = theta[0], theta[-1]
    one_snapshot = n_snap == 1

    shown = f"{len(keep)} of {M}" if len(keep) < M else f"all {M}"

    if k == 1:
        # histograms of a few slices, and every slice's particles against depth t
        # (for linear d = 1 the exact flow translates each slice rigidly,
        # docs/theory.md, "Closed form: linear, d = 1")
        fig = Figure(figsize=(3.3 * len(layers) + 5.0, 4.2), layout="constrained")
        grid = fig.add_gridspec(1, len(layers) + 1, width_ratios=[1] * len(layers) + [1.5])
        axes = [fig.add_subplot(grid[0, 0])]
        axes += [fig.add_subplot(grid[0, i], sharex=axes[0], sharey=axes[0])
                 for i in range(1, len(layers))]
        for ax in axes[1:]:
            ax.tick_params(labelleft=False)
        vals = theta[:, layers][..., 0]
        finite = vals[np.isfinite(vals)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        if hi - lo < 1e-12:
            pad = 0.5 * max(abs(lo), 1.0)
            lo, hi = lo - pad, hi + pad
        bins = np.linspace(lo, hi, int(np.clip(2 * np.sqrt(M), 8, 40)) + 1)
        for ax, layer in zip(axes, layers):
            a0 = first[layer, :, 0]
            a1 = last[layer, :, 0]
            if not one_snapshot:
                ax.hist(a0[np.isfinite(a0)], bins=bins, color=INITIAL_COLOR,
                        label="initial" + s_first)
            ax.hist(a1[np.isfinite(a1)], bins=bins, color=FINAL_COLOR, alpha=0.75,
                    label=("snapshot" if one_snapshot else "final") + s_last)
            ax.set_title(_depth_label(run, layer, L), fontsize=10)
            ax.set_xlabel(names[0])
        axes[0].set_ylabel(f"particles per bin (of {M})")
        axes[0].legend(loc="upper left", fontsize=8)

        ax = fig.add_subplot(grid[0, -1])
        _against_depth(ax, run, None if one_snapshot else first[..., 0], last[..., 0],
                       s_first, s_last, names[0])
        ax.legend(loc="best", fontsize=8)
        _title(fig, run, "particle histograms per depth slice")
        return _save(fig, out_dir, "particles.png")

    feature = _feature_of(run, k)
    stats = feature.statistics(theta[-1]) if feature is not None else None
    if stats:
        # a block of matrices (attention): its named summaries per particle against depth
        initial = None if one_snapshot else feature.statistics(theta[0])
        cols = min(3, len(stats))
        rows = -(-len(stats) // cols)
        fig = Figure(figsize=(4.4 * cols, 3.5 * rows + 0.8), layout="constrained")
        axes = np.array(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, name in zip(axes, stats):
            _against_depth(ax, run, None if initial is None else initial[name], stats[name],
                           s_first, s_last, name)
        for ax in axes[len(stats):]:
            ax.set_axis_off()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", fontsize=9, markerscale=2.5,
                   ncols=len(labels))
        _title(fig, run, f"{type(feature).__name__} particles: summaries per depth slice "
                         f"({min(M, max(1, 2 * MAX_POINTS // L))} of {M} per slice drawn)")
        return _save(fig, out_dir, "particles.png")

    views = _views(run, k)
    fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.7 * len(views) + 0.7), layout="constrained")
    # one scale per row, so the depth slices of a row compare directly
    axes = np.array(fig.subplots(len(views), len(layers), sharex="row", sharey="row",
                                 squeeze=False))
    size = 14 if len(keep) <= 300 else 5
    for row, (ix, iy) in enumerate(views):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            p0 = _finite_rows(first[layer, keep])
            p1 = _finite_rows(last[layer, keep])
            if not one_snapshot:
                if len(keep) <= MAX_PATHS:
                    # few particles: join each one's initial and final position
                    a, b = first[layer, keep][:, [ix, iy]], last[layer, keep][:, [ix, iy]]
                    ok = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(b), axis=1)
                    ax.add_collection(LineCollection(np.stack([a[ok], b[ok]], axis=1),
                                                     colors=INITIAL_COLOR, linewidths=0.5, alpha=0.7,
                                                     zorder=1))
                ax.scatter(p0[:, ix], p0[:, iy], s=size, color=INITIAL_COLOR, linewidths=0,
                           label="initial" + s_first, rasterized=True)
            ax.scatter(p1[:, ix], p1[:, iy], s=size, color=FINAL_COLOR, linewidths=0,
                       alpha=0.6, label=("snapshot" if one_snapshot else "final") + s_last,
                       rasterized=True)
            if len(p1) and np.ptp(p1[:, [ix, iy]], axis=0).max() == 0:
                where = f"({_fmt(p1[0, ix])}, {_fmt(p1[0, iy])})"
                still = (not one_snapshot and p0.shape == p1.shape
                         and np.array_equal(p0[:, [ix, iy]], p1[:, [ix, iy]]))
                _note(ax, f"all {len(p1)} final particles\nat {names[ix]}, {names[iy]} = {where}"
                          + ("\n(not moved since the start)" if still else ""), y=0.8)
            if row == 0:
                ax.set_title(_depth_label(run, layer, L), fontsize=10)
            ax.set_xlabel(names[ix])
            ax.grid(True, alpha=0.3)
        axes[row, 0].set_ylabel(names[iy])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=9, markerscale=2.5,
               ncols=len(labels))
    _title(fig, run, f"particles per depth slice ({shown} per slice)")
    return _save(fig, out_dir, "particles.png")


def _against_depth(ax, run: _Run, first: np.ndarray | None, last: np.ndarray, s_first: str,
                   s_last: str, name: str) -> None:
    """One value per particle (L, M), every slice against depth t, with the slice means;
    ``first`` (the initial snapshot, grey) may be None."""
    L, M = last.shape
    t = _layer_times(run, L)
    per_layer = _subsample(M, max(1, 2 * MAX_POINTS // L))
    tt = np.repeat(t, len(per_layer))
    snaps = [(last, FINAL_COLOR, ("snapshot" if first is None else "final") + s_last)]
    if first is not None:
        snaps.insert(0, (first, INITIAL_COLOR, "initial" + s_first))
    for values, color, label in snaps:
        ax.scatter(tt, values[:, per_layer].ravel(), s=5, color=color, alpha=0.5,
                   linewidths=0, rasterized=True)
        with np.errstate(all="ignore"):
            mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), 1)
        ax.plot(t, mean, color=color if color != INITIAL_COLOR else "0.45", lw=2,
                label=f"{label}: slice mean")
    ax.set_xlabel("depth $t$")
    label = name if name.startswith("$") or "|" not in name else f"${name}$"
    ax.set_ylabel(label)
    ax.set_title(f"{label}, all {L} slices", fontsize=10)
    ax.grid(True, alpha=0.3)


# ----------------------------------------------------------------------------- density.png


def _grid_axis(run: _Run, i: int, n: int) -> np.ndarray:
    if i < len(run.grid_axes) and len(run.grid_axes[i]) == n:
        return run.grid_axes[i]
    return np.arange(n, dtype=float)


def _cell_width(axis: np.ndarray) -> float:
    return float((axis[-1] - axis[0]) / (len(axis) - 1)) if len(axis) > 1 else 1.0


def _density_views(run: _Run, k: int) -> list[tuple[int, int]]:
    """(x axis, y axis) of the 2-D pictures: the block's first view (neurons: w_0 across and
    u_0 up, as in particles.png) and, for k = 3, the first view's x against the third axis
    (neurons with a bias: (w_0, b)). The other axes are summed out."""
    x, y = _views(run, k)[0]
    first = (x, y) if x != y and max(x, y) < k else (0, 1)
    if k == 2:
        return [first]
    third = next(a for a in range(k) if a not in first)
    return [first, (first[0], third)]


def _marginal(rho: np.ndarray, keep: tuple[int, int], widths: list[float]) -> np.ndarray:
    """rho (..., *cells) integrated over the cell axes not in ``keep`` -> (..., n_x, n_y)."""
    lead = rho.ndim - len(widths)
    out = rho
    for a in reversed(range(len(widths))):
        if a not in keep:
            out = out.sum(axis=lead + a) * widths[a]
    # the kept axes are now in increasing order; put x first
    return out if keep[0] < keep[1] else np.swapaxes(out, -1, -2)


def _plot_density(run: _Run, out_dir: str) -> str:
    rho = run.rho.astype(float)
    n_snap, n_t = rho.shape[:2]
    cells = rho.shape[2:]
    k = len(cells)
    names = _coord_names(run, k)
    slices = _slices(n_t)
    t = run.grid_t if run.grid_t is not None and len(run.grid_t) == n_t else None
    has_s = run.rho_s is not None
    snap_s = run.rho_s if has_s else run.rho_index.astype(float)
    axes_c = [_grid_axis(run, a, n) for a, n in enumerate(cells)]
    widths = [_cell_width(ax) for ax in axes_c]

    def slice_title(j: int) -> str:
        return f"slice {j} of {n_t}" + (f" (t = {t[j]:.2f})" if t is not None else "")

    def when(i: int) -> str:
        return f"$s$ = {_fmt(snap_s[i])}" if has_s else f"snapshot {run.rho_index[i]}"

    if k == 1:
        # rho(theta) of each shown slice at every snapshot, coloured by training time
        theta_ax = axes_c[0]
        fig = Figure(figsize=(3.6 * len(slices) + 1.4, 4.0), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(slices), sharex=True, sharey=True))
        shown = np.unique(np.round(np.linspace(0, n_snap - 1, min(n_snap, 12))).astype(int))
        s_lo, s_hi = float(snap_s[0]), float(snap_s[-1])
        norm = Normalize(s_lo, s_hi if s_hi > s_lo else s_lo + 1.0)
        cmap = matplotlib.colormaps["viridis"]
        for ax, j in zip(axes, slices):
            for i in shown:
                ax.plot(theta_ax, rho[i, j], color=cmap(norm(snap_s[i])), lw=1.4)
            ax.set_title(slice_title(j), fontsize=10)
            ax.set_xlabel(names[0])
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(r"density $\rho$")
        if n_snap > 1:
            fig.colorbar(ScalarMappable(norm, cmap), ax=list(axes), shrink=0.9, pad=0.01,
                         label="training time $s$" if has_s else "snapshot index")
        _title(fig, run, f"density per depth slice ({len(shown)} of {n_snap} snapshots)")
        return _save(fig, out_dir, "density.png")

    views = _density_views(run, k)
    rows = [0, n_snap - 1] if n_snap > 1 else [0]
    n_rows = len(views) * len(rows)
    fig = Figure(figsize=(max(3.3 * len(slices) + 1.4, 8.0), 3.0 * n_rows + 0.9),
                 layout="constrained")
    axes = np.array(fig.subplots(n_rows, len(slices), squeeze=False))
    for v, (ix, iy) in enumerate(views):
        marg = _marginal(rho[rows][:, slices], (ix, iy), widths)  # (rows, slices, n_x, n_y)
        finite = marg[np.isfinite(marg)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        summed = [names[a] for a in range(k) if a not in (ix, iy)]
        mesh = None
        for r, snap in enumerate(rows):
            row = v * len(rows) + r
            for c, j in enumerate(slices):
                ax = axes[row, c]
                mesh = ax.pcolormesh(axes_c[ix], axes_c[iy], marg[r, c].T, shading="nearest",
                                     cmap="viridis", vmin=0, vmax=vmax, rasterized=True)
                ax.set_aspect("equal", adjustable="box")
                if row == 0:
                    ax.set_title(slice_title(j), fontsize=10)
                ax.set_xlabel(names[ix])
                if c == 0:
                    label = "initial" if (r == 0 and len(rows) > 1) else "final"
                    ax.set_ylabel(f"{label} ({when(snap)})\n{names[iy]}")
                else:
                    ax.tick_params(labelleft=False)
        what = r"density $\rho$" if not summed else rf"$\int \rho \, d${summed[0]}"
        fig.colorbar(mesh, ax=axes[v * len(rows):(v + 1) * len(rows)].ravel().tolist(),
                     shrink=0.9, pad=0.01, label=what)
    what = "density per depth slice" if k == 2 else "2-D marginals per depth slice"
    _title(fig, run, what)
    return _save(fig, out_dir, "density.png")


# ----------------------------------------------------------------------------- predictions.png


def _plot_predictions(run: _Run, out_dir: str) -> str:
    x = run.x.reshape(len(run.x), -1).astype(float)
    y = run.y.reshape(len(run.y), -1).astype(float)
    pred = run.prediction.reshape(len(run.prediction), -1).astype(float)
    n, d_in, d_out = len(y), x.shape[1], y.shape[1]
    keep = _subsample(n, MAX_SCATTER)
    yj, pj = y[keep, 0], pred[keep, 0]
    rmse = float(np.sqrt(np.nanmean((pred[:, 0] - y[:, 0]) ** 2)))
    out = f" (output 0 of {d_out})" if d_out > 1 else ""

    n_panels = 2 if d_in in (1, 2) else 1
    fig = Figure(figsize=(5.2 * n_panels, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n_panels))

    ax = axes[0]
    ax.scatter(yj, pj, s=12, color=FINAL_COLOR, alpha=0.7, linewidths=0, label="data points")
    finite = np.concatenate([yj[np.isfinite(yj)], pj[np.isfinite(pj)]])
    lo, hi = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="prediction = target")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"target $y_0${out}")
    ax.set_ylabel("prediction $g(z(1; x))_0$")
    ax.set_title(f"prediction vs target, RMSE = {_fmt(rmse)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    if d_in == 1:
        ax = axes[1]
        order = np.argsort(x[:, 0])
        ax.scatter(x[keep, 0], yj, s=12, color="0.35", alpha=0.7, linewidths=0, label="target $y_0$")
        ax.plot(x[order, 0], pred[order, 0], color="tab:red", lw=1.8, label="prediction")
        ax.set_xlabel("input $x_0$")
        ax.set_ylabel("output 0")
        ax.set_title("targets and prediction against the input", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    elif d_in == 2:
        ax = axes[1]
        vmax = np.nanmax(np.abs(np.concatenate([yj, pj]))) if finite.size else 1.0
        norm = Normalize(-(vmax or 1.0), vmax or 1.0)
        sc = ax.scatter(x[keep, 0], x[keep, 1], c=pj, cmap=CMAP, norm=norm, s=14,
                        linewidths=0.2, edgecolors="0.3")
        ax.set_xlabel("input $x_0$")
        ax.set_ylabel("input $x_1$")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title("prediction over the input plane", fontsize=10)
        fig.colorbar(sc, ax=ax, shrink=0.9, label="prediction $g(z(1; x))_0$")
    _title(fig, run, "final predictions")
    return _save(fig, out_dir, "predictions.png")


# ----------------------------------------------------------------------------- tokens.png


MAX_PROMPTS = 4         # prompts drawn in tokens.png


def _token_paths(run: _Run, feature, theta: np.ndarray, prompts: int):
    """Depth times (T,) and the token states (T, P, n, d) of the first prompts, from one
    forward pass of the stored final measure (a layered or continuous-depth solve as the run's
    own, in float64)."""
    import jax
    import jax.numpy as jnp

    from ._depth import ContinuousDepth, LayeredDepth
    from ._problem import Problem

    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # jax < 0.6
        from jax.experimental import enable_x64
    with enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        x = jnp.asarray(run.x[:prompts].reshape(prompts, -1), jnp.float64)
        A = None if run.embedding is None else jnp.asarray(run.embedding, jnp.float64)
        problem = Problem(feature, x, jnp.zeros((prompts, 1)), embedding=A,
                          scale=run.get("model", "scale", 1.0) or 1.0)
        if run.get("solver", "depth") == "continuous":
            depth = ContinuousDepth(solver=run.get("solver", "ode_solver", "tsit5"),
                                    rtol=run.get("solver", "rtol", 1e-5),
                                    atol=run.get("solver", "atol", 1e-7), max_steps=100_000)
        else:
            depth = LayeredDepth()
        ts, zs = depth.path(problem, jnp.asarray(theta, jnp.float64), problem.embed(problem.x))
        n = feature.tokens
        return np.asarray(ts), np.asarray(zs).reshape(len(ts), prompts, n, -1)


def _distinct(points: np.ndarray, rel: float = 1e-3) -> np.ndarray:
    """The points with those within ``rel`` x the largest norm of an earlier one dropped."""
    tol = rel * max(float(np.max(np.linalg.norm(points, axis=1))), 1e-300)
    kept: list[np.ndarray] = []
    for q in points:
        if np.all(np.isfinite(q)) and all(np.linalg.norm(q - k) > tol for k in kept):
            kept.append(q)
    return np.asarray(kept).reshape(-1, points.shape[1])


def _plot_tokens(run: _Run, feature, out_dir: str) -> str:
    """The tokens' paths through depth for a few prompts, each token rescaled by the RMS norm
    of its prompt's tokens at that depth (scale-free: clusters show however the norm grows),
    in the first two coordinates; the convex hull of the final tokens dashed."""
    prompts = min(MAX_PROMPTS, len(run.x))
    ts, Z = _token_paths(run, feature, run.theta[-1], prompts)
    with np.errstate(all="ignore"):
        rms = np.sqrt(np.mean(np.sum(Z ** 2, axis=-1), axis=-1))[..., None, None]
        Z = Z / np.where(rms > 0, rms, 1.0)
    n, d = Z.shape[2], Z.shape[3]
    fig = Figure(figsize=(4.0 * prompts, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, prompts, squeeze=False)[0])
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, n))
    for p, ax in enumerate(axes):
        for i in range(n):
            if d >= 2:
                xs, ys = Z[:, p, i, 0], Z[:, p, i, 1]
            else:
                xs, ys = ts, Z[:, p, i, 0]
            ax.plot(xs, ys, color=colors[i], lw=1.0, alpha=0.8)
            ax.plot(xs[0], ys[0], "o", color=colors[i], ms=4)
            ax.plot(xs[-1], ys[-1], "*", color=colors[i], ms=9, mec="k", mew=0.5)
        if d >= 2:
            end = _distinct(Z[-1, p, :, :2])
            label = f"{len(end)} distinct final point{'s' if len(end) > 1 else ''}"
            try:
                from scipy.spatial import ConvexHull

                loop = ConvexHull(end).vertices
                label += f", hull with {len(loop)} vertices"
            except Exception:  # fewer than 3 points or collinear: the segment (or point)
                loop = np.arange(len(end))
            loop = np.append(loop, loop[0])
            ax.plot(end[loop, 0], end[loop, 1], "k--", lw=0.8, label=label)
            ax.legend(loc="lower left", fontsize=7)
            ax.set_xlabel("$z_{i,0} / \\mathrm{RMS}_j |z_j|$")
            ax.set_ylabel("$z_{i,1} / \\mathrm{RMS}_j |z_j|$")
            ax.set_aspect("equal", adjustable="datalim")
        else:
            ax.set_xlabel("depth $t$")
            ax.set_ylabel("$z_{i} / \\mathrm{RMS}_j |z_j|$")
        ax.set_title(f"prompt {p}: {n} tokens, o start, * t = 1", fontsize=10)
        ax.grid(True, alpha=0.3)
    _title(fig, run, "token paths through depth (final measure)")
    return _save(fig, out_dir, "tokens.png")


# ----------------------------------------------------------------------------- entry point


def plot_run(run_path: str, out_dir: str) -> list[str]:
    """Write the PNG figures of the run file ``run_path`` into ``out_dir``.

    Figures (see the module docstring): ``loss.png`` always; ``particles.png`` for
    particle runs or ``density.png`` for grid runs when snapshots exist;
    ``predictions.png`` when ``/final/prediction`` exists (a run that did not
    complete has none, and the figure is skipped).

    Returns the written paths, in that order. ``out_dir`` is created if needed.
    Raises ``ValueError`` (one line naming the file) when ``run_path`` is not a
    readable HDF5 file or not a ``wflow-run`` file: the CLI maps it to exit code 2.
    """
    run = _read(run_path)
    os.makedirs(out_dir, exist_ok=True)
    paths = [_plot_loss(run, out_dir)]
    if run.theta is not None and run.theta.ndim == 4 and run.theta.shape[0] > 0:
        paths.append(_plot_particles(run, out_dir))
    elif run.rho is not None and 3 <= run.rho.ndim <= 5 and run.rho.shape[0] > 0:
        paths.append(_plot_density(run, out_dir))
    if run.prediction is not None and run.y is not None and run.x is not None:
        paths.append(_plot_predictions(run, out_dir))
    if (run.get("data", "tokens") and run.x is not None and run.theta is not None
            and run.theta.ndim == 4 and run.theta.shape[0] > 0):
        feature = _feature_of(run, run.theta.shape[-1])
        if feature is not None and getattr(feature, "tokens", None):
            paths.append(_plot_tokens(run, feature, out_dir))
    return paths
