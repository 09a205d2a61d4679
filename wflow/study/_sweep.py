"""The limit study as a resumable sweep: result arrays, checkpoints, fits (``run_limit``).

The plan (``_limit.plan``) is a deterministic list of blocks. After every
block the whole study file is rewritten atomically with the blocks done so
far (``/done``); a resumed study re-reads it and runs the remaining blocks,
which have the same composition as in an uninterrupted run, so the final file
holds the same numbers.
"""

from __future__ import annotations

import sys
import time
import tomllib
import warnings
from collections.abc import Callable

import jax
import numpy as np

from .._schema import ConfigError, to_toml
from ._file import check_study_file, read_study, write_study
from ._fit import aggregate, bootstrap_indices, fit_model, model_terms, slope
from ._limit import LimitSetup, block_errors, build_limit, grid_values, plan, run_block

__all__ = ["LimitState", "fit_limit", "run_limit"]

METRICS = ("loss", "output", "hidden")


class LimitState:
    """Every array of a limit study file (``_file`` docstring), filled block by block."""

    def __init__(self, setup: LimitSetup):
        st = setup.study
        self.setup = setup
        self.grid = (len(st["L"]), len(st["M"])) + ((len(setup.dims),) if st["dims"] else ())
        S, T = st["seeds"], len(st["times"])
        self.errors = {m: np.full(self.grid + (S, T), np.nan) for m in st["metrics"]}
        self.loss = np.full(self.grid + (S, T), np.nan)
        self.done = np.zeros(self.grid + (S,), np.uint8)
        self.ref = None  # "particles": dict of (S, T, ...) arrays, filled by reference blocks
        self.ref_done = np.zeros((S,), np.uint8)
        self.ref_wall = None  # "grid": the reference's wall mass (S, T)
        if st["reference"] == "continuous":
            self.ref_loss = np.full(self.grid + (S, T), np.nan)
        self.wall = 0.0
        self.fits: dict = {}

    def cell(self, member):
        return member.index[: len(self.grid)]

    def arrays(self) -> dict:
        setup, st = self.setup, self.setup.study
        out = {"study/L": np.asarray(st["L"]), "study/M": np.asarray(st["M"]),
               "study/times": np.asarray(st["times"], np.float64),
               "study/seeds": np.arange(st["seeds"]),
               "values/loss": self.loss, "done": self.done,
               "data/x": setup.x, "data/y": setup.y}
        if st["dims"]:
            out["study/dims"] = np.asarray(st["dims"])
        for m, e in self.errors.items():
            out[f"errors/{m}"] = e
        if st["reference"] == "continuous":
            out["reference/loss"] = self.ref_loss
        elif self.ref is not None:
            for name, value in self.ref.items():
                out[f"reference/{name}"] = value
            out["reference/done"] = self.ref_done
            if self.ref_wall is not None:
                out["reference/wall_mass"] = self.ref_wall
        for name, value in self.fits.items():
            out[f"fit/{name}"] = value
        return out

    def load(self, data: dict) -> None:
        for m in self.errors:
            self.errors[m] = data[f"errors/{m}"]
        self.loss, self.done = data["values/loss"], data["done"]
        if self.setup.study["reference"] == "continuous":
            self.ref_loss = data["reference/loss"]
        elif "reference/loss" in data:
            self.ref = {k: data[f"reference/{k}"] for k in ("loss", "prediction", "state")}
            self.ref_done = data["reference/done"]
            self.ref_wall = data.get("reference/wall_mass")
        self.wall = float(data["attrs"].get("wall_time", 0.0))


def _config_text(config: dict, study: dict) -> str:
    stored = {k: v for k, v in config.items() if k != "output"}
    stored["study"] = {k: v for k, v in study.items() if v is not None}
    return to_toml(stored)


def _check_resume(path: str, text: str, kind: str) -> dict:
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


def run_limit(config: dict, study: dict, path: str, *, resume: bool = False,
              should_stop: Callable[[], bool] | None = None, progress: bool = True,
              stop_after_blocks: int | None = None, log=print) -> str:
    """Run (or resume) a limit study into ``path``; returns its status.

    "complete", or "interrupted" when ``should_stop()`` became true or
    ``stop_after_blocks`` blocks were done (a test hook).
    """
    from tqdm import tqdm

    setup = build_limit(config, study)
    blocks = plan(setup)
    text = _config_text(config, study)
    state = LimitState(setup)
    if resume:
        state.load(_check_resume(path, text, "limit"))
    attrs = {"kind": "limit", "config": text, "seed": config["seed"], "status": "running",
             "fit_model": ("a/L + b*sqrt(D/(L*M)) + c/sqrt(D)" if study["dims"]
                           else "a/L + b/sqrt(L*M)")}

    def checkpoint(status):
        write_study(path, {**attrs, "status": status, "wall_time": state.wall}, state.arrays())

    checkpoint("running")
    st = setup.study
    root = jax.random.fold_in(jax.random.PRNGKey(config["seed"]), 2)
    ref_cost = 2.0 if st["reference"] == "continuous" else 1.0  # rough: continuous ~ layered x2
    weights = [b.cost * (1.0 if b.reference else ref_cost) for b in blocks]

    def is_done(block):
        if block.reference:
            return all(state.ref_done[m.rep] for m in block.members)
        return all(state.done[state.cell(m) + (m.rep,)] for m in block.members)

    todo = [i for i, b in enumerate(blocks) if not is_done(b)]
    total = float(sum(weights))
    start_frac = sum(w for i, w in enumerate(weights) if i not in set(todo)) / total
    bar = tqdm(total=1000, initial=round(1000 * start_frac), disable=not progress,
               dynamic_ncols=True, leave=True, unit="‰", desc="study limit",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
    n_runs = sum(len(b.members) for b in blocks if not b.reference)
    log_shapes = f"{n_runs} runs in {len(blocks)} blocks"
    bar.set_postfix_str(log_shapes)
    done_frac = start_frac
    n_blocks = 0
    status = "complete"
    try:
        for i in todo:
            block = blocks[i]
            t0 = time.perf_counter()
            key = jax.random.fold_in(root, i)
            desc = (f"{'reference ' if block.reference else ''}L={block.L} M<={block.M} "
                    f"D<={block.D} x{len(block.members)}")

            progress_of = _Progress(bar, desc, done_frac, weights[i] / total)

            if block.reference:
                if st["reference"] == "grid":
                    # the generic measure path: the grid's cells read as weighted particles
                    out = grid_values(setup, block, key, progress_of(0.0, 1.0), should_stop)
                    res = None if out is None else out[0]
                    if out is not None:
                        _note_wall_mass(state, block, out[1], st["times"])
                else:
                    res = run_block(setup, block, setup.reference_depth(), key,
                                    progress_of(0.0, 1.0), should_stop)
                if res is None:
                    status = "interrupted"
                    break
                if state.ref is None:
                    S = st["seeds"]
                    state.ref = {k: np.full((S,) + v.shape[1:], np.nan)
                                 for k, v in res._asdict().items()}
                for j, m in enumerate(block.members):
                    for k, v in res._asdict().items():
                        state.ref[k][m.rep] = v[j]
                    state.ref_done[m.rep] = 1
            else:
                half = 1.0 / (1.0 + ref_cost) if st["reference"] == "continuous" else 1.0
                res = run_block(setup, block, setup.depth, key, progress_of(0.0, half),
                                should_stop)
                if res is None:
                    status = "interrupted"
                    break
                if st["reference"] == "continuous":
                    ref = run_block(setup, block, setup.continuous, key,
                                    progress_of(half, 1.0 - half), should_stop)
                    if ref is None:
                        status = "interrupted"
                        break
                    errs = block_errors(setup, block, res, ref)
                else:
                    ref = _RefView(state.ref)
                    errs = block_errors(setup, block, res, ref,
                                        ref_index=[m.rep for m in block.members],
                                        ref_D=setup.reference_shape()[2])
                for j, m in enumerate(block.members):
                    cell = state.cell(m) + (m.rep,)
                    for metric in state.errors:
                        state.errors[metric][cell] = errs[metric][j]
                    state.loss[cell] = res.loss[j]
                    if st["reference"] == "continuous":
                        state.ref_loss[cell] = ref.loss[j]
                    state.done[cell] = 1
            done_frac += weights[i] / total
            state.wall += time.perf_counter() - t0
            checkpoint("running")
            n_blocks += 1
            if should_stop and should_stop():
                status = "interrupted" if n_blocks < len(todo) else status
                break
            if stop_after_blocks is not None and n_blocks >= stop_after_blocks:
                status = "interrupted" if n_blocks < len(todo) else status
                break
    finally:
        bar.close()
    if status == "complete":
        state.fits = fit_limit(setup, state)
    checkpoint(status)
    return status


def _note_wall_mass(state: LimitState, block, wall: np.ndarray, times) -> None:
    """Keep the grid reference's wall mass (S, n_t) and warn once per run above the limit."""
    from .._grid import WALL_MASS_WARNING

    if state.ref_wall is None:
        state.ref_wall = np.full((state.setup.study["seeds"], len(times)), np.nan)
    for j, m in enumerate(block.members):
        state.ref_wall[m.rep] = wall[j]
    worst = int(np.nanargmax(wall[0])) if np.any(np.isfinite(wall[0])) else None
    if worst is not None and wall[0, worst] > WALL_MASS_WARNING:
        print(f"wflow: warning: the grid reference has wall_mass = {wall[0, worst]:.3g} at "
            f"s = {times[worst]:g} (above {WALL_MASS_WARNING:g}): mass reaches the walls of the "
            "box, which changes the flow; widen study.grid.bounds", file=sys.stderr)


class _Progress:
    """Moves the study's bar over one block's share of the total work."""

    def __init__(self, bar, desc: str, base: float, share: float):
        self.bar, self.desc, self.base, self.share = bar, desc, base, share

    def __call__(self, lo: float, span: float):
        def update(frac: float):
            self.bar.n = round(1000 * (self.base + self.share * (lo + span * frac)))
            self.bar.set_postfix_str(self.desc, refresh=True)

        return update


class _RefView:
    """The "particles" reference arrays with a BlockResult's field names."""

    def __init__(self, ref: dict):
        self.loss, self.prediction, self.state = ref["loss"], ref["prediction"], ref["state"]


def fit_limit(setup: LimitSetup, state: LimitState) -> dict:
    """Aggregated errors, slopes and the model fit of every metric at every time (``_fit``)."""
    st = setup.study
    L = np.asarray(st["L"], np.float64)
    M = np.asarray(st["M"], np.float64)
    dims = st["dims"]
    grids = np.meshgrid(L, M, *([np.asarray(dims, np.float64)] if dims else []), indexing="ij")
    terms = model_terms(grids[0].ravel(), grids[1].ravel(), grids[2].ravel() if dims else None)
    # a term whose variable is not swept is a constant: it is left out (its coefficient is NaN)
    use = np.array([len(L) > 1, True] + ([len(dims) > 1] if dims else []))
    boot = bootstrap_indices(st["seeds"], st["bootstrap"], setup.config["seed"])
    out = {}
    for metric, errors in state.errors.items():
        e = np.moveaxis(errors, -1, 0)  # (T, grid..., S)
        rms = aggregate(e, seed_axis=-1)  # (T, grid...)
        samples = [aggregate(np.take(e, idx, axis=-1), seed_axis=-1) for idx in boot]

        def fitted(rms):
            res = {"slope_L": slope(L, rms, axis=1), "slope_M": slope(M, rms, axis=2)}
            if dims:
                res["slope_D"] = slope(np.asarray(dims, np.float64), rms, axis=3)
            fits = [fit_model(terms[:, use], rms[t].ravel()) for t in range(rms.shape[0])]
            coef = np.full((len(fits), terms.shape[1]), np.nan)
            coef[:, use] = np.stack([f.coef for f in fits])
            res["model"] = coef
            res["model_r2"] = np.asarray([f.r2 for f in fits])
            res["model_n"] = np.asarray([f.n for f in fits])
            return res

        main = fitted(rms)
        for name, value in main.items():
            out[f"{metric}/{name}"] = value
        out[f"{metric}/rms"] = np.moveaxis(rms, 0, -1)
        if samples:
            boots = [fitted(s) for s in samples]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lines stay NaN
                for name in ("slope_L", "slope_M", "slope_D", "model"):
                    if name in main:
                        out[f"{metric}/{name}_err"] = np.nanstd(
                            np.stack([b[name] for b in boots]), axis=0)
            out[f"{metric}/rms_err"] = np.moveaxis(np.std(np.stack(samples), axis=0), 0, -1)
    return out
