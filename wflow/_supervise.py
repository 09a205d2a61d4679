"""One process of a multi-process run, watched by its own small parent: never a hang, one line.

When one process of a multi-process run dies (killed, out of memory, a node
lost), the others notice at once if they were in a collective with it (the
connection closes: ``ProcessLost``, exit 4, in the process itself); otherwise
JAX's coordination service notices when its heartbeats stop
(``_sharding.heartbeat_timeout``, 20 s) and ends every other process with
``abort()`` and a native stack trace (exit 134). If the lost process was alive
but stuck, they wait in a collective. Neither can be
caught inside the Python process. So in a multi-process environment
(``distributed_environment``) the ``wflow run`` command runs in
a child process (the same command line, ``WFLOW_SUPERVISED=1``) and stays as its
parent:

* stdout passes through; stderr is read line by line: ``wflow``'s own lines
  (and the progress bar) pass through, the native libraries' log lines (XLA's
  ``E1204 12:00:00.000000 123 file.cc:12] ...`` with their continuation lines,
  stack frames) are kept back (``WFLOW_TRACEBACK=1`` shows them);
* SIGINT / SIGTERM received by the parent are passed to the child, which runs in
  its own process group (a Ctrl-C in the terminal reaches it once, through the
  parent) and handles them as any ``wflow`` command does (exit 130, one line); a child
  still alive 20 s after a second signal (stuck in native code) is killed;
* the child's exit status is the command's; a child ended by a signal is reported
  in one line: exit 4 naming the lost process when JAX's service reported one
  (the run file keeps its last checkpoint and is resumable), exit 130 when the
  parent had passed on an interruption, else exit 4 naming the signal.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

EXIT_FAILED, EXIT_INTERRUPTED = 4, 130
CHILD_FLAG = "WFLOW_SUPERVISED"
STUCK_AFTER = 20.0  # seconds after a second signal before a child that did not end is killed

_NATIVE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ")
_FRAME = re.compile(r"^\s+@\s+0x[0-9a-f]+|^\*\*\* |^\[Gloo\]|^terminate called|^\s+what\(\):")
_OURS = ("wflow:", "status=", "Traceback")


def distributed_environment() -> str | None:
    """What makes this process one of a multi-process run (the variables that
    ``_sharding.initialize_distributed`` recognizes, e.g. ``"JAX_COORDINATOR_ADDRESS"``), or
    None for a single process. Reads the environment only."""
    env = os.environ
    if env.get("WFLOW_NO_DISTRIBUTED", "") not in ("", "0"):
        return None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if "SLURM_PROCID" in env and _int_env("SLURM_STEP_NUM_TASKS", 1) > 1:
        return "SLURM_STEP_NUM_TASKS"
    if _int_env("OMPI_COMM_WORLD_SIZE", 1) > 1:
        return "OMPI_COMM_WORLD_SIZE"
    return None


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def supervise_if_needed() -> None:
    """Called by the command's entry point (``_wflow_entry``) before ``wflow.cli``: in the
    ``wflow run`` command of a multi-process environment, run the command in a watched child
    and exit with its code. Does nothing otherwise (and importing wflow never calls it)."""
    from ._signals import is_cli_process

    if not is_cli_process() or os.environ.get(CHILD_FLAG, "") not in ("", "0"):
        return
    argv = sys.argv[1:]
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb != "run" or distributed_environment() is None:
        return
    code = run(argv)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _lost_ranks(native: str) -> list[int]:
    """The processes JAX's coordination service reported lost, from its log text."""
    ranks: set[int] = set()
    for block in re.findall(r"tasks are unhealthy[^:]*:\s*\n((?:\s*\S*\d+\S*\s*\n)+)", native):
        ranks.update(int(n) for n in re.findall(r"(?:task:)?(\d+)\s*$", block, re.M))
    if not ranks and re.search(r"PollForError|Socket closed|Connection reset by peer|"
                               r"failed to connect to all addresses", native):
        ranks.add(0)  # the coordination service (in process 0) went away
    return sorted(ranks)


def run(argv: list[str]) -> int:
    """Run ``wflow ARGV`` in a child process and return its exit code (module docstring)."""
    env = dict(os.environ, **{CHILD_FLAG: "1"})
    show_native = os.environ.get("WFLOW_TRACEBACK", "") not in ("", "0")
    rank = os.environ.get("JAX_PROCESS_ID") or os.environ.get("SLURM_PROCID") \
        or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"
    forwarded: list[int] = []
    children: list[subprocess.Popen] = []

    def forward(signum, frame):
        forwarded.append(signum)
        for c in children:
            with contextlib.suppress(OSError):
                c.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    child = subprocess.Popen([sys.executable, "-m", "_wflow_entry", *argv], env=env,
                             stderr=subprocess.PIPE, process_group=0)
    children.append(child)
    for signum in forwarded:  # arrived while the child was being started
        with contextlib.suppress(OSError):
            child.send_signal(signum)
    native: list[str] = []

    def pump():
        """Pass stderr through piece by piece (lines, and the progress bar's \\r updates),
        keeping back the native libraries' log blocks."""
        in_native = False
        fd, pending = child.stderr.fileno(), b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            pending += chunk
            pieces = re.split(rb"(?<=[\r\n])", pending) if chunk else [pending, b""]
            pending = pieces.pop()
            for raw in pieces:
                if not raw:
                    continue
                head = raw.decode("utf-8", "replace").lstrip("\r")
                if _NATIVE.match(head) or _FRAME.match(head):
                    in_native = True
                elif head.startswith(_OURS) or "%|" in head:
                    in_native = False
                if in_native and not show_native:
                    native.append(head)
                    del native[:-400]
                    continue
                with contextlib.suppress(OSError):
                    os.write(2, raw)
            if not chunk:
                return

    since = None
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while True:
        try:
            code = child.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            # Two signals end a wflow command within about a second; a child still alive
            # STUCK_AFTER seconds after the second is stuck in native code: end it.
            if len(forwarded) >= 2:
                since = since or time.monotonic()
                if time.monotonic() - since > STUCK_AFTER:
                    child.kill()
        except InterruptedError:
            continue
    reader.join(5.0)
    if code >= 0:
        return code
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    text = "".join(native)
    lost = _lost_ranks(text) if "Terminating process because the JAX distributed" in text \
        or "unhealthy" in text else []
    lost = [r for r in lost if str(r) != rank]
    if lost:
        who = ", ".join(map(str, lost))
        line = (f"wflow: error: process {who} of this multi-process run was lost (it died or was "
                f"killed); process {rank} stopped ({name}); the run file keeps its last "
                "checkpoint (resumable with --resume)")
        code = EXIT_FAILED
    elif forwarded:
        line = (f"wflow: interrupted by {signal.Signals(forwarded[0]).name}; process {rank} "
                f"ended ({name}); the run file keeps its last checkpoint (resumable with --resume)")
        code = EXIT_INTERRUPTED
    else:
        line = (f"wflow: error: process {rank} of this multi-process run was ended by {name}; "
                "the run file keeps its last checkpoint (resumable with --resume)")
        code = EXIT_FAILED
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return code
