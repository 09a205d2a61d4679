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

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_allocator() -> bool:
    """Keep freed memory in the process: glibc malloc without mmap, no trimming, one arena.

    XLA on CPU allocates each executable's buffers per call. glibc serves every request above
    its mmap threshold (at most 32 MiB) with a fresh mmap and gives it back on free, so the
    kernel zero-fills those pages again on the next call: up to 79,000 minor page faults and
    12% of the CPU time in the kernel per substep of a 64^3 x 8 grid. Without mmap, without
    trimming and with one arena (two arenas still faulted a third as much), freed blocks are
    reused: no faults, 3% kernel time, the substep 10% faster (benchmarks/README.md). The
    trim threshold is -1 (never trim): its largest finite value, 2^31 - 1, still gave back a
    heap top of over 2 GiB, which a study's block of several GiB frees at its end (2.9
    million faults per quick sweep instead of 0.8 million). The
    resident memory then stays at its high-water mark until the command exits, which a
    command reaches anyway. Called by the command before JAX starts any thread; importing
    ``wflow`` as a library changes nothing. ``WFLOW_MALLOC=default`` keeps glibc's defaults.
    Returns True when the policy was set (glibc only).
    """
    if os.environ.get("WFLOW_MALLOC", "") == "default":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to do
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1)))



def allocator_policy() -> str:
    """Set ``tune_allocator``'s policy and name what is in force, for a benchmark's log:
    "wflow (no mmap, no trim, one arena)", or "default" (glibc's, or not glibc)."""
    return "wflow (no mmap, no trim, one arena)" if tune_allocator() else "default"

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
    tune_allocator()
    from wflow._supervise import supervise_if_needed

    supervise_if_needed()  # one process of a multi-process ``wflow run``: a watched child
    from wflow.cli import main as run

    return run()
