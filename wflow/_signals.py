"""SIGINT / SIGTERM for the ``wflow`` command: exit 130 with one line, at any moment.

Only the standard library is used here, so the handlers can be installed
before anything heavy is imported. Three layers:

1. The command's entry point (``_wflow_entry``, the console script ``wflow``)
   installs a start-up guard before it imports wflow: a signal while Python
   imports jax, equinox, diffrax, ... prints one line and exits 130 (nothing
   can have been written yet). Importing ``wflow`` as a library installs nothing.
2. ``Interrupts`` (a context manager ``cli.main`` enters before it does
   anything else) replaces them:

   * **start-up phase** (reading the config, building the data, compiling,
     creating the run file): a signal raises ``Interrupted`` in the main thread
     at its next Python instruction; the command unwinds (temporary files are
     removed, the lock released) and exits 130.
   * **running phase** (``running(finish)``, once a run file exists): the first
     signal only sets ``requested``; the time loop stops at its next record and
     the file is committed with status "interrupted". A second signal raises
     ``Interrupted`` (abort at once); the command commits what it has and exits
     130.

   Python runs signal handlers only between bytecodes of the main thread, so a
   main thread inside a long native call (an XLA compilation, a long compiled
   chunk of steps) would delay them. A watcher thread therefore reads the
   signal numbers from ``signal.set_wakeup_fd`` (written by the C-level
   handler the instant a signal arrives) and, when a signal that should end
   the process has not done so within ``grace`` seconds, ends it itself:
   it calls the ``finish`` callback (which commits the records so far with
   status "interrupted"), prints that one line and ``os._exit(130)``. The
   first signal of the running phase starts the same deadline with
   ``stop_within`` seconds (8): the main thread normally stops well before (the
   time loop and a study poll between steps), but a single native call can
   last minutes (a study reference's ODE solve, an optimal-transport metric),
   and then the command still ends within seconds of the first signal, from
   its last checkpoint (a study keeps its last saved block; ``--resume``).
3. ``critical()`` marks code that must not be cut half-way (a file commit): an
   abort arriving inside waits for its end, in the main thread (the raise is
   deferred to the end of the block) and in the watcher (which takes the same
   lock before finishing).

What cannot be covered: a signal in the first tens of milliseconds of the
interpreter's own start-up, before ``wflow`` is imported, gets Python's default
behaviour (a KeyboardInterrupt traceback for SIGINT, exit 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Self

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

__all__ = ["EXIT_INTERRUPTED", "Interrupted", "Interrupts", "critical", "current",
           "is_cli_process", "on_hard_exit"]


class Interrupted(BaseException):
    """Raised in the main thread by a signal that ends the command (not an ``Exception``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return _name(self.signum)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _write_line(text: str) -> None:
    """One line on stderr, unbuffered (safe right before ``os._exit``)."""
    try:
        os.write(2, ("\n" + text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


# ----------------------------------------------------------------------------- hard exits


_hard_exit: dict[int, Callable[[], None]] = {}


def on_hard_exit(key: int, cleanup: Callable[[], None] | None) -> None:
    """Register (or, with ``None``, drop) a cleanup that must run even when the command ends
    with ``os._exit`` from the signal watcher, where no ``finally`` block runs: an output
    lock removes its lock file this way. Cleanups must be quick and must not raise."""
    if cleanup is None:
        _hard_exit.pop(key, None)
    else:
        _hard_exit[key] = cleanup


def _exit_now(code: int) -> None:
    for cleanup in list(_hard_exit.values()):
        with contextlib.suppress(BaseException):
            cleanup()
    os._exit(code)


# ----------------------------------------------------------------------------- start-up


def is_cli_process() -> bool:
    """True when this interpreter was started as the ``wflow`` command."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    if len(argv) >= 2 and os.path.basename(argv[1]) in ("wflow", "wflow-script.py"):
        return True
    return any(argv[i] == "-m" and argv[i + 1] in ("wflow", "wflow.cli", "_wflow_entry")
               for i in range(len(argv) - 1))


# ----------------------------------------------------------------------------- the command


_active: Interrupts | None = None
_lock = threading.RLock()  # held by critical sections and by the watcher while it finishes


class _Depth(threading.local):
    value = 0


_depth = _Depth()


@contextlib.contextmanager
def critical():
    """A block that an abort must not cut half-way (e.g. writing and renaming a file).

    Inside it a second signal only marks the abort; it is raised when the
    block ends. Usable with or without an active ``Interrupts``.
    """
    _depth.value += 1
    try:
        with _lock:
            yield
    finally:
        _depth.value -= 1
        active = _active
        if active is not None and _depth.value == 0 and active._pending is not None \
                and threading.current_thread() is threading.main_thread():
            signum, active._pending = active._pending, None
            if not (active._aborting or active._finishing):
                active._aborting = True
                raise Interrupted(signum)


def current() -> Interrupts | None:
    """The active ``Interrupts`` of this process (None outside a ``wflow`` command)."""
    return _active


class Interrupts:
    """Signal handling of one ``wflow`` command (module docstring).

    Attributes:
        requested: a stop was asked for (first signal while running).
        signum: the last signal received (None if none).
    """

    def __init__(self, grace: float = 1.0, stop_within: float = 8.0):
        self.grace = grace
        self.stop_within = stop_within
        self.requested = False
        self.signum: int | None = None
        self._count = 0
        self._running = False
        self._finish: Callable[[], str] | None = None
        self._pending: int | None = None  # abort deferred by a critical section
        self._finishing = False  # someone (main thread or watcher) is ending the command
        self._aborting = False  # Interrupted was raised: later signals add nothing
        self._old: dict = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._installed = False
        self._old_hook = None

    # --- phases

    def running(self, finish: Callable[[], str]) -> None:
        """Enter the running phase: ``finish()`` commits the file as interrupted and returns
        the line to print; the watcher calls it if the main thread cannot."""
        self._finish = finish
        self._running = True

    def finish_line(self, name: str) -> str:
        """End the command in the main thread after ``Interrupted``: the running phase's
        ``finish()`` (commit as interrupted) or nothing; returns the line to print."""
        if self._finish is None:
            return f"wflow: interrupted by {name}; nothing was written"
        try:
            return self._finish()
        except Exception as e:  # noqa: BLE001 - say what happened in one line
            return (f"wflow: interrupted by {name}; the run file keeps its last checkpoint "
                    f"(could not record the interruption: {' '.join(str(e).split())})")

    def claim_finish(self) -> bool:
        """The main thread is about to end the command after ``Interrupted``: True if it
        should do so, False if the watcher already does (then it never returns)."""
        with _lock:
            if self._finishing:
                own = False
            else:
                self._finishing = True
                own = True
        if not own:  # the watcher is exiting the process; wait for it
            while True:
                time.sleep(1.0)
        return True

    # --- handlers

    def _handle(self, signum, frame):
        self.signum = signum
        self._count += 1
        if self._aborting or self._finishing:
            return  # the command is already ending (exit 130, one line): nothing to add
        if self._running and self._count == 1:
            self.requested = True
            _write_line(f"wflow: {_name(signum)} received: stopping at the next record "
                        "(send it again to stop at once)")
            return
        if _depth.value > 0:
            self._pending = signum
            return
        self._aborting = True
        raise Interrupted(signum)

    def _watch(self, fd: int) -> None:
        count = 0
        timer_started = stop_started = False
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data or self._closed.is_set():
                return
            count += len(data)
            fatal = count >= 2 or not self._running
            if fatal and not timer_started:
                timer_started = True
                threading.Thread(target=self._deadline, args=(data[-1], self.grace),
                                 daemon=True).start()
            elif not fatal and not stop_started:
                # the first signal while running: the main thread stops at its next record or
                # poll; where it cannot within stop_within seconds (a long compiled chunk, an
                # ODE solve of a reference, a metric's optimal-transport solve) the watcher
                # ends the command as a second signal would, from the last checkpoint
                stop_started = True
                threading.Thread(target=self._deadline, args=(data[-1], self.stop_within),
                                 daemon=True).start()

    def _deadline(self, signum: int, grace: float) -> None:
        """The main thread had ``grace`` seconds to end the command; end it from here."""
        if self._closed.wait(grace):
            return
        with _lock:
            if self._finishing or self._closed.is_set():
                return
            self._finishing = True
            line = f"wflow: interrupted by {_name(signum)}; nothing was written"
            if self._finish is not None:
                try:
                    line = self._finish()
                except BaseException as e:  # noqa: BLE001 - last resort: say it, then exit
                    line = (f"wflow: interrupted by {_name(signum)}; the run file keeps its last "
                            f"checkpoint (could not record the interruption: {e})")
            _write_line(line)
            _exit_now(EXIT_INTERRUPTED)

    def reinstall(self) -> None:
        """Take SIGINT / SIGTERM back after a library replaced their handlers (JAX's
        multi-process start-up installs a SIGTERM handler of its own)."""
        if self._installed:
            for sig in SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, self._handle)

    # --- context manager

    def __enter__(self) -> Self:
        global _active
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only: nothing to do
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        try:
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            self._old_fd = None
        self._watcher = threading.Thread(target=self._watch, args=(r,), daemon=True,
                                         name="wflow-signals")
        self._watcher.start()
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._installed = True
        _active = self
        return self

    def _unraisable(self, unraisable) -> None:
        """``Interrupted`` raised where Python can only print it (a ``__del__``, a garbage
        collector callback) is lost: print nothing; the watcher ends the command (a fatal
        signal started its deadline), and a later signal may raise again."""
        if isinstance(unraisable.exc_value, (Interrupted, KeyboardInterrupt)):
            self._aborting = False
            return
        (self._old_hook or sys.__unraisablehook__)(unraisable)

    def _late(self, signum, frame):
        """A signal after the command ended (interpreter shutdown): exit 130 at once; one line
        unless the command already said it was interrupted."""
        if self.signum is None and not self._aborting:
            _write_line(f"wflow: interrupted by {_name(signum)} while exiting (the command had "
                        "already finished)")
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        _exit_now(EXIT_INTERRUPTED)

    def __exit__(self, *exc) -> bool:
        global _active
        if not self._installed:
            return False
        late = is_cli_process()  # the process ends next: late signals end it with 130
        if late:
            for sig in SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, self._late)
        self._closed.set()
        _active = None
        if self._old_hook is not None:
            sys.unraisablehook = self._old_hook
        if self._old_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._old.items():
            if late:
                break
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        if self._pipe is not None:
            r, w = self._pipe
            os.close(w)  # the watcher reads EOF and ends
            if self._watcher is not None:
                self._watcher.join(1.0)
            os.close(r)
        self._installed = False
        return False
