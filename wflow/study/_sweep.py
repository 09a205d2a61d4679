"""The limit study as a resumable sweep: result arrays, checkpoints, fits (``run_limit``).

The plan (``_limit.plan``) is a deterministic list of blocks. After every
block the whole study file is rewritten atomically with the blocks done so
far (``/done``); a resumed study re-reads it and runs the remaining blocks,
which have the same composition as in an uninterrupted run, so the final file
holds the same numbers.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from .._preflight import release_free_memory
from ._file import config_text, resume_study, write_study
from ._metrics import STUDY_METRICS
from ._fit import (
    MAX_EXPONENT,
    THEORY_EXPONENTS,
    aggregate,
    aic,
    bootstrap_indices,
    exponent_interval,
    fit_free,
    fit_model,
    free_params,
    identified,
    log_rss,
    model_terms,
    slope,
)
from ._limit import (
    BlockResult,
    LimitSetup,
    block_bytes,
    block_errors,
    build_limit,
    compile_block,
    grid_values,
    make_batch,
    plan,
    run_block,
)

__all__ = ["LimitState", "fit_limit", "run_limit"]


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
        self.ref = None  # "particles", "grid": {quantity: (S, T, ...)}, filled by reference blocks
        self.ref_done = np.zeros((S,), np.uint8)
        self.ref_wall = None  # "grid": the reference's wall mass (S, T)
        if st["reference"] == "continuous":
            self.ref_loss = np.full(self.grid + (S, T), np.nan)
        self.wall = 0.0
        self.floor: dict = {}  # {metric: (T,)} the reference's own error (``_floor``), at the end
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
        for name, value in self.floor.items():
            out[f"reference/floor/{name}"] = value
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
            names = self.setup.quantities + (
                ("weights",) if "particles" in self.setup.quantities else ())
            self.ref = {q: data[f"reference/{q}"] for q in names}
            self.ref_done = data["reference/done"]
            self.ref_wall = data.get("reference/wall_mass")
        self.wall = float(data["attrs"].get("wall_time", 0.0))

    def keep_reference(self, block, res: BlockResult) -> None:
        """Store a reference block's quantities (one row per repetition)."""
        kept = {q: v for q, v in res._asdict().items() if v is not None}
        if self.ref is None:
            S = self.setup.study["seeds"]
            self.ref = {q: np.full((S,) + v.shape[1:], np.nan) for q, v in kept.items()}
        for j, m in enumerate(block.members):
            for q, v in kept.items():
                self.ref[q][m.rep] = v[j]
            self.ref_done[m.rep] = 1

    def reference(self) -> BlockResult:
        """The stored reference ("particles", "grid"), one row per repetition."""
        return BlockResult(**{q: self.ref.get(q) for q in BlockResult._fields})

    def keep(self, block, res: BlockResult, errors: dict, ref: BlockResult | None) -> None:
        """Store a sweep block's errors and losses (``ref``: its "continuous" reference)."""
        for j, m in enumerate(block.members):
            cell = self.cell(m) + (m.rep,)
            for metric, e in self.errors.items():
                e[cell] = errors[metric][j]
            self.loss[cell] = res.loss[j]
            if ref is not None:
                self.ref_loss[cell] = ref.loss[j]
            self.done[cell] = 1

    def is_done(self, block) -> bool:
        if block.reference:
            return all(self.ref_done[m.rep] for m in block.members)
        return all(self.done[self.cell(m) + (m.rep,)] for m in block.members)


def run_limit(config: dict, study: dict, path: str, *, resume: bool = False,
              should_stop: Callable[[], bool] | None = None, progress: bool = True,
              stop_after: int | None = None) -> str:
    """Run (or resume) a limit study into ``path``; returns its status.

    "complete", or "interrupted" when ``should_stop()`` became true or
    ``stop_after`` blocks were done (a test hook). The file is rewritten after every
    block (the checkpoint) and at the end, with the fits when complete.
    """
    setup = build_limit(config, study)
    blocks = plan(setup)  # raises ConfigError (study.memory) before anything is written
    text = config_text(config, study)
    state = LimitState(setup)
    if resume:
        state.load(resume_study(path, text, "limit"))
    attrs = {"kind": "limit", "config": text, "seed": config["seed"], "status": "running",
             "fit_model": ("a/L + b*sqrt(D/(L*M)) + c/sqrt(D)" if study["dims"]
                           else "a/L + b/sqrt(L*M)")}

    def checkpoint(status):
        write_study(path, {**attrs, "status": status, "wall_time": state.wall}, state.arrays())

    checkpoint("running")
    status = _run_blocks(state, blocks, checkpoint, should_stop, progress, stop_after)
    if status == "complete":
        floor = _floor_phase(state, should_stop, progress)
        if floor is None:
            status = "interrupted"  # every block is saved; --resume redoes the floor
        else:
            state.floor = floor
            state.fits = fit_limit(setup, state, state.floor)
    checkpoint(status)
    return status


def _floor_phase(state: LimitState, should_stop, progress: bool) -> dict | None:
    """The reference's own error (``_floor``), with a bar of its own ("reference floor": its
    extra runs can cost as much as the reference); None when stopped."""
    from tqdm import tqdm

    from ._floor import reference_floor

    setup = state.setup
    ref = None if setup.study["reference"] == "continuous" else state.reference()
    key = jax.random.fold_in(jax.random.PRNGKey(setup.config["seed"]), 3)
    bar = tqdm(total=1000, disable=not progress, dynamic_ncols=True, leave=True, unit="‰",
               desc="reference floor", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
               "[{elapsed}<{remaining}] {postfix}")
    bar.set_postfix_str(f"{setup.study['reference']} reference")

    def update(frac: float):
        bar.n = round(1000 * frac)
        bar.refresh()

    try:
        return reference_floor(setup, ref, key, update, should_stop)
    finally:
        bar.close()


# Relative cost of a "continuous" reference run (rough: continuous ~ layered x2).
_CONTINUOUS_COST = 2.0


def _run_blocks(state: LimitState, blocks, checkpoint, should_stop, progress, stop_after) -> str:
    """Run the blocks not done yet, in order, checkpointing after each; returns the status."""
    from tqdm import tqdm

    setup = state.setup
    root = jax.random.fold_in(jax.random.PRNGKey(setup.config["seed"]), 2)
    ref_cost = _CONTINUOUS_COST if setup.study["reference"] == "continuous" else 1.0
    weights = [b.cost * (1.0 if b.reference else ref_cost) for b in blocks]
    todo = [i for i, b in enumerate(blocks) if not state.is_done(b)]
    total = float(sum(weights))
    done_frac = sum(w for i, w in enumerate(weights) if i not in set(todo)) / total
    bar = tqdm(total=1000, initial=round(1000 * done_frac), disable=not progress,
               dynamic_ncols=True, leave=True, unit="‰", desc="study limit",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
    n_runs = sum(len(b.members) for b in blocks if not b.reference)
    bar.set_postfix_str(f"{n_runs} runs in {len(blocks)} blocks")
    ahead = _Ahead(setup)
    try:
        for n_blocks, i in enumerate(todo, start=1):
            block = blocks[i]
            t0 = time.perf_counter()
            prepared = ahead.take(block)
            if n_blocks < len(todo):
                j = todo[n_blocks]
                ahead.start(blocks[j], _depth_of(setup, blocks[j]), jax.random.fold_in(root, j))
            desc = (f"{'reference ' if block.reference else ''}L={block.L} M<={block.M} "
                    f"D<={block.D} x{len(block.members)}")
            progress_of = _Progress(bar, desc, done_frac, weights[i] / total)
            run = _reference_block if block.reference else _sweep_block
            if not run(state, block, jax.random.fold_in(root, i), progress_of, should_stop,
                       prepared):
                return "interrupted"
            done_frac += weights[i] / total
            state.wall += time.perf_counter() - t0
            if n_blocks == len(todo) or _shape(blocks[todo[n_blocks]]) != _shape(block):
                # the next program (or the floor phase) need not fit this one's freed holes:
                # give them back, else the heap grows with every shape (the docstring of
                # _preflight.release_free_memory), all but the next block's estimate, which
                # it then reuses without faulting it in again
                nxt = None if n_blocks == len(todo) else blocks[todo[n_blocks]]
                release_free_memory(keep=0.0 if nxt is None else block_bytes(setup, nxt),
                                    retain=True)
            checkpoint("running")
            if ((should_stop and should_stop())
                    or (stop_after is not None and n_blocks >= stop_after)):
                return "interrupted" if n_blocks < len(todo) else "complete"
    finally:
        ahead.close()
        bar.close()
    return "complete"


class _Ahead:
    """The next block's initial batch, built in a background thread while the current block
    trains, and its programs compiled there:

    * ``make_batch`` draws the members' particles with NumPy (about 4 s per 4e8 coordinates
      on one core; 338 s of the full CCM sweep's 1726 s, benchmarks/README.md), and NumPy
      releases the GIL while it draws;
    * ``compile_block`` then compiles the block's training chunk and records (XLA compiles
      without the GIL; 110 s of that sweep), so that the block starts without compiling. On
      2 cores the compiler takes the CPU time the training would have used (the sweep: 1593
      -> 1562 s); where the training leaves a core idle (a GPU, more cores) it is hidden.

    A block built ahead holds its particles (one copy, three while they are drawn and
    stacked) beside the running block's memory. Grid references draw nothing and are not
    built ahead. An error of the compilation ahead is dropped: the block compiles again
    when it runs, and raises it there.
    """

    def __init__(self, setup: LimitSetup):
        self.setup = setup
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="wflow-next-batch")
        self.pending = None  # (block, future of _build: its make_batch, compiled)

    def start(self, block, depth, key) -> None:
        """Build ``block`` ahead, to run with ``depth`` and ``key`` (``run_block``'s)."""
        if not (block.reference and self.setup.study["reference"] == "grid"):
            self.pending = (block, self.pool.submit(self._build, block, depth, key))

    def _build(self, block, depth, key):
        prepared = make_batch(self.setup, block)
        with contextlib.suppress(Exception):
            compile_block(self.setup, block, depth, key, prepared)
        return prepared

    def take(self, block):
        """``make_batch(block)`` if it was started ahead (its errors are raised here), else None."""
        pending, self.pending = self.pending, None
        return pending[1].result() if pending is not None and pending[0] is block else None

    def close(self) -> None:
        """Drop a batch not taken (a stopped study): a draw or a compilation under way ends
        within seconds."""
        self.pending = None
        self.pool.shutdown(wait=False, cancel_futures=True)


def _depth_of(setup: LimitSetup, block):
    """The depth discretization a block trains with first (``run_block``'s)."""
    return setup.reference_depth() if block.reference else setup.depth


def _shape(block) -> tuple:
    """What decides a block's compiled program and its buffers (``size``, not the members:
    the blocks of one bucket share a compilation)."""
    return (block.reference, block.L, block.M, block.D, block.size)


def _reference_block(state: LimitState, block, key, progress_of, should_stop,
                     prepared=None) -> bool:
    """Run a block of the "particles" or "grid" reference into ``state``; False if stopped.
    ``prepared``: its ``make_batch``, built ahead (``_Ahead``)."""
    setup = state.setup
    st = setup.study
    if st["reference"] == "grid":
        # the generic measure path: the grid's cells read as weighted particles
        out = grid_values(setup, block, key, progress_of(0.0, 1.0), should_stop)
        if out is None:
            return False
        res, wall = out
        _note_wall_mass(state, block, wall, st["times"])
    else:
        res = run_block(setup, block, _depth_of(setup, block), key, progress_of(0.0, 1.0),
                        should_stop, prepared)
        if res is None:
            return False
    state.keep_reference(block, res)
    return True


def _sweep_block(state: LimitState, block, key, progress_of, should_stop, prepared=None) -> bool:
    """Run a block of the sweep (and its "continuous" reference) into ``state``; False if
    stopped. ``prepared``: its ``make_batch``, built ahead (``_Ahead``)."""
    setup = state.setup
    continuous = setup.study["reference"] == "continuous"
    half = 1.0 / (1.0 + _CONTINUOUS_COST) if continuous else 1.0
    res = run_block(setup, block, _depth_of(setup, block), key, progress_of(0.0, half),
                    should_stop, prepared)
    if res is None:
        return False
    if continuous:
        ref = run_block(setup, block, setup.continuous, key, progress_of(half, 1.0 - half),
                        should_stop)
        if ref is None:
            return False
        errors = block_errors(setup, block, res, ref)
    else:
        ref = None
        errors = block_errors(setup, block, res, state.reference(),
                              ref_index=[m.rep for m in block.members],
                              ref_D=setup.reference_shape()[2])
    state.keep(block, res, errors, ref)
    return True


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


def fit_limit(setup: LimitSetup, state: LimitState, floor: dict | None = None) -> dict:
    """Aggregated errors, slopes, the fixed-exponent model and the free-exponent fit of every
    metric at every time (``_fit``), with seed-bootstrap errors and 95% intervals.

    ``floor``: {metric: (T,)} the reference's own error (``_floor``); points whose RMS error
    is below 3x the floor are flagged (``below_floor``) and left out of the model fits.
    Keys ("<metric>/<name>", under /fit/): rms, rms_err, slope_*, model, model_err, model_r2,
    model_n, model_aic; free (T, P) with the attribute ``params``, free_ci (T, P, 2), free_r2,
    free_aic, free_n; theory_inside (T, P): 1 / 0 whether the theory's exponent lies in the
    interval (NaN for coefficients and exponents not fitted); free_better (T,) 1 where the
    free fit has the lower AIC; below_floor (grid..., T) and floor_excluded (T,).
    """
    st = setup.study
    L = np.asarray(st["L"], np.float64)
    M = np.asarray(st["M"], np.float64)
    dims = st["dims"]
    grids = np.meshgrid(L, M, *([np.asarray(dims, np.float64)] if dims else []), indexing="ij")
    Lf, Mf = grids[0].ravel(), grids[1].ravel()
    Df = grids[2].ravel() if dims else None
    terms = model_terms(Lf, Mf, Df)
    # a term whose variable is not swept is a constant: it is left out (its coefficient is NaN)
    use = np.array([len(L) > 1, True] + ([len(dims) > 1] if dims else []))
    use_free, note = identified(len(L), len(M), len(dims) if dims else None)
    names = free_params(bool(dims))
    boot = bootstrap_indices(st["seeds"], st["bootstrap"], setup.config["seed"])
    out = {}
    for metric, errors in state.errors.items():
        e = np.moveaxis(errors, -1, 0)  # (T, grid..., S)
        rms = aggregate(e, seed_axis=-1)  # (T, grid...)
        T = rms.shape[0]
        fl = np.full(T, np.nan) if floor is None else np.asarray(floor[metric], np.float64)
        with np.errstate(invalid="ignore"):
            below = rms < 3.0 * fl.reshape((T,) + (1,) * (rms.ndim - 1))
        samples = [aggregate(np.take(e, idx, axis=-1), seed_axis=-1) for idx in boot]

        def fitted(rms, start=None, below=below, T=T):
            res = {"slope_L": slope(L, rms, axis=1), "slope_M": slope(M, rms, axis=2)}
            if dims:
                res["slope_D"] = slope(np.asarray(dims, np.float64), rms, axis=3)
            kept = np.where(below, np.nan, rms).reshape(T, -1)
            fits = [fit_model(terms[:, use], kept[t]) for t in range(T)]
            coef = np.full((T, terms.shape[1]), np.nan)
            coef[:, use] = np.stack([f.coef for f in fits])
            res["model"] = coef
            res["model_r2"] = np.asarray([f.r2 for f in fits])
            res["model_n"] = np.asarray([f.n for f in fits])
            res["model_aic"] = np.asarray([
                aic(log_rss(terms[:, use] @ coef[t, use], kept[t]), f.n, int(use.sum()))
                if f.n > 0 else np.nan for t, f in enumerate(fits)])
            free = [fit_free(Lf, Mf, kept[t], Df, use_free,
                             None if start is None else start[t]) for t in range(T)]
            res["free"] = np.stack([f.value for f in free])
            res["free_r2"] = np.asarray([f.r2 for f in free])
            res["free_aic"] = np.asarray([f.aic for f in free])
            res["free_n"] = np.asarray([f.n for f in free])
            res["free_se"] = np.stack([f.se for f in free])
            res["free_dof"] = np.asarray([f.dof for f in free])
            return res

        main = fitted(rms)
        for name, value in main.items():
            out[f"{metric}/{name}"] = value
        out[f"{metric}/rms"] = np.moveaxis(rms, 0, -1)
        out[f"{metric}/below_floor"] = np.moveaxis(below, 0, -1).astype(np.uint8)
        out[f"{metric}/floor_excluded"] = below.reshape(T, -1).sum(axis=1)
        out[f"{metric}/free@params"] = list(names)
        out[f"{metric}/free@note"] = note
        with np.errstate(invalid="ignore"):
            out[f"{metric}/free_better"] = (main["free_aic"] < main["model_aic"]).astype(np.uint8)
        ci = np.full(main["free"].shape + (2,), np.nan)
        if samples:
            boots = [fitted(s, start=main["free"]) for s in samples]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lines stay NaN
                for name in ("slope_L", "slope_M", "slope_D", "model"):
                    if name in main:
                        out[f"{metric}/{name}_err"] = np.nanstd(
                            np.stack([b[name] for b in boots]), axis=0)
                free = np.stack([b["free"] for b in boots])  # (n_boot, T, P)
                lo, hi = np.nanpercentile(free, [2.5, 97.5], axis=0)
                # seed noise and lack of fit together (``exponent_interval``)
                ci = np.stack([exponent_interval(main["free"][t], lo[t], hi[t],
                                                 main["free_se"][t], int(main["free_dof"][t]))
                               for t in range(T)])
                ci[~np.isfinite(main["free"])] = np.nan
                # the depth exponent's interval also covers the fit with its first correction,
                # a L^-p (1 + e / L), where that describes the data better (lower AIC)
                p_corr = np.full(T, np.nan)
                e_corr = np.full(T, np.nan)
                if use_free[1] == 1:
                    kept = np.where(below, np.nan, rms).reshape(T, -1)
                    for t in range(T):
                        c = fit_free(Lf, Mf, kept[t], Df, use_free, correction=True)
                        if not (c.dof >= 1 and np.isfinite(c.aic) and c.aic < main["free_aic"][t]
                                and np.isfinite(ci[t, 1, 0])):
                            continue
                        p_corr[t], e_corr[t] = c.value[1], c.correction
                        ci_c = exponent_interval(c.value[1], c.value[1] - (main["free"][t, 1]
                                                                           - lo[t, 1]),
                                                 c.value[1] + (hi[t, 1] - main["free"][t, 1]),
                                                 c.se[1], c.dof)
                        ci[t, 1] = [min(ci[t, 1, 0], ci_c[0]), max(ci[t, 1, 1], ci_c[1])]
                # an exponent lives in [0, MAX_EXPONENT] (the fit's bounds): so does its interval
                ci[:, 1::2] = np.clip(ci[:, 1::2], 0.0, MAX_EXPONENT)
                out[f"{metric}/free_p_corrected"] = p_corr
                out[f"{metric}/free_correction"] = e_corr
            out[f"{metric}/rms_err"] = np.moveaxis(np.std(np.stack(samples), axis=0), 0, -1)
        out[f"{metric}/free_ci"] = ci
        # a metric that is a squared distance (order 2: Sinkhorn) falls at twice the rates
        order = STUDY_METRICS[metric].order if metric in STUDY_METRICS else 1.0
        theory = order * np.array([THEORY_EXPONENTS.get(n, np.nan) for n in names])
        out[f"{metric}/free@theory"] = [float(v) for v in theory]
        inside = ((ci[..., 0] <= theory) & (theory <= ci[..., 1])).astype(np.float64)
        inside[~np.isfinite(ci[..., 0]) | ~np.isfinite(theory)] = np.nan
        out[f"{metric}/theory_inside"] = inside
    return out
