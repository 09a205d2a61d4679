"""``wflow study limit|zero-loss|plot``: the command-line layer over ``run_limit`` / ``run_zero_loss``.

Both study verbs have the shape of ``wflow compare``: resolve the keys (the config,
``-o``, the [study] section) -> execute (which writes the study file, checkpointing
it as it goes: a study is resumable) -> report from the file (the printed table) ->
figures. A verb is a row of ``VERBS``.

``cli.py`` registers the verb (``add_parser``) and calls ``main(args, should_stop)``
inside its SIGINT/SIGTERM handler; every bad input is a ``ConfigError`` (one
line, exit 2, nothing written).

Exit codes: 0 complete; 2 bad config or usage; 130 interrupted (the study
file is kept with status "interrupted" and ``--resume`` finishes it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .._cli_args import add_config_arguments, add_no_plots
from .._config import load_config
from .._io import OutputLock, RunFileError, remove_stale_temporaries
from .._paths import check_output_dir, check_output_file
from .._schema import ConfigError
from ._file import StudyFileError, check_study_file, read_study
from ._keys import resolve_limit, resolve_zero_loss
from ._metrics import STUDY_METRICS
from ._sweep import run_limit
from ._zeroloss import run_zero_loss

__all__ = ["VERBS", "StudyVerb", "add_parser", "main"]

EXIT_OK, EXIT_INTERRUPTED = 0, 130


class StudyVerb(NamedTuple):
    """One ``wflow study`` verb: keys -> execute (writes the file) -> table -> figures."""

    help: str
    resolve: Callable[[dict], dict]  # config -> the resolved [study] section (``_keys``)
    execute: Callable[..., str]  # (config, study, path, *, resume, should_stop, progress,
    #                              stop_after) -> "complete" | "interrupted"
    table: Callable[[dict], str]  # the study file (``read_study``) -> the printed summary


def add_parser(sub, func) -> None:
    """Register ``study`` and its sub-verbs on an argparse sub-parser set; ``func(args)`` runs them."""
    s = sub.add_parser("study", help="theory studies: limit (finite vs mean-field), zero-loss",
                       description="Studies of the mean-field theory; see docs/studies.md.")
    verbs = s.add_subparsers(dest="study_verb", metavar="{" + ",".join([*VERBS, "plot"]) + "}")
    for name, verb in VERBS.items():
        p = verbs.add_parser(name, help=verb.help, description=verb.help + ". Exit 0 complete, "
                             "2 bad config, 130 interrupted (resumable with --resume).")
        add_config_arguments(
            p, config_help="TOML config with a [study] section", output="STUDY.h5",
            output_help=f"study file (default: runs/<CONFIG stem>_{name.replace('-', '')}.h5)",
            quiet_help="no progress bar")
        p.add_argument("--resume", action="store_true",
                       help="finish the interrupted study file (same config required)")
        add_no_plots(p, "no_plot")
        # Test hook: stop (as if interrupted) after K blocks / records.
        p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
    p = verbs.add_parser("plot", help="figures of a study file",
                         description="PNG figures of a wflow study file.")
    p.add_argument("study", metavar="STUDY.h5")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="output folder (default: <STUDY stem>_plots beside STUDY.h5)")
    p.set_defaults(func=func)


def _plots_dir(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(path) or ".", f"{stem}_plots")


def main(args, should_stop) -> int:
    """Run ``wflow study <verb>``; raises ConfigError for bad input."""
    name = getattr(args, "study_verb", None)
    if name is None:
        raise ConfigError("wflow study needs a sub-command: " + ", ".join(VERBS) + " or plot "
                          "(see wflow study --help)")
    if name == "plot":
        return _plot(args.study, args.output)
    verb = VERBS[name]
    config = load_config(args.config, list(args.set or []))  # keys
    out = _output(args, config, name)
    lock = OutputLock(out, kind="study file", key="-o")
    try:
        lock.acquire()  # one writer per study file; a second one is told the holder's pid
    except RunFileError as e:
        raise ConfigError(str(e)) from None
    try:
        remove_stale_temporaries(out)
        return _execute(args, config, name, verb, out, should_stop)
    finally:
        lock.release()


def _execute(args, config: dict, name: str, verb, out: str, should_stop) -> int:
    """Resolve the study keys, execute (writing and checkpointing the file), then the report
    and the figures from the file."""
    study = verb.resolve(config)
    status = verb.execute(config, study, out, resume=args.resume,  # execute, writing the file
                          should_stop=should_stop, progress=not args.quiet,
                          stop_after=args.stop_after)
    if status != "complete":
        print(f"wflow: study interrupted; continue with: wflow study {name} {args.config} "
              f"--resume -o {out}" + "".join(f" --set {s}" for s in args.set or []),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(verb.table(read_study(out)))  # the file -> the report
    if not args.no_plot:
        _plot(out, None, quiet=True)  # the file -> the figures
    print(f"study complete -> {out}")
    return EXIT_OK


def _output(args, config: dict, name: str) -> str:
    """The study file: ``-o`` or runs/<CONFIG stem>_<verb>.h5, checked against --resume and
    output.overwrite."""
    stem = os.path.splitext(os.path.basename(args.config))[0]
    out = args.output or os.path.join("runs", f"{stem}_{name.replace('-', '')}.h5")
    check_output_file(out, f"-o {out}", "STUDY.h5")
    if not args.no_plot:
        check_output_dir(_plots_dir(out), f"the figure folder {_plots_dir(out)!r}")
    if args.resume and not os.path.exists(out):
        raise ConfigError(f"-o {out}: no study file to resume (run without --resume to start one)")
    if not args.resume and os.path.exists(out) and not config["output"]["overwrite"]:
        raise ConfigError(f"-o {out}: the file exists; set output.overwrite = true (e.g. --set "
                          "output.overwrite=true) or use --resume to continue it")
    return out


def _plot(path: str, out_dir: str | None, quiet: bool = False) -> int:
    try:
        check_study_file(path)  # the format and the checksums
    except StudyFileError as e:
        raise ConfigError(str(e)) from None
    check_output_dir(out_dir or _plots_dir(path), f"-o {out_dir or _plots_dir(path)!r}")
    from ._figures import plot_study

    for p in plot_study(path, out_dir or _plots_dir(path)):
        print(p)
    return EXIT_OK


# ----------------------------------------------------------------------------- tables


def _num(v: float, err: float | None = None) -> str:
    if not math.isfinite(v):
        return "    nan"
    s = f"{v:+.3f}" if abs(v) < 100 else f"{v:+.3g}"
    if err is not None and math.isfinite(err):
        s += f" ± {err:.3f}"
    return s


def _sci(v: float, err: float | None = None) -> str:
    if not math.isfinite(v):
        return "nan"
    s = f"{v:.3g}"
    if err is not None and math.isfinite(err):
        s += f" ± {err:.2g}"
    return s


def limit_table(data: dict) -> str:
    """The printed summary of a limit study at its last time: one section per metric."""
    import tomllib

    st = tomllib.loads(data["attrs"]["config"])["study"]
    L, M, dims = data["study/L"], data["study/M"], data.get("study/dims")
    times = data["study/times"]
    ref = st["reference"]
    if ref == "particles":
        rd = f", D = {st['reference_dim']}" if "reference_dim" in st else ""
        ref += (f" (L = {st['reference_L']}, M = {st['reference_M']}{rd}, "
                f"{st['reference_depth']} depth)")
    elif ref == "grid":
        g = st["grid"]
        ref += (f" ({'x'.join(map(str, g['cells']))} cells, {g['scheme']}, "
                f"L = {st['reference_L']}, {st['reference_depth']} depth)")
    n_shapes = len(L) * len(M) * (len(dims) if dims is not None else 1)
    lines = [f"wflow study limit: {n_shapes} shapes x {len(data['study/seeds'])} seeds, "
             f"sampling {st['sampling']}, reference {ref}; errors at s = {times[-1]:g} (RMS over "
             "seeds, ± bootstrap std)"]
    for metric in st["metrics"]:
        if f"errors/{metric}" in data:
            lines += _metric_lines(data, metric)
    return "\n".join(lines)


def _metric_lines(data: dict, metric: str) -> list[str]:
    """One metric's section of ``limit_table``: RMS errors, slopes and the model fit."""
    L, M, dims = data["study/L"], data["study/M"], data.get("study/dims")
    t = len(data["study/times"]) - 1

    def f(name):
        return data.get(f"fit/{metric}/{name}")

    known = STUDY_METRICS.get(metric)  # None: a metric this version does not know
    lines = [f"\n[{metric}]" + (f" {known.label}" if known is not None else "")]
    rms = f("rms")
    if rms is not None and dims is None and len(L) * len(M) <= 120:
        below = f("below_floor")
        star = lambda i, j: "*" if below is not None and below[i, j, t] else " "
        lines.append("  error        " + " ".join(f"M={m:<9d}" for m in M))
        for i, l in enumerate(L):
            lines.append(f"  L={l:<9d} " + " ".join(f"{rms[i, j, t]:<10.3e}{star(i, j)}"
                                                   for j in range(len(M))))
    for name, over in (("slope_L", "L"), ("slope_M", "M"), ("slope_D", "D")):
        s = f(name)
        if s is None or (over == "L" and len(L) < 2) or (over == "M" and len(M) < 2):
            continue
        err = f(name + "_err")
        s = s[t]
        e = err[t] if err is not None else np.full_like(s, np.nan)
        labels = _line_labels(name, L, M, dims)
        for lab, v, ev in zip(labels, s.ravel(), e.ravel(), strict=True):
            lines.append(f"  slope vs {over:<2s} at {lab:<22s} {_num(v, ev)}")
    coef, cerr = f("model"), f("model_err")
    if coef is not None:
        c = coef[t]
        ce = cerr[t] if cerr is not None else np.full_like(c, np.nan)
        parts = ", ".join(f"{n} = {_sci(c[i], ce[i])}" if math.isfinite(c[i]) else f"{n}: not swept"
                          for i, n in enumerate("abc"[:len(c)]))
        lines.append(f"  fit err ~ {data['attrs'].get('fit_model', '')}: {parts}, "
                     f"R^2 = {f('model_r2')[t]:.3f} ({int(f('model_n')[t])} points)")
    lines += _free_lines(data, metric, t)
    return lines


def _free_lines(data: dict, metric: str, t: int) -> list[str]:
    """The free-exponent fit, its 95% intervals, the theory's exponents and the AIC verdict;
    the reference's floor and the points left out for it."""
    def f(name):
        return data.get(f"fit/{metric}/{name}")

    lines = []
    floor = data.get(f"reference/floor/{metric}")
    if floor is not None:
        n_out = f("floor_excluded")
        n_out = int(n_out[t]) if n_out is not None else 0
        lines.append(f"  reference floor {_sci(float(floor[t]))}: {n_out} point(s) below 3x the "
                     "floor (marked * above) left out of the fits")
    free, ci = f("free"), f("free_ci")
    if free is None:
        return lines
    names = [str(n) for n in data.get(f"fit/{metric}/free@params", [])]
    stored = data.get(f"fit/{metric}/free@theory")
    theory = ({n: float(v) for n, v in zip(names, stored, strict=False) if math.isfinite(v)}
              if stored is not None else {"p": 1.0, "q": 0.5, "r": 0.5})
    inside = f("theory_inside")
    parts = []
    for i, n in enumerate(names):
        v = free[t, i]
        if not math.isfinite(v):
            continue
        lo, hi = ci[t, i]
        iv = f" [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else ""
        if n in theory:
            verdict = ""
            if inside is not None and math.isfinite(inside[t, i]):
                verdict = (f" (theory {theory[n]:g} {'inside' if inside[t, i] else 'OUTSIDE'})")
            parts.append(f"{n} = {v:.3f}{iv}{verdict}")
        else:
            parts.append(f"{n} = {v:.3g}{iv}")
    model = "a L^-p + b (L M)^-q" + (" + c D^-r" if len(names) > 4 else "")
    r2 = f("free_r2")[t]
    n = f("free_n")
    if not parts:
        lines.append(f"  free fit err ~ {model}: not fitted ({int(n[t]) if n is not None else 0} "
                     "point(s) to fit, those not below 3x the floor: too few for its parameters)")
    else:
        lines.append(f"  free fit err ~ {model} (95% intervals, seeds and lack of fit): "
                     + ", ".join(parts)
                     + f", R^2 = {r2:.3f}" + (" (poor fit: R^2 < 0.9)" if not r2 >= 0.9 else ""))
    p_corr, e_corr = f("free_p_corrected"), f("free_correction")
    if p_corr is not None and math.isfinite(p_corr[t]):
        lines.append(f"  the depth term with its first correction, a L^-p (1 + e/L), fits better "
                     f"(AIC): p = {p_corr[t]:.3f}, e = {e_corr[t]:.3g}; p's interval covers both "
                     "fits")
    note = data.get(f"fit/{metric}/free@note", "")
    if note:
        lines.append(f"  note: {note}")
    fa, ma = f("free_aic")[t], f("model_aic")[t]
    if math.isfinite(fa) and math.isfinite(ma):
        better = "free exponents" if fa < ma else "fixed exponents"
        lines.append(f"  AIC on log residuals: free {fa:.1f}, fixed {ma:.1f} -> {better} "
                     "describe the data better")
    return lines


def _line_labels(name, L, M, dims):
    if name == "slope_L":
        return ([f"M={m}" for m in M] if dims is None
                else [f"M={m}, D={d}" for m in M for d in dims])
    if name == "slope_M":
        return ([f"L={l}" for l in L] if dims is None
                else [f"L={l}, D={d}" for l in L for d in dims])
    return [f"L={l}, M={m}" for l in L for m in M]


def zero_loss_table(data: dict) -> str:
    """The printed summary of a zero-loss study."""
    lines = [("wflow study zero-loss: E(S)/E(0), stationarity residual, sup |grad V| on the box, "
              "|grad V(0)|, tail mass (initial -> final)")]
    names = sorted({k.split("/")[1] for k in data if k.startswith("runs/")})
    for name in names:
        def h(c, name=name):
            return data[f"runs/{name}/history/{c}"]

        loss = h("loss")
        ratio = loss[-1] / loss[0] if loss[0] > 0 else float("nan")
        lines.append(
            f"  {name:<9s} s = {h('s')[-1]:<8g} E: {loss[0]:.3e} -> {loss[-1]:.3e} "
            f"(E(S)/E(0) = {ratio:.3e})  residual {h('stationarity')[0]:.2e} -> "
            f"{h('stationarity')[-1]:.2e}  sup|grad V| {h('sup_grad_v')[0]:.2e} -> "
            f"{h('sup_grad_v')[-1]:.2e}  |grad V(0)| {h('grad_v_origin')[-1]:.2e}  "
            f"tail {h('tail_mass')[0]:.3f} -> {h('tail_mass')[-1]:.3f}")
    return "\n".join(lines)


VERBS: dict[str, StudyVerb] = {
    "limit": StudyVerb("sweep shapes (L, M[, D]) x seeds, errors against the limit, fits and "
                       "figures", resolve_limit, run_limit, limit_table),
    "zero-loss": StudyVerb("long runs from several initial measures: loss, residual, "
                           "sup |grad V| on a box, tail mass", resolve_zero_loss, run_zero_loss,
                           zero_loss_table),
}
