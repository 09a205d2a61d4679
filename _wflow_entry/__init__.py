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
import sys

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130

# WFLOW_MALLOC: "wflow" (the default): the policy below and the aligned-reuse shim;
# "no-preload": the policy without the shim; "default": glibc's allocator as it comes
MALLOC_MODES = ("wflow", "no-preload", "default")

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
    if malloc_mode() == "default":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to do
        return False
    global _TUNED
    _TUNED = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1)))
    return _TUNED


_TUNED = False  # tune_allocator set the policy in this process


def malloc_mode() -> str:
    """``WFLOW_MALLOC`` ("wflow" when unset or empty; ``MALLOC_MODES``); an unknown value
    counts as "wflow" here and is refused by the command (``main``)."""
    mode = os.environ.get("WFLOW_MALLOC", "") or "wflow"
    return mode if mode in MALLOC_MODES else "wflow"


# ----------------------------------------------------------------------------- aligned reuse

_SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aligned_reuse.c")
_SHIM_SYMBOL = "wflow_aligned_reuse_counts"
_PRELOADED = "WFLOW_PRELOADED"  # set on the restart: the library it preloaded (no second try)
_UNBLOCK = "WFLOW_PRELOAD_UNBLOCK"  # the signals blocked across the restart, to unblock after it
_HELD = (signal.SIGINT, signal.SIGTERM)


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def cache_dir() -> str:
    """Where the compiled shim is kept: ``WFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/wflow``,
    else ``~/.cache/wflow``."""
    if os.environ.get("WFLOW_CACHE_DIR"):
        return os.environ["WFLOW_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wflow")


def aligned_reuse_library() -> str | None:
    """The aligned-reuse shim (``aligned_reuse.c``) compiled for this machine, or None.

    Compiled once with the system C compiler (``CC``, else ``cc``, else ``gcc``) into
    ``cache_dir()``, named by a hash of the source, the compiler and the machine, and reused
    after that (a compiled file appears whole: it is written under a temporary name and
    renamed). None, silently, where there is no compiler, the cache is not writable or the
    compilation fails: the command then runs without the shim.
    """
    import hashlib
    import platform
    import shlex
    import shutil
    import subprocess

    try:
        with open(_SHIM_SOURCE, "rb") as f:
            source = f.read()
    except OSError:
        return None
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        return None
    key = hashlib.sha256(b"\0".join([source, " ".join(cc).encode(), platform.machine().encode()]))
    path = os.path.join(cache_dir(), f"aligned_reuse-{key.hexdigest()[:16]}.so")
    if os.path.isfile(path):
        return path
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        done = subprocess.run([*cc, "-O2", "-shared", "-fPIC", "-o", tmp, _SHIM_SOURCE, "-ldl"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if done.returncode != 0 or not os.path.isfile(tmp):
            return None
        os.replace(tmp, path)
        return path
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def aligned_reuse_counts() -> tuple[int, int] | None:
    """(requests the shim served from malloc, requests passed on to the C library) in this
    process, or None when the shim is not loaded."""
    try:
        import ctypes

        fn = getattr(ctypes.CDLL(None), _SHIM_SYMBOL)
    except (OSError, AttributeError):
        return None
    reused, passed = ctypes.c_ulonglong(), ctypes.c_ulonglong()
    fn(ctypes.byref(reused), ctypes.byref(passed))
    return reused.value, passed.value


def preload_aligned_reuse() -> bool:
    """Restart this process once with the aligned-reuse shim preloaded; True when it is loaded.

    XLA asks for its buffers 64-byte aligned, and glibc (before 2.38) serves such a request
    of a freed buffer's own size only from a larger hole: a compiled program's temporaries
    take fresh memory at every call, which the kernel zero-fills page by page, and the heap
    grows unless it is trimmed. The shim (``aligned_reuse.c``) lets a large aligned request
    reuse its own hole: at M = D = 2000 a study block took 93 s instead of 126 s at the same
    peak memory (benchmarks/README.md). The process image is replaced with the same command
    line (``sys.orig_argv``) and ``LD_PRELOAD`` naming the shim, so this must run before
    any thread starts and before anything is written; child processes inherit it. Nothing
    happens with ``WFLOW_MALLOC`` = "default" or "no-preload", outside glibc, when the shim
    cannot be compiled, or when a restart already tried (the loader refused the library).
    """
    held = os.environ.pop(_UNBLOCK, None)
    if held:  # the restarted process: deliver what arrived meanwhile (the command's guard is in)
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [int(n) for n in held.split(",")])
        except (ValueError, OSError):
            pass
    if malloc_mode() != "wflow" or not _glibc():
        return False
    if aligned_reuse_counts() is not None:
        return True
    argv = getattr(sys, "orig_argv", None)
    if os.environ.get(_PRELOADED) or not argv or not sys.executable or "-" in argv[1:2]:
        return False
    lib = aligned_reuse_library()
    if lib is None:
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    env = dict(os.environ, LD_PRELOAD=f"{lib} {preload}".strip(), **{_PRELOADED: lib})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    # SIGINT / SIGTERM stay blocked across the exec (the mask is inherited) and pending ones
    # wait, so that none meets the new interpreter before its handlers are in (above)
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    except (ValueError, OSError):  # not the main thread
        return False
    held = [s for s in _HELD if s not in before]
    env[_UNBLOCK] = ",".join(str(int(s)) for s in held)
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        return False
    return False  # not reached


def allocator_policy() -> str:
    """Set the command's allocator policy (``preload_aligned_reuse``, which may restart the
    process, then ``tune_allocator``) and name what is in force, for a benchmark's log:
    "wflow (no mmap, no trim, one arena, aligned reuse)", without ", aligned reuse" when the
    shim is not loaded, or "default" (glibc's, or not glibc)."""
    preload_aligned_reuse()
    tune_allocator()
    return allocator_in_force()


def allocator_in_force() -> str:
    """The allocator policy of this process, as ``allocator_policy`` names it (``wflow info``)."""
    if not _TUNED:
        return "default"
    reuse = ", aligned reuse" if aligned_reuse_counts() is not None else ""
    return f"wflow (no mmap, no trim, one arena{reuse})"


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
    mode = os.environ.get("WFLOW_MALLOC", "")
    if mode and mode not in MALLOC_MODES:
        print(f"wflow: WFLOW_MALLOC = {mode!r} is not one of: {', '.join(MALLOC_MODES)}",
              file=sys.stderr)
        return EXIT_USAGE
    allocator_policy()  # may restart the process with the shim preloaded
    from wflow._supervise import supervise_if_needed

    supervise_if_needed()  # one process of a multi-process ``wflow run``: a watched child
    from wflow.cli import main as run

    return run()
