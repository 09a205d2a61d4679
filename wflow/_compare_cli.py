"""``wflow compare CONFIG [-o COMPARE.h5] [--set ...]``: a thin layer over ``_compare``.

Validates the config (including ``[compare]``) before anything runs, runs
``run_compare``, writes the compare file atomically (``write_compare``) and its
figures (``plot_compare``), and prints one line per run plus the tables of
the alpha sweep and the reordering study. Exit codes: 0 done; 2 bad config
or usage (one line, nothing written); 3 the mean-field run diverged (file
written, each run's status in it); 130 interrupted (nothing written).
"""

from __future__ import annotations

import math
import os
import sys

from ._cli_args import add_config_arguments, add_no_plots

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


def add_compare_parser(sub) -> None:
    """Register the ``compare`` verb on the ``wflow`` subparsers."""
    c = sub.add_parser(
        "compare", help="finite networks trained by optax next to the mean-field flow",
        description="Train the config's ResNet with the optimizers of its [compare] section "
        "(same data, same initial parameters) next to the mean-field particle flow; write one "
        "HDF5 compare file and its figures. Exit 0 done, 2 bad config, 3 the mean-field run "
        "diverged, 130 interrupted.")
    add_config_arguments(c, config_help="TOML config file with a [compare] section",
                         output="COMPARE.h5", quiet_help="no per-run lines",
                         output_help="compare file (default: output.path with _compare before .h5)")
    c.add_argument("--plots", metavar="DIR",
                   help="figure folder (default: <COMPARE stem>_plots beside the file)")
    add_no_plots(c, "no_plots")
    c.set_defaults(func=cmd_compare)


def _fail(message) -> int:
    lines = str(message).strip().splitlines()
    line = lines[0] if lines else repr(message)
    print(f"wflow: error: {line}", file=sys.stderr)
    return EXIT_USAGE


def default_output(config: dict) -> str:
    """output.path with ``_compare`` inserted before the extension."""
    stem, _ = os.path.splitext(config["output"]["path"])
    return f"{stem}_compare.h5"


def cmd_compare(args) -> int:
    from ._config import ConfigError
    from ._io import OutputLock, RunFileError, remove_stale_temporaries

    lock = None
    try:
        try:
            config, out, folder = _checked(args)
            lock = OutputLock(out, kind="compare file", key="-o")
            lock.acquire()  # one writer per compare file; a second one is told the holder's pid
        except (ConfigError, RunFileError) as e:
            return _fail(e)
        remove_stale_temporaries(out)
        return _compare(args, config, out, folder)
    finally:
        if lock is not None:
            lock.release()


def _checked(args):
    """(config, output file, figure folder or None), every check done before any computation."""
    from ._compare import build_optimizers
    from ._config import ConfigError, load_config
    from ._paths import check_output_dir, check_output_file

    config = load_config(args.config, list(args.set or []))
    if "compare" not in config:
        raise ConfigError(f"config file {args.config!r}: has no [compare] section; wflow "
                          'compare needs one (e.g. [compare] optimizers = ["sgd", "adam"])')
    build_optimizers(config)
    out = args.output or default_output(config)
    check_output_file(out, f"-o {out!r}", "COMPARE.h5")
    if os.path.exists(out) and not config["output"]["overwrite"]:
        raise ConfigError(f"-o {out!r}: the file exists; set output.overwrite = true "
                          "(e.g. --set output.overwrite=true) or choose another name")
    folder = None
    if not args.no_plots:
        stem = os.path.splitext(os.path.basename(out))[0]
        folder = args.plots or os.path.join(os.path.dirname(out), f"{stem}_plots")
        check_output_dir(folder, f"--plots {folder!r}")
    return config, out, folder


def _compare(args, config, out, folder) -> int:
    from ._compare import run_compare, write_compare
    from ._config import ConfigError, config_warnings, to_toml

    try:
        for warning in config_warnings(config):
            print(f"wflow: warning: {warning}", file=sys.stderr)
        log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
        result = run_compare(config, log=log)
    except ConfigError as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("wflow: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        write_compare(out, result, to_toml(config))
    except OSError as e:
        return _fail(f"-o {out!r}: cannot be written ({e.strerror or e})")
    written = [out]
    if folder is not None:
        from ._compare_plot import plot_compare

        written += plot_compare(out, folder)
    _print_tables(result)
    for path in written:
        print(path)
    for traj in result.runs[1:]:
        if traj.status != "complete":
            print(f"wflow: warning: {traj.name} diverged at s = {traj.s[-1]:.4g} (try a smaller "
                  f"compare.{traj.name}.learning_rate)", file=sys.stderr)
    if result.runs[0].status != "complete":
        print("wflow: the mean-field run diverged; try a smaller train.dt", file=sys.stderr)
        return EXIT_DIVERGED
    return EXIT_OK


def _pm(stat) -> str:
    mean, std, _ = stat
    return f"{mean:.4g} ± {std:.2g}" if math.isfinite(mean) else "nan"


def _print_tables(result) -> None:
    from ._compare import movement_slope, reorder_table

    if result.scales:
        print("alpha sweep (final values):  alpha  loss  movement")
        for alpha, t in result.scales:
            print(f"  {alpha:8.4g}  {t.values['loss'][-1]:.4e}  {t.values['movement'][-1]:.4e}")
        print(f"  slope of log movement vs log alpha: {movement_slope(result.scales):.3f}")
    if result.reorder:
        rows = reorder_table(result)
        names = list(rows[0][1])
        n = rows[0][1][names[0]][2]
        print(f"block reordering (every {result.config['train']['reorder_every']} steps), final "
              f"values, mean ± std over {n} seeds:")
        print("| reorder | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for mode, stats in rows:
            print(f"| {mode} | " + " | ".join(_pm(stats[k]) for k in names) + " |")
