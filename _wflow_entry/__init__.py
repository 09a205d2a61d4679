"""The ``wflow`` command's entry point: start-up guard first, then ``wflow.cli``.

Importing the ``wflow`` package has no side effects. The command's guard
against signals during start-up lives here, installed before the first
import of wflow (and so of JAX, equinox, diffrax ...): a SIGINT or SIGTERM
while Python imports them prints one line and exits 130; nothing can have
been written yet. In a multi-process environment ``wflow run`` then continues in a
watched child process (``wflow._supervise``). ``wflow.cli.main`` installs the
command's own handlers (``wflow._signals.Interrupts``). The console script ``wflow`` and
``python -m _wflow_entry`` come here; ``python -m wflow.cli`` works too, without
this guard during its imports.
"""

import os
import signal

EXIT_INTERRUPTED = 130


def _startup_handler(signum, frame):
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    try:
        os.write(2, f"\nwflow: interrupted by {name} during start-up; nothing was written\n"
                 .encode())
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)


def guard() -> None:
    """Exit 130 with one line on SIGINT / SIGTERM until ``wflow.cli`` takes over."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, _startup_handler)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            pass


def main() -> int:
    guard()
    from wflow._supervise import supervise_if_needed

    supervise_if_needed()  # one process of a multi-process ``wflow run``: a watched child
    from wflow.cli import main as run

    return run()
