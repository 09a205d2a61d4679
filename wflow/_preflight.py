"""Memory and disk preflight: will this run fit, decided from the resolved config alone?

``check_resources(config, memory_limit=None)`` runs before anything is
allocated or written: it estimates the peak memory of the run and the size
of its run file with exact integer arithmetic (no array is made, so a size
such as ``solver.L = 2**63`` is refused in microseconds instead of ending in
an overflow, a MemoryError or an XLA abort) and raises ``ConfigError`` with one
line naming the keys that dominate, the estimate and what the machine has.

Memory available: the smallest of the limits this process has (``memory_limits``):
the host's ``MemAvailable`` (``/proc/meminfo``; else ``os.sysconf`` physical pages),
the address-space and data limits (``ulimit -v`` / ``-d``: RLIMIT_AS, RLIMIT_DATA)
minus what the process maps already, and the cgroup limit of a container or batch
job (v2 ``memory.max`` minus ``memory.current``, v1 ``memory.limit_in_bytes`` minus
``memory.usage_in_bytes``); on an accelerator, the device's free memory
(``bytes_limit`` minus ``bytes_in_use``, ``jax.Device.memory_stats``). The refusal
names the limit that bit. ``memory_limit`` (the CLI's
``--memory-limit SIZE``) replaces both; ``memory_limit = math.inf``
(``--memory-limit none``) skips the memory check. The disk check always runs:
a checkpoint writes a copy of the run file beside it (``_io``), so the
folder must hold twice the final file.

The estimate is a sum of ``Part``s, each with the config keys it scales with.
For particles (``_particle_parts``), with b the bytes of the run precision,
N samples, d the state dimension, k parameters per particle:

* parameters Theta (L, M, k) and the copies one step keeps alive: c_method
  L M k b with c the method's ``step_copies`` (``wflow._steppers``: 5 euler,
  7 heun, 9 ssprk3, 14 adaptive: Tsit5 stages and error estimate), +1 with
  temperature > 0;
* depth states: layered, the stored layer inputs z_0..z_{L-1} for the
  adjoint plus a few (N, d) buffers, (L + 4) N d b; continuous, diffrax's
  stages and checkpoints, 64 N d b (+ 12 L M k b for the backsolve adjoint's
  augmented state);
* per-layer temporaries of the neuron kernel, (N, M) blocks of B = min(N M,
  solver.tile) elements each (the kernel works in tiles, ``_features``):
  4 B b layered (activation, derivative, adjoint products), 8 B b continuous; the linear
  feature has none;
* data: x, y in the run precision on the device and three float64 host
  copies while they are built; teacher data: the teacher's parameters and
  states in float64;
* snapshots: ``integrate`` keeps them all and the writer queues them:
  2 n_snap L M k b; history: 64 bytes per value (Python floats in lists);
* a fixed 256 MiB for the XLA runtime and compiled programs.

Measured against XLA's own ``memory_analysis`` in
``benchmarks/bench_preflight.py``: the estimate is an upper bound by design
(a factor 1-3 above the measured peak), so it refuses only runs that would
not fit or barely would.

The grid solver's estimate (``_grid_parts``, the hook for ``solver.kind =
"grid"``): density rho (n_t, *cells) with C cells per slice, SSP stages and
face fluxes (k per cell), per-slice (N, C) temporaries of the shared kernel
(a cell is a weighted particle) and snapshots (n_snap, n_t, *cells).
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass

from ._schema import ConfigError
from ._steppers import METHODS, get_method

__all__ = ["Estimate", "Part", "available_memory", "check_resources", "estimate", "format_bytes",
           "heap_size", "host_limit", "memory_limits", "parse_size",
           "release_free_memory"]

MIB = 2**20
RUNTIME_BYTES = 256 * MIB  # XLA runtime, compiled programs, Python objects
HOPELESS = 2**50  # 1 PiB: no machine has this; refuse without asking the backend
STEP_COPIES = {name: get_method(name).step_copies for name in METHODS}
DIGITS_N = 1797  # scikit-learn's digits data set


@dataclass(frozen=True)
class Part:
    """One term of the estimate: what it is, the keys it scales with, its bytes, where it lives."""

    what: str
    keys: tuple[str, ...]
    bytes: int
    device: bool = True  # on the accelerator (the host when the backend is the CPU)


@dataclass(frozen=True)
class Estimate:
    parts: tuple[Part, ...]
    file_bytes: int  # the final run file

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    def on(self, device: bool) -> int:
        return sum(p.bytes for p in self.parts if p.device == device)

    def largest(self, n: int = 2, device: bool | None = None) -> list[Part]:
        parts = [p for p in self.parts if device is None or p.device == device]
        return sorted(parts, key=lambda p: -p.bytes)[:n]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo() -> _Mallinfo2 | None:
    """glibc's ``mallinfo2()`` now, or None where it is missing (not glibc, glibc < 2.33)."""
    try:
        info = getattr(ctypes.CDLL(None), "mallinfo2", None)
    except OSError:
        return None
    if info is None:
        return None
    info.restype = _Mallinfo2
    return info()


def heap_size() -> int | None:
    """Bytes of the allocator's main heap (``mallinfo2().arena``: in use and free), or None
    where that is not known (not glibc, glibc < 2.33)."""
    info = _mallinfo()
    return None if info is None else int(info.arena)


def release_free_memory(keep: float = 0.0, retain: bool = False) -> bool:
    """Give the memory the allocator holds free back to the system (glibc's ``malloc_trim``)
    when there is more of it than ``keep`` bytes; True if it did. With ``retain`` about
    ``keep`` bytes of it stay resident (``_hold_resident``) and only the rest goes back.

    The ``wflow`` command keeps freed memory in the process (``_wflow_entry.tune_allocator``:
    no mmap, no trim), so that a compiled program that runs again and again reuses its
    buffers without page faults. But freed holes need not fit the next buffers, and the heap
    grows: between programs of different shapes (a study's blocks), and between calls of
    one program too, since XLA asks for its buffers 64-byte aligned and glibc serves an
    aligned request of a freed buffer's own size only from a larger hole (a small allocation
    beside the hole keeps it from merging). The full Chaintron-Chizat-Maass sweep reached
    24 GB resident (OOM-killed) with a 7 GiB block budget. ``malloc_trim(0)`` returns every
    free page, at the heap's top and inside it. A study calls this after each block whose
    successor has another shape, retaining the successor's estimate (after its last block,
    nothing), and between the calls of a block's chunk with ``keep`` = the block's estimate
    when its heap grows (``_limit._Watch``; with the command's aligned-reuse shim the heap
    stops growing and this is rare). The price is that the next call faults in again what
    it reuses beyond what was retained.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory itself
        return False
    info = _mallinfo()  # glibc >= 2.33; older: always trim
    if info is not None and info.fordblks <= keep:
        return False
    held = _hold_resident(libc, keep) if retain and info is not None else []
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    for p in held:
        libc.free(p)
    return True


_HOLD_MIN = 64 * 2**20  # smaller free pieces are not worth holding through a trim


def _hold_resident(libc, keep: float) -> list[int]:
    """Allocate up to ``keep`` bytes out of the free memory the heap already has, never from
    beyond its end, and return the pointers: ``malloc_trim`` leaves the pages of allocated
    chunks in place, and once they are freed again the next program's buffers reuse them
    without faulting them in (about 1 s of system time per GiB in a VM)."""
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    held, want, size = [], float(keep), float(keep)
    while want >= _HOLD_MIN and size >= _HOLD_MIN:
        ask = int(min(size, want))
        before = _mallinfo()
        p = libc.malloc(ask)
        now = _mallinfo()
        if p and (now.arena, now.hblkhd) == (before.arena, before.hblkhd):  # from free memory
            held.append(p)
            want -= ask
        else:  # no free piece that large (the heap grew): try a smaller one
            if p:
                libc.free(p)
            size /= 2
    return held


def format_bytes(n: float) -> str:
    if n == math.inf:
        return "unlimited"
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                       ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 1e4 else f"{v:.3e} {unit}"
    return f"{int(n)} B"


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text: str) -> float:
    """'8GiB', '500MB', '1.5e9', 'none' (no limit) -> bytes; ValueError otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    if s in ("none", "off", "unlimited", "inf"):
        return math.inf
    i = len(s)
    while i > 0 and s[i - 1].isalpha():
        i -= 1
    number, unit = s[:i], s[i:]
    if unit not in _UNITS or not number:
        raise ValueError(f"{text!r}: expected a size such as 8GiB, 500MB, 2e9 or none")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r}: expected a size such as 8GiB, 500MB, 2e9 or none") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r}: must be a positive size")
    return value


# ----------------------------------------------------------------------------- estimates


def _k(config: dict) -> int:
    from ._model import feature_k

    k = feature_k(config["model"], tokens=config["data"].get("tokens"))
    return k if k is not None else 2 * config["model"]["dim"] + 1


def _tokens(data: dict) -> int:
    """Tokens per sample (1 for vector data): states and inputs are that many vectors."""
    return data.get("tokens") or 1


def _n_samples(data: dict) -> int:
    return min(data["n"], DIGITS_N) if data["kind"] == "digits" else data["n"]


def _n_records(train: dict) -> int:
    n_steps = max(1, math.ceil(train["time"] / train["dt"] - 1e-9))
    return n_steps // train["record_every"] + 2


def _data_parts(config: dict, b: int) -> list[Part]:
    data, model = config["data"], config["model"]
    n = _tokens(data)
    N, d_in, d_out, d = _n_samples(data), n * data["dim"], data["out_dim"], n * model["dim"]
    parts = [
        Part("data x, y and the embedded inputs", ("data.n", "data.dim", "model.dim"),
             N * (d_in + d_out + 2 * d) * b),
        Part("data while they are built (float64)", ("data.n", "data.dim"),
             3 * N * (d_in + d_out) * 8, device=False),
    ]
    if data["kind"] == "teacher":
        tw, td, k = data["teacher_width"], data["teacher_depth"], _k(config)
        parts.append(Part("teacher network (float64)",
                          ("data.teacher_width", "data.teacher_depth", "data.n", "model.dim"),
                          (td * tw * k + (td + 4) * N * d + 4 * N * tw) * 8, device=False))
    return parts


def _record_parts(config: dict, snapshot_bytes: int, n_columns: int) -> list[Part]:
    train = config["train"]
    return [
        Part("snapshots kept in memory", ("train.snapshots", "solver.L", "solver.M"),
             2 * train["snapshots"] * snapshot_bytes, device=False),
        Part("history", ("train.time", "train.dt", "train.record_every"),
             64 * (n_columns + 2) * _n_records(train), device=False),
        Part("XLA runtime and compiled programs", (), RUNTIME_BYTES, device=False),
    ]


def _block(N: int, M: int, solver: dict, d: int | None) -> int:
    """Elements of the largest (N, M) block of a field call: the kernels work in blocks of at
    most ``solver.tile`` elements (default: ``Neuron(d=d).auto_tile()`` for the neuron block
    at state dimension d, ``default_tile()`` for other blocks, ``d = None``)."""
    from ._features import Neuron, default_tile

    tile = solver.get("tile") or (default_tile() if d is None else Neuron(d=d).auto_tile())
    return min(N * M, tile)


def _particle_parts(config: dict, b: int) -> list[Part]:
    data, model, solver, train = (config[s] for s in ("data", "model", "solver", "train"))
    L, M, N, k = solver["L"], solver["M"], _n_samples(data), _k(config)
    d = _tokens(data) * model["dim"]
    theta = L * M * k * b
    copies = STEP_COPIES[train["method"]] + (1 if train["temperature"] > 0 else 0)
    parts = [Part("parameters (L, M, k) and their copies in a step",
                  ("solver.L", "solver.M", "model.dim"), copies * theta)]
    neuron = model["feature"] == "neuron"
    if solver["depth"] == "layers":
        parts.append(Part("layer states (L, N, d) for the adjoint",
                          ("solver.L", "data.n", "model.dim"), (L + 4) * N * d * b))
        if neuron:
            parts.append(Part("per-layer (N, M) temporaries", ("data.n", "solver.M", "solver.tile"),
                              4 * _block(N, M, solver, model["dim"]) * b))
    else:
        extra = 12 * theta if solver["adjoint"] == "backsolve" else 0
        parts.append(Part("ODE solver states and checkpoints (N, d)",
                          ("data.n", "model.dim", "solver.adjoint"), 64 * N * d * b + extra))
        if neuron:
            parts.append(Part("per-stage (N, M) temporaries", ("data.n", "solver.M", "solver.tile"),
                              8 * _block(N, M, solver, model["dim"]) * b))
    n_columns = 4 if train["l2"] > 0 else 2
    return parts + _data_parts(config, b) + _record_parts(config, theta, n_columns)


def _grid_cells(config: dict, k: int) -> list[int]:
    grid = config["solver"].get("grid") or {}
    cells = grid.get("cells", 32)
    return list(cells) if isinstance(cells, list) else [int(cells)] * k


def _grid_parts(config: dict, b: int) -> list[Part]:
    """Hook for ``solver.kind = "grid"`` (see the module docstring)."""
    data, model, solver = config["data"], config["model"], config["solver"]
    k = _k(config)
    n_t, N, d = solver["L"], _n_samples(data), _tokens(data) * model["dim"]
    C = math.prod(_grid_cells(config, k))
    rho = n_t * C * b
    parts = [
        Part("density rho (n_t, *cells) and its SSP stages", ("solver.L", "solver.grid.cells"),
             8 * rho),
        Part("face velocities and fluxes", ("solver.L", "solver.grid.cells", "model.dim"),
             2 * k * rho),
        Part("depth states (n_t, N, d)", ("solver.L", "data.n", "model.dim"),
             (n_t + 4) * N * d * b),
        Part("per-slice (N, C) temporaries", ("data.n", "solver.grid.cells"), 4 * N * C * b),
    ]
    return parts + _data_parts(config, b) + _record_parts(config, rho, 3)


ESTIMATORS = {"particles": _particle_parts, "grid": _grid_parts}


def estimate(config: dict) -> Estimate:
    """The run's memory parts and final file size from a resolved config (no allocation)."""
    b = 8 if config["solver"]["precision"] == "float64" else 4
    kind = config["solver"]["kind"]
    parts = tuple(ESTIMATORS[kind](config, b))
    snap = next(p for p in parts if p.what == "snapshots kept in memory").bytes // 2
    hist = next(p for p in parts if p.what == "history").bytes // 8
    data = next(p for p in parts if p.what.startswith("data x")).bytes
    file_bytes = snap + snap // max(1, config["train"]["snapshots"]) + hist + 2 * data + 2**20
    return Estimate(parts, file_bytes)


# ----------------------------------------------------------------------------- the machine


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _proc_status(field: str) -> int:
    """A size of this process from /proc/self/status (VmSize, VmData) in bytes; 0 if unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read_int(path: str) -> int | None:
    """An integer cgroup file ("max" and the v1 'unlimited' sentinels read as None)."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return None if value >= 2**60 else value


def cgroup_root() -> str:
    """Where the cgroup file systems are mounted (``WFLOW_CGROUP_ROOT`` for tests)."""
    return os.environ.get("WFLOW_CGROUP_ROOT") or "/sys/fs/cgroup"


def _cgroup_paths() -> dict[str, str]:
    """{"": v2 path, "memory": v1 memory path} of this process (/proc/self/cgroup)."""
    out = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    for controller in parts[1].split(","):
                        out.setdefault(controller, parts[2])
    except OSError:
        pass
    return out


def _levels(path: str) -> list[str]:
    """``/a/b`` -> ["/a/b", "/a", "/"]: a cgroup and its ancestors (each may limit memory)."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _tightest(folders, limit_file: str, used_file: str) -> tuple[str, int] | None:
    """(description, free bytes) of the folder whose ``limit_file`` minus ``used_file`` is
    smallest, or None when no folder has a limit."""
    best = None
    for folder in folders:
        limit = _read_int(os.path.join(folder, limit_file))
        if limit is not None:
            used = _read_int(os.path.join(folder, used_file)) or 0
            free = max(0, limit - used)
            if best is None or free < best[1]:
                best = (f"cgroup {limit_file} {format_bytes(limit)} minus {used_file} "
                        f"{format_bytes(used)} ({folder})", free)
    return best


def _cgroup_limits(root: str) -> list[tuple[str, int]]:
    paths = _cgroup_paths()
    # v2: memory.max of this cgroup and its ancestors, minus what the group already uses;
    # v1: memory.limit_in_bytes of the memory controller's group and its ancestors
    v2 = _tightest((os.path.join(root, level.lstrip("/"))
                    for level in _levels(paths.get("", "/"))), "memory.max", "memory.current")
    v1 = _tightest((os.path.join(root, "memory", level.lstrip("/"))
                    for level in _levels(paths.get("memory", "/"))),
                   "memory.limit_in_bytes", "memory.usage_in_bytes")
    return [found for found in (v2, v1) if found is not None]


def memory_limits() -> list[tuple[str, int]]:
    """Every limit on what this process may still allocate on the host: (what, bytes).

    MemAvailable (/proc/meminfo); the address-space and data-segment limits
    (``ulimit -v`` RLIMIT_AS, ``ulimit -d`` RLIMIT_DATA) minus what the process already
    maps; the cgroup memory limit of a container or batch job (v2 ``memory.max`` minus
    ``memory.current``, v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``,
    this cgroup's and its ancestors').
    """
    import resource

    found = []
    avail = _meminfo_available()
    if avail is not None:
        found.append(("MemAvailable", avail))
    for name, flag, field, option in (("RLIMIT_AS", "RLIMIT_AS", "VmSize", "-v"),
                                      ("RLIMIT_DATA", "RLIMIT_DATA", "VmData", "-d")):
        try:
            soft, _ = resource.getrlimit(getattr(resource, flag))
        except (AttributeError, ValueError, OSError):
            continue
        if soft != resource.RLIM_INFINITY and soft >= 0:
            used = _proc_status(field)
            found.append((f"ulimit {option} ({name}) {format_bytes(soft)} minus "
                          f"{format_bytes(used)} in use", max(0, soft - used)))
    found += _cgroup_limits(cgroup_root())
    return found


def available_memory() -> int:
    """Host memory available to a new allocation, in bytes: the smallest ``memory_limits``."""
    return host_limit()[1]


def host_limit() -> tuple[str, int]:
    """(what, bytes) of the smallest host memory limit (``memory_limits``)."""
    limits = memory_limits()
    if not limits:
        return "unknown", 2**62  # unknown: do not refuse
    return min(limits, key=lambda item: item[1])


def _device_memory() -> tuple[str, int | None]:
    """(backend, bytes the first device can still allocate, or None for the CPU / unknown):
    the device's ``bytes_limit`` minus ``bytes_in_use`` (``jax.Device.memory_stats``)."""
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        return backend, None
    try:
        stats = jax.devices()[0].memory_stats() or {}
        limit = int(stats.get("bytes_limit") or 0)
        return backend, (max(0, limit - int(stats.get("bytes_in_use") or 0)) if limit else None)
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return backend, None


def _free_disk(path: str) -> int | None:
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _keys(parts: list[Part]) -> str:
    return ", ".join(f"{p.what} ({' x '.join(p.keys) or 'fixed'}) {format_bytes(p.bytes)}"
                     for p in parts)


def check_resources(config: dict, memory_limit: float | None = None,
                    output: str | None = None) -> Estimate:
    """Raise ``ConfigError`` (one line) when the run cannot fit; return the estimate.

    Args:
        config: the resolved config.
        memory_limit: bytes to compare with instead of the machine's memory;
            ``math.inf`` skips the memory check.
        output: the run file path (default ``config["output"]["path"]``) for the disk check.
    """
    est = estimate(config)
    hint = "reduce them, or pass --memory-limit SIZE (--memory-limit none skips this check)"
    if memory_limit != math.inf:
        total = est.total
        if memory_limit is not None:
            if total > memory_limit:
                raise ConfigError(f"memory: this run needs about {format_bytes(total)} (largest: "
                                  f"{_keys(est.largest())}), above --memory-limit = "
                                  f"{format_bytes(memory_limit)}; {hint}")
        else:
            which, host = host_limit()
            # A hopeless size needs no backend (which would take time to start).
            backend, device = ("cpu", None) if total > HOPELESS else _device_memory()
            if device is None:  # CPU: everything is host memory
                if total > host:
                    raise ConfigError(f"memory: this run needs about {format_bytes(total)} "
                                      f"(largest: {_keys(est.largest())}), this process has "
                                      f"{format_bytes(host)} available (smallest limit: "
                                      f"{which}); {hint}")
            else:
                on_device, on_host = est.on(True), est.on(False)
                if on_device > device:
                    raise ConfigError(f"memory: this run needs about {format_bytes(on_device)} "
                                      f"on the {backend} device (largest: "
                                      f"{_keys(est.largest(device=True))}), the device has "
                                      f"{format_bytes(device)} free (limit: bytes_limit minus "
                                      f"bytes_in_use); {hint}")
                if on_host > host:
                    raise ConfigError(f"memory: this run needs about {format_bytes(on_host)} of "
                                      f"host memory (largest: {_keys(est.largest(device=False))}),"
                                      f" this process has {format_bytes(host)} available "
                                      f"(smallest limit: {which}); {hint}")
    path = output if output is not None else config["output"]["path"]
    free = _free_disk(path)
    if free is not None and 2 * est.file_bytes > free:
        raise ConfigError(f"output.path = {path!r}: the run file will grow to about "
                          f"{format_bytes(est.file_bytes)} (train.snapshots x solver.L x solver.M "
                          f"x k), and a checkpoint needs twice that; the disk has "
                          f"{format_bytes(free)} free")
    return est
