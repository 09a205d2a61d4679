"""The ``wflow`` command: ``run``, ``plot`` and ``info`` (SPEC §3).

A thin layer over the public API: ``load_config`` + ``build_run`` validate
everything (including data and init files) before anything is written, then
``integrate`` runs with a callback that appends every record to the HDF5 run
file (``_io.RunWriter``) and drives the progress bar.

Exit codes: 0 complete; 2 bad config or usage (one line on stderr, nothing
written); 3 diverged (file kept with status "diverged"); 130 interrupted by
SIGINT / SIGTERM (file kept with status "interrupted", resumable with
``--resume``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import tomllib

import numpy as np

from ._build import build_run
from ._config import ConfigError, config_warnings, load_config, to_toml
from ._io import RunFileError, RunWriter, check_run_file
from ._sharding import describe, initialize_distributed, is_main_process, sync_processes

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130
_EXIT = {"complete": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (the caller prints it, exit 2)."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _fail(message) -> int:
    text = str(message).strip().splitlines()
    line = text[0] if text else repr(message)
    print(f"wflow: error: {line}", file=sys.stderr)
    return EXIT_USAGE


# ----------------------------------------------------------------------------- signals


class _StopRequest:
    """SIGINT / SIGTERM set a flag the integrate callback reads at the next record.

    A second signal aborts at once (KeyboardInterrupt); the file then keeps
    status "running" and ``--resume`` continues from its last snapshot.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nwflow: {signal.Signals(signum).name} received: stopping at the next record "
              "(send it again to abort at once)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ----------------------------------------------------------------------------- run


def _normalized(config: dict) -> dict:
    """The config as it reads back from the run file (TOML round trip), without [output]."""
    out = tomllib.loads(to_toml(config))
    out.pop("output", None)
    return out


def _first_difference(a: dict, b: dict, prefix: str = ""):
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}", va, vb
    return None


def _fmt_value(v) -> str:
    if v is None:
        return "(not set)"
    return to_toml({"v": v})[4:].strip()


class _NullWriter:
    """The run file of processes other than 0 in a multi-process run: nothing is written."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _cmd_run(args) -> int:
    overrides = list(args.set or [])
    if args.output is not None:
        overrides.append(("output.path", args.output))
    try:
        initialize_distributed()  # multi-process environments (SLURM, Open MPI, coordinator)
    except (RuntimeError, ValueError, KeyError) as e:
        return _fail(f"jax.distributed.initialize failed: {e}")
    try:
        config = load_config(args.config, overrides)
        for warning in config_warnings(config):
            print(f"wflow: warning: {warning}", file=sys.stderr)
        out = config["output"]["path"]
        if os.path.isdir(out):
            raise ConfigError(f"output.path = {out!r}: is a directory; give a file name (OUT.h5)")
        if args.resume:
            return _resume(args, config)
        setup = build_run(config)
        if os.path.exists(out) and not config["output"]["overwrite"]:
            raise ConfigError(f"output.path = {out!r}: the file exists; set output.overwrite = true "
                              "(e.g. --set output.overwrite=true) or use --resume to continue it")
    except ConfigError as e:
        return _fail(e)
    flow = setup.flow
    sync_processes("wflow-run-checked")  # every process checked before process 0 writes
    if not is_main_process():
        writer = _NullWriter()
    else:
        try:
            writer = RunWriter.create(
                out, config_text=to_toml(config), seed=config["seed"],
                x=np.asarray(setup.problem.x), y=np.asarray(setup.problem.y),
                name=flow.snapshot_name, measure0=flow.snapshot(setup.measure0),
                key=np.asarray(setup.key), history=flow.history_names, arrays=setup.arrays,
                attrs=describe(setup.depth))
        except OSError as e:
            return _fail(f"output.path = {out!r}: cannot be created ({e.strerror or e})")
    return _execute(args, config, setup, writer, out, state=None, initial_loss=None,
                    wall_offset=0.0)


def _resume(args, config) -> int:
    import h5py
    import jax.numpy as jnp

    from ._integrate import FlowState

    out = config["output"]["path"]
    if not os.path.exists(out):
        raise ConfigError(f"output.path = {out!r}: no run file to resume (run without --resume "
                          "to start one)")
    try:
        attrs = check_run_file(out)
    except RunFileError as e:
        raise ConfigError(f"output.path: {e}") from None
    status = attrs.get("status")
    if status == "complete":
        raise ConfigError(f"output.path = {out!r}: the run is already complete; nothing to resume")
    if status == "diverged":
        raise ConfigError(f"output.path = {out!r}: the run diverged and cannot be resumed; start a "
                          "new run with a smaller train.dt")
    if status not in ("running", "interrupted"):
        raise ConfigError(f"output.path = {out!r}: unknown status {status!r}")
    try:
        stored = tomllib.loads(attrs.get("config", ""))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"output.path = {out!r}: the stored config is not valid TOML ({e})") from None
    stored.pop("output", None)
    diff = _first_difference(_normalized(config), stored)
    if diff:
        key, now, then = diff
        raise ConfigError(f"{key} = {_fmt_value(now)}: differs from {_fmt_value(then)} stored in "
                          f"{out}; --resume needs the same config (only [output] may differ)")
    setup = build_run(config)
    name = setup.flow.snapshot_name
    try:
        with h5py.File(out, "r") as f:
            x, y = f["data/x"][()], f["data/y"][()]
            stored = f[f"state/{name}"][()]
            step = int(f["state/step"][()])
            key = f["state/key"][()]
            n_hist_file = f["history/s"].shape[0]
            n_snap_file = f["snapshots/s"].shape[0]
            wall = f["history/wall_time"][()]
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"output.path = {out!r}: unreadable run file ({e})") from None
    if not (np.array_equal(x, np.asarray(setup.problem.x))
            and np.array_equal(y, np.asarray(setup.problem.y))):
        raise ConfigError(f"data: the data built from the config differ from those stored in {out} "
                          "(was the data file changed?); --resume needs the same data")
    expected = setup.flow.snapshot(setup.measure0)
    if stored.shape != expected.shape or stored.dtype != expected.dtype:
        raise ConfigError(f"output.path = {out!r}: /state/{name} has shape {stored.shape} "
                          f"({stored.dtype}), the config needs {expected.shape} ({expected.dtype})")
    schedule = setup.schedule
    if not 0 <= step <= schedule.n_steps:
        raise ConfigError(f"output.path = {out!r}: /state/step = {step} is outside 0..{schedule.n_steps}")
    # Records up to the saved state are kept; integrate re-emits the s = 0 record itself.
    n_hist = int(np.sum(schedule.record_steps() <= step)) if step > 0 else 0
    n_snap = int(np.sum(schedule.snapshot_steps() <= step)) if step > 0 else 0
    if n_hist > n_hist_file or n_snap > n_snap_file:
        raise ConfigError(f"output.path = {out!r}: the file holds fewer records than its state "
                          f"(step {step}); it cannot be resumed")
    initial_loss = attrs.get("initial_loss")
    if step > 0 and initial_loss is None:
        raise ConfigError(f"output.path = {out!r}: no initial_loss attribute; it cannot be resumed")
    sync_processes("wflow-resume-read")  # every process read the file before process 0 writes
    if not is_main_process():
        writer = _NullWriter()
    else:
        try:
            writer = RunWriter.reopen(out)
        except RunFileError as e:
            raise ConfigError(str(e)) from None
    writer.truncate(n_hist, n_snap)
    writer.set_status("running")
    state = FlowState(setup.flow.restore(setup.measure0, stored), step, jnp.asarray(key))
    return _execute(args, config, setup, writer, out, state=state,
                    initial_loss=float(initial_loss) if step > 0 else None,
                    wall_offset=float(wall[n_hist - 1]) if n_hist > 0 else 0.0)


def _execute(args, config, setup, writer: RunWriter, out: str, *, state, initial_loss,
             wall_offset) -> int:
    import equinox as eqx
    from tqdm import tqdm

    from ._grid import wall_mass_warning
    from ._integrate import integrate

    schedule = setup.schedule
    stop_after = args.stop_after_records
    n_records = 0
    warned_wall = "wall_mass_warning" in writer.f.attrs  # once per run, resumed or not
    main = is_main_process()  # only process 0 writes and shows progress
    layout = describe(setup.depth)
    if layout["devices"] > 1 and main and not args.quiet:
        print(f"wflow: {layout['devices']} devices, solver.shard = \"{layout['shard']}\"",
              file=sys.stderr)
    bar = tqdm(total=schedule.n_steps, initial=0 if state is None else state.step, unit="step",
               disable=args.quiet or not main, file=sys.stderr, dynamic_ncols=True, leave=True,
               desc=os.path.basename(out))

    with _StopRequest() as stop:

        def on_record(rec) -> bool:
            nonlocal n_records, warned_wall
            if rec.step == 0 and rec.history:
                writer.set_attr("initial_loss", float(rec.loss))
            if rec.history:
                writer.append_history({"s": rec.s, **rec.values, "wall_time": rec.wall_time})
            if rec.snapshot is not None:
                writer.append_snapshot(rec.s, rec.snapshot)
                writer.save_state(rec.snapshot, rec.step, rec.key)
            writer.flush()
            if not warned_wall and (text := wall_mass_warning(rec.values, rec.s)) is not None:
                warned_wall = True
                writer.set_attr("wall_mass_warning", text)
                tqdm.write(f"wflow: warning: {text}", file=sys.stderr)
            bar.update(rec.step - bar.n)
            bar.set_postfix_str(f"s={rec.s:.4g} loss={rec.loss:.3e} "
                                f"stationarity={rec.stationarity:.3e}")
            n_records += 1
            return stop.requested or (stop_after is not None and n_records >= stop_after)

        try:
            result = integrate(setup.problem, setup.depth, schedule, theta0=setup.measure0,
                               regularization=setup.regularization, reordering=setup.reordering,
                               key=setup.key, state=state,
                               initial_loss=initial_loss, wall_offset=wall_offset,
                               callback=on_record)
            final = result.state
            flow = setup.flow
            writer.save_state(flow.snapshot(final.measure), final.step, np.asarray(final.key))
            if result.status == "complete":
                predict = eqx.filter_jit(lambda flow, measure: flow.predict(measure))
                writer.write_final(np.asarray(predict(flow, final.measure)))
            writer.set_status(result.status)
            if not main:
                return _EXIT[result.status]
            loss = float(writer.f["history/loss"][-1])
            stationarity = float(writer.f["history/stationarity"][-1])
            wall = float(writer.f["history/wall_time"][-1])
        except KeyboardInterrupt:
            bar.close()
            writer.close()
            print(f"wflow: aborted; {out} keeps status \"running\" and --resume continues it from "
                  "its last snapshot", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            bar.close()
            if main and writer.f.id.valid:
                writer.close()

    s = final.step * schedule.step
    print(f"status={result.status}  s={s:.6g}  loss={_num(loss)}  "
          f"stationarity={_num(stationarity)}  wall={wall:.1f}s  -> {out}")
    if result.status == "interrupted":
        print(f"wflow: interrupted at s = {s:.6g}; continue with: wflow run {args.config} "
              f"--resume -o {out}", file=sys.stderr)
    elif result.status == "diverged":
        print(f"wflow: the run diverged at s = {s:.6g} (non-finite or exploding loss); "
              "try a smaller train.dt or train.method = \"adaptive\"", file=sys.stderr)
    return _EXIT[result.status]


def _num(v: float) -> str:
    return f"{v:.4e}" if math.isfinite(v) else str(v)


# ----------------------------------------------------------------------------- plot, info


def _cmd_plot(args) -> int:
    path = args.run
    try:
        check_run_file(path)
    except RunFileError as e:
        return _fail(e)
    out_dir = args.output
    if out_dir is None:
        stem = os.path.splitext(os.path.basename(path))[0]
        out_dir = os.path.join(os.path.dirname(path), f"{stem}_plots")
    from ._plot import plot_run

    try:
        paths = plot_run(path, out_dir)
    except (ValueError, OSError) as e:
        return _fail(e)
    for p in paths:
        print(p)
    return EXIT_OK


def _cmd_study(args) -> int:
    from .study._command import main as study_main

    with _StopRequest() as stop:
        try:
            return study_main(args, lambda: stop.requested)
        except ConfigError as e:
            return _fail(e)


def _cmd_info(args) -> int:
    from importlib.metadata import PackageNotFoundError, version

    import jax

    from . import __version__

    print(f"wflow        {__version__}")
    for pkg in ("jax", "jaxlib", "diffrax", "equinox", "optax", "h5py", "numpy"):
        try:
            v = version(pkg)
        except PackageNotFoundError:
            v = "not installed"
        print(f"{pkg:<12} {v}")
    print(f"{'python':<12} {sys.version.split()[0]}")
    print(f"{'backend':<12} {jax.default_backend()}")
    print(f"{'devices':<12} {', '.join(str(d) for d in jax.devices())}")
    print(f"{'precision':<12} float32 by default (solver.precision = \"float64\" to change)")
    print(f"{'x64 enabled':<12} {bool(jax.config.jax_enable_x64)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="wflow", description="Mean-field ResNets: Wasserstein gradient flows of the "
                "parameter density, simulated with JAX.")
    p.add_argument("--version", action="version", version=f"wflow {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{run,plot,study,compare,info}")

    r = sub.add_parser("run", help="run a config, write an HDF5 run file",
                       description="Validate CONFIG, run the gradient flow, write OUT.h5. "
                       "Exit 0 complete, 2 bad config, 3 diverged, 130 interrupted.")
    r.add_argument("config", metavar="CONFIG", help="TOML config file")
    r.add_argument("-o", "--output", metavar="OUT.h5",
                   help="run file (default: output.path, else runs/<CONFIG stem>.h5)")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                   help="override a config key (VALUE is a TOML value, else a string); repeatable")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run file OUT (the config stored in it must equal "
                   "CONFIG with --set applied; only [output] may differ)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    # Test hook: behave as if interrupted after K records (deterministic resume tests).
    r.add_argument("--stop-after-records", type=int, default=None, help=argparse.SUPPRESS)
    r.set_defaults(func=_cmd_run)

    pl = sub.add_parser("plot", help="PNG figures of a run file",
                        description="Loss and stationarity curves, particle clouds per depth, "
                        "predictions vs targets.")
    pl.add_argument("run", metavar="RUN.h5")
    pl.add_argument("-o", "--output", metavar="DIR",
                    help="output folder (default: <RUN stem>_plots beside RUN.h5)")
    pl.set_defaults(func=_cmd_plot)

    from ._compare_cli import add_compare_parser

    add_compare_parser(sub)

    from .study._command import add_parser as add_study_parser

    add_study_parser(sub, _cmd_study)

    i = sub.add_parser("info", help="versions, backend, devices, precision")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wflow`` console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        return _fail(e)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:  # before the run's own handlers are installed, or a second Ctrl-C
        print("wflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
