"""The ``wflow`` command: ``run``, ``plot`` and ``info`` (docs/getting-started.md, "Command line").

A thin layer over the public API: ``load_config`` + ``build_run`` validate
everything (including data and init files) before anything is written, then
``integrate`` runs with a callback that queues every record for the run file
(``_io.RunWriter``) and drives the progress bar.

What protects a run, in order (each piece is reusable by other verbs):

1. ``_signals.Interrupts`` is entered first in ``main``: SIGINT / SIGTERM at
   any moment end the command with exit 130 and one line (``_signals``).
2. ``_preflight.check_resources``: memory and disk estimated from the config
   before anything is allocated (``--memory-limit SIZE`` overrides the memory).
3. ``_paths.check_output_file`` and ``_io.OutputLock``: a file name in a
   writable folder, and one writer per run file (a second one: exit 2 naming
   the holder's pid).
4. ``_build.check_start``: data and initial particles representable, the loss
   finite at s = 0 -- before the file exists.
5. ``_io.RunWriter``: crash-consistent checkpoints (``_io`` module docstring);
   ``--resume`` and ``plot`` verify checksums and shapes (``_io.verify_run``).
6. A failure at run time (out of memory, a write error) is committed as
   status "failed" with the reason in the attribute ``failure``; anything
   unforeseen prints one line ("internal error"; ``WFLOW_TRACEBACK=1`` shows the
   traceback) instead of a traceback.

Exit codes: 0 complete; 1 internal error; 2 bad config, usage, input file or
output path (one line on stderr, nothing written); 3 diverged or unstable (file
kept with that status); 4 failed at run time, or another process of a
multi-process run was lost (file kept with status "failed", resumable); 130
interrupted by SIGINT / SIGTERM, however many (file kept with status
"interrupted", resumable with ``--resume``, or no file if none was begun).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tomllib
import warnings

import numpy as np

from ._build import build_run, check_start
from ._cli_args import add_config_arguments
from ._config import ConfigError, config_warnings, load_config, to_toml
from ._io import (
    RESUMABLE,
    OutputLock,
    RunFileError,
    RunWriter,
    check_run_file,
    read_run,
    remove_stale_temporaries,
)
from ._model import block_attrs, check_block_unchanged
from ._paths import check_output_dir, check_output_file
from ._preflight import check_resources, parse_size
from ._sharding import (
    ProcessLost,
    ShardingError,
    any_process,
    describe,
    initialize_distributed,
    is_main_process,
    lost_message,
    multi_process,
    sync_processes,
    to_host,
)
from ._signals import Interrupted, Interrupts, current, is_cli_process

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
_EXIT = {"complete": EXIT_OK, "diverged": EXIT_DIVERGED, "unstable": EXIT_DIVERGED,
         "interrupted": EXIT_INTERRUPTED, "failed": EXIT_FAILED}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (the caller prints it, exit 2)."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _line(message) -> str:
    text = str(message).strip().splitlines()
    return " ".join(text[0].split()) if text else repr(message)


def _fail(message) -> int:
    print(f"wflow: error: {_line(message)}", file=sys.stderr)
    return EXIT_USAGE


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


def lock_output(path: str) -> OutputLock | None:
    """The run file's lock (creating its folder); ConfigError naming the holder if held.

    Only process 0 of a multi-process run writes the file, so only it locks (None elsewhere).
    """
    if not is_main_process():
        return None
    try:  # the folders it creates are removed again if the run writes nothing
        return OutputLock(path).acquire()
    except RunFileError as e:
        raise ConfigError(str(e)) from None


class _NullWriter:
    """The run file of processes other than 0 in a multi-process run: nothing is written."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _cmd_run(args) -> int:
    overrides = list(args.set or [])
    if args.output is not None:
        overrides.append(("output.path", args.output))
    try:
        limit = None if args.memory_limit is None else parse_size(args.memory_limit)
    except ValueError as e:
        return _fail(f"--memory-limit {e}")
    try:
        if initialize_distributed():  # multi-process environments (SLURM, Open MPI, coordinator)
            if current() is not None:  # JAX installed a SIGTERM handler of its own
                current().reinstall()
    except ShardingError as e:  # WFLOW_HEARTBEAT_TIMEOUT
        return _fail(e)
    except (RuntimeError, ValueError, KeyError) as e:
        return _fail(f"jax.distributed.initialize failed: {e}")
    try:
        config = load_config(args.config, overrides)
        for warning in config_warnings(config):
            print(f"wflow: warning: {warning}", file=sys.stderr)
        out = config["output"]["path"]
        if is_main_process():  # only process 0 writes
            check_output_file(out, f"output.path = {out!r}")
        if args.resume and not os.path.exists(out):
            raise ConfigError(f"output.path = {out!r}: no run file to resume (run without --resume "
                              "to start one)")
        check_resources(config, limit)
        lock = lock_output(out)
    except ConfigError as e:
        return _fail(e)
    try:
        remove_stale_temporaries(out)
        if args.resume:
            return _resume(args, config)
        if os.path.exists(out) and not config["output"]["overwrite"]:
            raise ConfigError(f"output.path = {out!r}: the file exists; set output.overwrite = true "
                              "(e.g. --set output.overwrite=true) or use --resume to continue it")
        setup = build_run(config)
        check_start(setup)
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
                    attrs={**describe(setup.depth), **block_attrs(config["model"])},
                    checkpoint_every=config["output"]["checkpoint_every"])
            except OSError as e:
                raise ConfigError(f"output.path = {out!r}: cannot be created "
                                  f"({e.strerror or e})") from None
        return _execute(args, config, setup, writer, out, state=None, initial_loss=None,
                        wall_offset=0.0, last={})
    except (ConfigError, RunFileError) as e:
        return _fail(e)
    finally:
        if lock is not None:
            lock.release()


def _resume(args, config) -> int:
    import jax.numpy as jnp

    from ._integrate import FlowState

    out = config["output"]["path"]
    try:
        stored_file = read_run(out)  # checksums, shapes, dtypes, consistency with its config
    except RunFileError as e:
        raise ConfigError(f"output.path: {e}") from None
    attrs = stored_file["attrs"]
    _check_resumable(config, attrs, out)
    setup = build_run(config)
    flow = setup.flow
    name = flow.snapshot_name
    x, y = stored_file["data/x"], stored_file["data/y"]
    if not (np.array_equal(x, np.asarray(setup.problem.x))
            and np.array_equal(y, np.asarray(setup.problem.y))):
        raise ConfigError(f"data: the data built from the config differ from those stored in {out} "
                          "(was the data file changed?); --resume needs the same data")
    if f"state/{name}" not in stored_file:
        raise ConfigError(f"output.path = {out!r}: no resumable state /state/{name}")
    state_array = stored_file[f"state/{name}"]
    step, key = int(stored_file["state/step"]), stored_file["state/key"]
    expected = flow.snapshot(setup.measure0)
    if state_array.shape != expected.shape or state_array.dtype != expected.dtype:
        raise ConfigError(f"output.path = {out!r}: /state/{name} has shape {state_array.shape} "
                          f"({state_array.dtype}), the config needs {expected.shape} "
                          f"({expected.dtype})")
    if not np.all(np.isfinite(state_array)):
        raise ConfigError(f"output.path = {out!r}: /state/{name} holds non-finite values; it "
                          "cannot be resumed")
    history = ("s",) + tuple(flow.history_names) + ("wall_time",)
    missing = [c for c in history if f"history/{c}" not in stored_file]
    if missing:
        raise ConfigError(f"output.path = {out!r}: /history/{missing[0]} is missing; this "
                          "configuration records it")
    n_hist, n_snap = _records_kept(stored_file, setup.schedule, step, out)
    initial_loss = attrs.get("initial_loss")
    if step > 0 and initial_loss is None:
        raise ConfigError(f"output.path = {out!r}: no initial_loss attribute; it cannot be resumed")
    sync_processes("wflow-resume-read")  # every process read the file before process 0 writes
    if not is_main_process():
        writer = _NullWriter()
    else:
        writer = RunWriter.resume(out, name=name, history=flow.history_names, n_history=n_hist,
                                  n_snapshots=n_snap,
                                  checkpoint_every=config["output"]["checkpoint_every"])
        writer.commit("running")  # drops records past the state; the file is ours again
    state = FlowState(flow.restore(setup.measure0, state_array), step, jnp.asarray(key))
    last = {c: float(stored_file[f"history/{c}"][n_hist - 1]) for c in history} if n_hist else {}
    return _execute(args, config, setup, writer, out, state=state,
                    initial_loss=float(initial_loss) if step > 0 else None,
                    wall_offset=last.get("wall_time", 0.0), last=last,
                    warned_wall="wall_mass_warning" in attrs)


def _check_resumable(config: dict, attrs: dict, out: str) -> None:
    """The stored run can be resumed with ``config``: its status, its config (only [output]
    may differ) and its block's source."""
    if "attrs_sha256" not in attrs:
        print(f"wflow: warning: {out} has no checksums (written by an older wflow or by hand); "
              "resuming without verifying its contents", file=sys.stderr)
    status = attrs.get("status")
    if status == "complete":
        raise ConfigError(f"output.path = {out!r}: the run is already complete; nothing to resume")
    if status in ("diverged", "unstable"):
        raise ConfigError(f"output.path = {out!r}: the run {status} and cannot be resumed; start a "
                          "new run with a smaller train.dt")
    if status not in RESUMABLE:
        raise ConfigError(f"output.path = {out!r}: unknown status {status!r}")
    stored = tomllib.loads(attrs.get("config", ""))
    stored.pop("output", None)
    diff = _first_difference(_normalized(config), stored)
    if diff:
        key, now, then = diff
        raise ConfigError(f"{key} = {_fmt_value(now)}: differs from {_fmt_value(then)} stored in "
                          f"{out}; --resume needs the same config (only [output] may differ)")
    check_block_unchanged(config["model"], attrs, out)


def _records_kept(stored_file: dict, schedule, step: int, out: str) -> tuple[int, int]:
    """(history rows, snapshots) of the stored file up to its state at ``step``, checked
    against the config's schedule. integrate re-emits the s = 0 record itself."""
    if not 0 <= step <= schedule.n_steps:
        raise ConfigError(f"output.path = {out!r}: /state/step = {step} is outside "
                          f"0..{schedule.n_steps}")
    rec_steps = schedule.record_steps()
    snap_steps = schedule.snapshot_steps()
    n_hist = int(np.sum(rec_steps <= step)) if step > 0 else 0
    n_snap = int(np.sum(snap_steps <= step)) if step > 0 else 0
    s_file, snap_s_file = stored_file["history/s"], stored_file["snapshots/s"]
    if n_hist > s_file.shape[0] or n_snap > snap_s_file.shape[0]:
        raise ConfigError(f"output.path = {out!r}: the file holds fewer records than its state "
                          f"(step {step}); it cannot be resumed")
    h = schedule.step
    if not (np.array_equal(s_file[:n_hist], rec_steps[:n_hist] * h)
            and np.array_equal(snap_s_file[:n_snap], snap_steps[:n_snap] * h)):
        raise ConfigError(f"output.path = {out!r}: /history/s or /snapshots/s does not match the "
                          "config's schedule; the file cannot be resumed")
    return n_hist, n_snap


def _failure_text(e: BaseException) -> str:
    text = _line(e) if str(e).strip() else type(e).__name__
    if "RESOURCE_EXHAUSTED" in text or isinstance(e, MemoryError):
        return f"out of memory ({type(e).__name__}: {text[:300]})"
    return f"{type(e).__name__}: {text[:300]}"


class _Recorder:
    """The time loop's callback: each record goes to the run file and the progress bar.

    Holds the last stored history row (for the closing summary), the step reached (for
    the interruption message) and whether the once-per-run wall-mass warning was given.
    Returns True to stop the loop (a first Ctrl-C / SIGTERM, or ``--stop-after-records``).
    """

    def __init__(self, args, setup, writer, out: str, step: int, last: dict, warned_wall: bool):
        from tqdm import tqdm

        self.flow, self.writer, self.out = setup.flow, writer, out
        self.step, self.last, self.warned_wall = step, dict(last), warned_wall
        self.main = is_main_process()  # only process 0 writes and shows progress
        self.stop_after, self.n_records = args.stop_after_records, 0
        self.interrupts = current()
        self.multi = multi_process()
        self.bar = tqdm(total=setup.schedule.n_steps, initial=step, unit="step",
                        disable=args.quiet or not self.main, file=sys.stderr,
                        dynamic_ncols=True, leave=True, desc=os.path.basename(out))

    def state_of(self, measure, step, key, snapshot=None):
        if self.multi:  # gathered now, by every process (a collective), whether or not they write
            array = self.flow.snapshot(measure) if snapshot is None else snapshot
            return lambda: (array, step, np.asarray(key))
        return lambda: (self.flow.snapshot(measure), step, np.asarray(key))

    def poll(self, step: int) -> bool:
        """Between records (``integrate``'s poll, one process only): move the bar; True to stop
        at a first Ctrl-C / SIGTERM (the state at ``step`` is then committed, resumable)."""
        self.step = step
        self.bar.update(step - self.bar.n)
        return self.interrupts is not None and self.interrupts.requested

    def __call__(self, rec) -> bool:
        from ._grid import wall_mass_warning

        writer = self.writer
        if rec.step == 0 and rec.history:
            writer.set_attr("initial_loss", float(rec.loss))
        row = {"s": rec.s, **rec.values, "wall_time": rec.wall_time} if rec.history else None
        writer.add(history=row,
                   snapshot=(rec.s, rec.snapshot) if rec.snapshot is not None else None,
                   state=None if self.multi else self.state_of(rec.measure, rec.step, rec.key))
        self.step = rec.step
        if row is not None:
            self.last.update(row)
        if rec.warning is not None:
            self.bar.clear()
            if self.main:
                print(f"wflow: warning: {rec.warning}", file=sys.stderr)
            writer.set_attr("stability_warning", rec.warning)
        if not self.warned_wall and (text := wall_mass_warning(rec.values, rec.s)) is not None:
            self.warned_wall = True
            writer.set_attr("wall_mass_warning", text)
            if self.main:
                self.bar.write(f"wflow: warning: {text}", file=sys.stderr)
        self.n_records += 1
        stop = self.interrupts is not None and self.interrupts.requested
        stop = stop or (self.stop_after is not None and self.n_records >= self.stop_after)
        due = bool(writer.due())
        if self.multi:
            # Every process takes the same path: all stop together (a signal may reach one
            # of them), and all gather the state process 0 commits.
            stop, due = any_process("record", (stop, due))
            if due or stop or rec.snapshot is not None:
                writer.add(state=self.state_of(rec.measure, rec.step, rec.key, rec.snapshot))
        if due:
            writer.commit()
        self.bar.update(rec.step - self.bar.n)
        self.bar.set_postfix_str(f"s={rec.s:.4g} loss={rec.loss:.3e} "
                                 f"stationarity={rec.stationarity:.3e}")
        return stop


def _execute(args, config, setup, writer: RunWriter, out: str, *, state, initial_loss,
             wall_offset, last: dict, warned_wall: bool = False) -> int:
    """Integrate from ``state`` (None: the start), recording into ``writer``; ``last`` holds
    the last stored history row, ``warned_wall`` whether the wall-mass warning was given
    (once per run, resumed or not)."""
    import equinox as eqx

    from ._integrate import StabilityWarning, integrate

    h = setup.schedule.step
    resume_hint = f"wflow run {args.config} --resume -o {out}"
    recorder = _Recorder(args, setup, writer, out, 0 if state is None else state.step, last,
                         warned_wall)
    layout = describe(setup.depth)
    if layout["devices"] > 1 and recorder.main and not args.quiet:
        print(f"wflow: {layout['devices']} devices, solver.shard = \"{layout['shard']}\"",
              file=sys.stderr)

    def finish_interrupted() -> str:
        """Commit what is queued as "interrupted" (the main thread or the signal watcher)."""
        ended = writer.status if isinstance(writer, RunWriter) else None
        if ended in ("complete", "diverged", "unstable"):  # the last commit was done
            return f"wflow: interrupted after the run ended; {out} keeps status \"{ended}\""
        writer.commit("interrupted")
        return (f"wflow: interrupted at s = {recorder.step * h:.6g}; {out} keeps status "
                f"\"interrupted\"; continue with: {resume_hint}")

    if recorder.interrupts is not None:
        recorder.interrupts.running(finish_interrupted)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)
            result = integrate(setup.problem, setup.depth, setup.schedule, theta0=setup.measure0,
                               regularization=setup.regularization, reordering=setup.reordering,
                               key=setup.key, state=state,
                               initial_loss=initial_loss, wall_offset=wall_offset,
                               callback=recorder, poll=None if recorder.multi else recorder.poll)
        final = result.state
        writer.add(state=recorder.state_of(final.measure, final.step, final.key))
        if result.status == "complete":
            predict = eqx.filter_jit(lambda flow, measure: flow.predict(measure))
            writer.set_final(to_host(predict(setup.flow, final.measure)))
        writer.commit(result.status)
        if not recorder.main:
            return _EXIT[result.status]
    except Interrupted:
        raise
    except ProcessLost as e:  # another process of a multi-process run is gone
        recorder.bar.close()
        return _lost_partner(_line(e), writer, out, recorder.main)
    except RunFileError as e:  # a checkpoint could not be written (disk full, ...)
        recorder.bar.close()
        print(f"wflow: error: {_line(e)}; continue later with: {resume_hint}", file=sys.stderr)
        return _leave(EXIT_FAILED) if recorder.multi else EXIT_FAILED
    except Exception as e:
        recorder.bar.close()
        if recorder.multi and _collective_failed(e):  # a collective found its partner gone
            return _lost_partner(lost_message("its connection closed during a collective"),
                                 writer, out, recorder.main)
        code = _run_failed(e, writer, out, recorder.step * h)
        return _leave(code) if recorder.multi else code
    finally:
        recorder.bar.close()
    _print_summary(result.status, final.step * h, recorder.last, wall_offset, out, resume_hint)
    return _EXIT[result.status]


def _run_failed(e: Exception, writer, out: str, s: float) -> int:
    """An exception inside the run: the file keeps status "failed" (resumable), one line."""
    failure = _failure_text(e)
    expected = isinstance(e, (MemoryError, OSError)) or type(e).__name__ == "JaxRuntimeError"
    if not expected:
        failure = f"internal error: {failure}"
    kept = _commit_failed(writer, failure, f"{out} keeps status \"failed\" at s = {s:.6g} "
                          "(resumable)", "and the run file")
    if not expected and os.environ.get("WFLOW_TRACEBACK"):
        raise e
    print(f"wflow: error: the run failed: {failure}; {kept}", file=sys.stderr)
    return EXIT_FAILED if expected else EXIT_INTERNAL


def _print_summary(status: str, s: float, last: dict, wall_offset: float, out: str,
                   resume_hint: str) -> None:
    """The one-line summary on stdout, and what to do next on stderr."""
    loss, stationarity = last.get("loss", math.nan), last.get("stationarity", math.nan)
    wall = last.get("wall_time", wall_offset)
    print(f"status={status}  s={s:.6g}  loss={_num(loss)}  "
          f"stationarity={_num(stationarity)}  wall={wall:.1f}s  -> {out}")
    if status == "interrupted":
        print(f"wflow: interrupted at s = {s:.6g}; continue with: {resume_hint}", file=sys.stderr)
    elif status == "diverged":
        print(f"wflow: the run diverged at s = {s:.6g} (non-finite or exploding loss); "
              "try a smaller train.dt or train.method = \"adaptive\"", file=sys.stderr)
    elif status == "unstable":
        print(f"wflow: stopped at s = {s:.6g} (train.on_increase = \"stop\"): the loss rose; see "
              "the warning above", file=sys.stderr)


def _leave(code: int) -> int:
    """End this process of a multi-process run that cannot finish with the others: no wait at
    JAX's shutdown barrier, which they will never reach (the others see it gone and stop)."""
    if is_cli_process():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _lost(line: str) -> int:
    """Another process of a multi-process run is gone: one line, exit 4."""
    print(f"wflow: error: {line}", file=sys.stderr)
    return _leave(EXIT_FAILED)


def _lost_partner(line: str, writer, out: str, main: bool) -> int:
    """``_lost`` after process 0 committed its file as "failed" (resumable)."""
    if not main:
        return _lost(line)
    kept = _commit_failed(writer, line, f"{out} keeps status \"failed\" at its last "
                          "checkpoint (resumable)", "the run file")
    return _lost(f"{line}; {kept}")


def _commit_failed(writer, failure: str, kept: str, subject: str) -> str:
    """Commit the run file as "failed" with the attribute ``failure``; ``kept`` says so, or
    the reason the file could not be updated."""
    try:
        writer.set_attr("failure", failure)
        writer.commit("failed")
        return kept
    except RunFileError as e:
        return f"{subject} could not be updated ({_line(e)})"


def _collective_failed(e: BaseException) -> bool:
    """A device collective's error that says its partner process is gone (gloo, NCCL, ...)."""
    text = str(e)
    return type(e).__name__ == "JaxRuntimeError" and any(
        needle in text for needle in ("Gloo", "gloo", "Connection reset", "Connection closed",
                                      "connection closed", "Socket closed", "NCCL", "peer"))


def _num(v: float) -> str:
    return f"{v:.4e}" if math.isfinite(v) else str(v)


# ----------------------------------------------------------------------------- plot, info


def _cmd_plot(args) -> int:
    path = args.run
    try:
        check_run_file(path)  # fast: a foreign file fails before matplotlib is imported
    except RunFileError as e:
        return _fail(e)
    out_dir = args.output
    if out_dir is None:
        stem = os.path.splitext(os.path.basename(path))[0]
        out_dir = os.path.join(os.path.dirname(path), f"{stem}_plots")
    try:
        check_output_dir(out_dir, f"-o {out_dir!r}")
    except ConfigError as e:
        return _fail(e)
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

    interrupts = current()
    if interrupts is not None:
        # The first SIGINT / SIGTERM stops the sweep after its current block, which is saved
        # (every study file write is atomic); a second one ends the command at once, and the
        # study file keeps its last saved block.
        interrupts.running(lambda: "wflow: interrupted; the study file keeps its last saved "
                                   "block; continue with --resume")
    try:
        return study_main(args, lambda: interrupts is not None and interrupts.requested)
    except ConfigError as e:
        return _fail(e)


def _cmd_config(args) -> int:
    from ._config import config_json_schema, config_reference

    if args.action == "schema":
        import json

        print(json.dumps(config_json_schema(), indent=2))
    elif args.action == "reference":
        sys.stdout.write(config_reference())
    else:
        try:
            config = load_config(args.config, args.set, rerun=False)
        except ConfigError as e:
            return _fail(e)
        for warning in config_warnings(config):
            print(f"wflow: warning: {warning}", file=sys.stderr)
        sys.stdout.write(to_toml(config))
    return EXIT_OK


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
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        least = jax.config.jax_persistent_cache_min_compile_time_secs
        print(f"{'xla cache':<12} {cache} (programs that compile in {least:g} s or more; "
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS)")
    else:
        print(f"{'xla cache':<12} off (JAX_COMPILATION_CACHE_DIR keeps compiled programs "
              "between commands)")
    from _wflow_entry import MALLOC_MODES, allocator_in_force

    print(f"{'allocator':<12} {allocator_in_force()} (WFLOW_MALLOC = {' | '.join(MALLOC_MODES)})")
    return EXIT_OK


# ----------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="wflow", description="Mean-field ResNets: Wasserstein gradient flows of the "
                "parameter density, simulated with JAX.")
    p.add_argument("--version", action="version", version=f"wflow {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{run,plot,study,compare,config,info}")

    r = sub.add_parser("run", help="run a config, write an HDF5 run file",
                       description="Validate CONFIG, run the gradient flow, write OUT.h5. "
                       "Exit 0 complete, 2 bad config, 3 diverged, 130 interrupted.")
    add_config_arguments(r, config_help="TOML config file", output="OUT.h5",
                         output_help="run file (default: output.path, else runs/<CONFIG stem>.h5)",
                         quiet_help="no progress bar")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run file OUT (the config stored in it must equal "
                   "CONFIG with --set applied; only [output] may differ)")
    r.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help="memory the run may use, e.g. 64GiB, instead of what the machine has "
                   "available; 'none' skips the memory check")
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

    c = sub.add_parser("config", help="the resolved config, the JSON Schema, the key reference",
                       description="show: the resolved config of CONFIG (a TOML file, or the "
                       "config stored in a run, study or compare file) as the run file stores "
                       "it. schema: the JSON Schema of config files, for TOML editors. "
                       "reference: the configuration reference (Markdown).")
    actions = c.add_subparsers(dest="action", metavar="{show,schema,reference}", required=True)
    show = actions.add_parser("show", help="the resolved config of CONFIG, as TOML")
    show.add_argument("config", metavar="CONFIG")
    show.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                      help="override a config key (VALUE is a TOML value, else a string)")
    actions.add_parser("schema", help="the JSON Schema of config files (JSON)")
    actions.add_parser("reference", help="the configuration reference (Markdown)")
    c.set_defaults(func=_cmd_config)

    i = sub.add_parser("info", help="versions, backend, devices, precision")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wflow`` console script; returns the exit code (``_main``).

    As the ``wflow`` command, the process then ends at once (``os._exit``, after the
    multi-process shutdown when there is one) instead of going through Python's own
    shutdown, where a late SIGINT / SIGTERM would find the default handlers again (exit
    143, a KeyboardInterrupt traceback) instead of ending with 130.
    """
    code = _main(argv)
    if argv is None and is_cli_process():
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if "jax" in sys.modules:
            import jax

            from jax._src import distributed

            if distributed.global_state.client is not None:  # the others wait for us here
                with contextlib.suppress(Exception):
                    jax.distributed.shutdown()
        os._exit(code)
    return code


def _main(argv: list[str] | None = None) -> int:
    """The command: its exit code.

    Signal handling comes first (``_signals.Interrupts``), so SIGINT / SIGTERM at
    any moment give exit 130 and one line; nothing ends in a traceback (an
    unforeseen exception prints one line, exit 1; ``WFLOW_TRACEBACK=1`` re-raises).
    """
    if argv is None and is_cli_process():
        from ._supervise import distributed_environment

        verb = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        if verb in ("study", "compare") and distributed_environment() is not None:
            return _fail(f"wflow {verb} runs as one process; this is one of a multi-process "
                         f"run ({distributed_environment()} is set): run it without srun / "
                         "mpirun / JAX_COORDINATOR_ADDRESS (WFLOW_NO_DISTRIBUTED=1 ignores them)")
    with Interrupts() as interrupts:
        try:
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
            code = args.func(args)
            if code == EXIT_OK and interrupts.signum is not None:
                # A signal came as the command finished (e.g. during its last commit): too late
                # to stop anything, but an interruption is exit 130.
                print(f"wflow: interrupted by {Interrupted(interrupts.signum).name} as the "
                      "command finished; its output is complete", file=sys.stderr)
                return EXIT_INTERRUPTED
            return code
        except (Interrupted, KeyboardInterrupt) as e:
            interrupts.claim_finish()
            name = e.name if isinstance(e, Interrupted) else "SIGINT"
            line = interrupts.finish_line(name)
            print(line, file=sys.stderr)
            if is_cli_process():
                # The interrupted work may have left native threads running (an XLA
                # compilation): a normal interpreter shutdown could crash in them.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            return EXIT_INTERRUPTED
        except ProcessLost as e:
            return _lost(_line(e))
        except BrokenPipeError:
            # the reader went away (`wflow config schema | head`): what it read is all it wanted
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except Exception as e:
            if os.environ.get("WFLOW_TRACEBACK"):
                raise
            print(f"wflow: internal error: {type(e).__name__}: {_line(e)} (please report it; "
                  "WFLOW_TRACEBACK=1 shows the traceback)", file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
