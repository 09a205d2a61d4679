"""``wflow study limit|zero-loss|plot``: the command-line layer over ``run_limit`` / ``run_zero_loss``.

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

import numpy as np

from .._config import load_config
from .._io import OutputLock, RunFileError, remove_stale_temporaries
from .._paths import check_output_dir, check_output_file
from .._schema import ConfigError
from ._file import StudyFileError, check_study_file, read_study

__all__ = ["add_parser", "main"]

EXIT_OK, EXIT_INTERRUPTED = 0, 130


def add_parser(sub, func) -> None:
    """Register ``study`` and its sub-verbs on an argparse sub-parser set; ``func(args)`` runs them."""
    s = sub.add_parser("study", help="theory studies: limit (finite vs mean-field), zero-loss",
                       description="Studies of the mean-field theory; see the README.")
    verbs = s.add_subparsers(dest="study_verb", metavar="{limit,zero-loss,plot}")
    texts = {"limit": ("sweep shapes (L, M[, D]) x seeds, errors against the limit, fits and "
                       "figures"),
             "zero-loss": ("long runs from several initial measures: loss, residual, "
                           "sup |grad V| on a box, tail mass")}
    for name, text in texts.items():
        p = verbs.add_parser(name, help=text, description=text + ". Exit 0 complete, 2 bad "
                             "config, 130 interrupted (resumable with --resume).")
        p.add_argument("config", metavar="CONFIG", help="TOML config with a [study] section")
        p.add_argument("-o", "--output", metavar="STUDY.h5",
                       help=f"study file (default: runs/<CONFIG stem>_{name.replace('-', '')}.h5)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                       help="override a config key (VALUE is a TOML value); repeatable")
        p.add_argument("--resume", action="store_true",
                       help="finish the interrupted study file (same config required)")
        p.add_argument("--no-plot", action="store_true", help="do not write the figures")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    verb = getattr(args, "study_verb", None)
    if verb is None:
        raise ConfigError("wflow study needs a sub-command: limit, zero-loss or plot "
                          "(see wflow study --help)")
    if verb == "plot":
        return _plot(args.study, args.output)
    overrides = list(args.set or [])
    config = load_config(args.config, overrides)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    out = args.output or os.path.join("runs", f"{stem}_{verb.replace('-', '')}.h5")
    check_output_file(out, f"-o {out}", "STUDY.h5")
    if not args.no_plot:
        check_output_dir(_plots_dir(out), f"the figure folder {_plots_dir(out)!r}")
    if args.resume and not os.path.exists(out):
        raise ConfigError(f"-o {out}: no study file to resume (run without --resume to start one)")
    if not args.resume and os.path.exists(out) and not config["output"]["overwrite"]:
        raise ConfigError(f"-o {out}: the file exists; set output.overwrite = true (e.g. --set "
                          "output.overwrite=true) or use --resume to continue it")
    lock = OutputLock(out, kind="study file", key="-o")
    try:
        lock.acquire()  # one writer per study file; a second one is told the holder's pid
    except RunFileError as e:
        raise ConfigError(str(e)) from None
    try:
        remove_stale_temporaries(out)
        return _run(args, config, verb, out, should_stop)
    finally:
        lock.release()


def _run(args, config: dict, verb: str, out: str, should_stop) -> int:
    if verb == "limit":
        from ._keys import resolve_limit
        from ._sweep import run_limit

        study = resolve_limit(config)
        status = run_limit(config, study, out, resume=args.resume, should_stop=should_stop,
                           progress=not args.quiet, stop_after_blocks=args.stop_after)
        report = limit_table
    else:
        from ._keys import resolve_zero_loss
        from ._zeroloss import run_zero_loss

        study = resolve_zero_loss(config)
        status = run_zero_loss(config, study, out, resume=args.resume, should_stop=should_stop,
                               progress=not args.quiet, stop_after_records=args.stop_after)
        report = zero_loss_table
    if status != "complete":
        print(f"wflow: study interrupted; continue with: wflow study {verb} {args.config} "
              f"--resume -o {out}" + "".join(f" --set {s}" for s in args.set or []),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report(read_study(out)))
    if not args.no_plot:
        _plot(out, None, quiet=True)
    print(f"study complete -> {out}")
    return EXIT_OK


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
    """The printed summary of a limit study at its last time."""
    import tomllib

    cfg = tomllib.loads(data["attrs"]["config"])
    st = cfg["study"]
    L, M = data["study/L"], data["study/M"]
    dims = data.get("study/dims")
    times = data["study/times"]
    t = len(times) - 1
    S = len(data["study/seeds"])
    lines = []
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
    lines.append(f"wflow study limit: {n_shapes} shapes x {S} seeds, sampling {st['sampling']}, "
                 f"reference {ref}; errors at s = {times[t]:g} (RMS over seeds, ± bootstrap std)")
    model = data["attrs"].get("fit_model", "")
    for metric in [m for m in ("loss", "output", "hidden") if f"errors/{m}" in data]:
        def f(name, metric=metric):
            return data.get(f"fit/{metric}/{name}")

        lines.append(f"\n[{metric}]")
        rms = f("rms")
        if rms is not None and dims is None and len(L) * len(M) <= 120:
            lines.append("  error        " + " ".join(f"M={m:<9d}" for m in M))
            for i, l in enumerate(L):
                lines.append(f"  L={l:<9d} " + " ".join(f"{rms[i, j, t]:<11.3e}"
                                                       for j in range(len(M))))
        for name, over, per in (("slope_L", "L", "M"), ("slope_M", "M", "L"), ("slope_D", "D", "")):
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
            names = "abc"
            parts = ", ".join(f"{names[i]} = {_sci(c[i], ce[i])}" if math.isfinite(c[i])
                              else f"{names[i]}: not swept" for i in range(len(c)))
            lines.append(f"  fit err ~ {model}: {parts}, R^2 = {f('model_r2')[t]:.3f} "
                         f"({int(f('model_n')[t])} points)")
    return "\n".join(lines)


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
