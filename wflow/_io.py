"""The HDF5 run file (docs/reliability.md, "The run file"): a crash-consistent writer, a
lock, checksums, a validating reader.

Layout (names are the contract)::

    /                   attrs: format = "wflow-run", format_version = 1, wflow_version,
                               config (resolved config, TOML text), status, seed,
                               created_utc, jax_version, backend,
                               initial_loss (E at s = 0), wall_time (seconds so far),
                               attrs_sha256 (checksum of the attributes, below);
                               failure (status "failed": what happened),
                               stability_warning (when the loss rose, see _integrate)
    /history/s, <the flow's history names>, wall_time
                                                 (n,)  float64, one row per record
                                                 (particles: loss, stationarity
                                                 [, energy, dissipation with train.l2 > 0])
    /snapshots/s                                 (n_snap,)
    /snapshots/<name>                            (n_snap, ...)  run precision; particles:
                                                 theta (n_snap, L, M, k); grid: rho
    /data/x (N, d_in), /data/y (N, d_out)        run precision
    /final/prediction (N, d_out)                 written when the run completes
    /state/<name>, /state/step (), /state/key (2,) uint32
                                                 what ``--resume`` continues from;
                                                 group attribute sha256
    any further fixed arrays of the run (``arrays``, e.g. the grid's axes)

Statuses (root attribute ``status``):

    running      a process is writing the file, or died doing so (then the lock,
                 below, is free and ``--resume`` continues from the last checkpoint)
    complete     the run reached s = S; /final/prediction exists
    diverged     non-finite or exploding loss; not resumable
    unstable     stopped because the loss rose (train.on_increase = "stop"); not resumable
    interrupted  stopped by SIGINT / SIGTERM; resumable
    failed       stopped by a run-time failure (out of memory, a write error); the
                 attribute ``failure`` says which; resumable (e.g. on a larger machine)

Crash consistency. The file at ``path`` is never modified in place. Every
change -- the first empty file, each checkpoint, the final state -- is a new
*version*: the current file is copied to a temporary file in the same folder
(``.<name>.<pid>.tmp``), the new records, snapshots, state and attributes are
written into the copy, the copy is closed, its checksums sealed, ``fsync``-ed
and then atomically renamed over ``path`` (``os.replace``; the folder is
``fsync``-ed after it). POSIX ``rename`` is atomic, so at every instant --
whatever kills the process (SIGKILL, the OOM killer, a cluster's preemption,
power loss after the fsyncs) -- ``path`` is either absent (before the first
version) or one complete, closed HDF5 file written by a finished commit, and
each commit writes *records, snapshots and the resumable state together*:
the file holds exactly the records with step <= /state/step, and ``--resume``
continues from that state. This needs nothing of HDF5 but its ordinary
close; HDF5's own metadata is known to be corrupt after a crash in the middle
of an in-place update, which is why in-place appends are not used.

The price is a file copy per commit (the kernel's ``copy_file_range`` /
``sendfile``, bounded by disk bandwidth), so commits are *checkpoints*: at
most one every ``output.checkpoint_every`` seconds of wall time (default
10 s; 0 = at every record) and never more often than 20 times the last
commit's own duration (so checkpoints cost at most ~5% of the run), plus one
at the end. Records between checkpoints wait in memory; a process killed
between two checkpoints loses the work since the last one, and nothing else.

Checksums. Every dataset with at least one dimension is chunked with HDF5's
``fletcher32`` filter (each chunk carries a checksum that HDF5 verifies on
every read); scalars are stored in the checksummed object header (compact
layout); the files use the HDF5 1.10 format (``libver = "v110"``), whose
superblock, object headers and chunk indexes carry checksums of their own.
What HDF5 does not checksum -- variable-length string attributes such as
``config`` -- is covered by ``attrs_sha256``, a SHA-256 of every root
attribute except the mutable ones (status, wall_time, failure,
stability_warning); the resumable state additionally carries a SHA-256 of
its arrays (``/state`` attribute ``sha256``). ``verify_run`` reads every
dataset and checks all of it; ``--resume``, ``wflow plot`` and ``read_run``
call it, and a damaged file is an error naming the dataset.

Lock. A process writing a run file holds an exclusive ``flock`` on a sidecar
``<path>.lock`` (which holds its pid) for as long as it works on the file; a
second writer gets ``LockedError`` naming the file and the holder's pid. The
lock is released by the kernel when the process dies, so a file left with
status "running" and a free lock is a crashed run (resumable), one with a held
lock is a live one. Readers need no lock: they only ever see complete
versions. (``flock`` is not reliable on some network file systems.)

For other verbs (``study``, ``compare``): ``OutputLock`` (the lock),
``commit_h5(path, update, fresh=...)`` (one atomic, sealed version of any HDF5
file), ``create_array`` (a protected dataset), ``seal`` / ``verify_file``
(checksums of any file written this way).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import shutil
import threading
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Self

import h5py
import numpy as np

from ._signals import critical, on_hard_exit

FORMAT = "wflow-run"
FORMAT_VERSION = 1
LIBVER = ("v110", "v110")
STATUSES = ("running", "complete", "diverged", "unstable", "interrupted", "failed")
RESUMABLE = ("running", "interrupted", "failed")
# Root attributes that change during a run and are not covered by attrs_sha256.
MUTABLE_ATTRS = ("status", "wall_time", "failure", "stability_warning", "attrs_sha256")
COMPACT_MAX = 16 * 1024  # fixed datasets up to this many bytes live in the object header
CHUNK_MAX = 8 * 2**20  # bytes per chunk of larger datasets
COMMIT_COST_FACTOR = 20.0  # a checkpoint waits at least this many times the last one's duration

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RESUMABLE",
    "STATUSES",
    "LockedError",
    "OutputLock",
    "RunFileError",
    "RunWriter",
    "check_format",
    "check_run_file",
    "commit_h5",
    "create_array",
    "read_run",
    "seal",
    "verify_file",
    "verify_run",
]


class RunFileError(ValueError):
    """A file that is not a readable, intact wflow run file (one-line message naming it)."""


class LockedError(RunFileError):
    """Another process holds the file's lock; ``pid`` is the holder's process id (or None)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


def as_text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# ----------------------------------------------------------------------------- the lock


class OutputLock:
    """Exclusive ``flock`` on ``<path>.lock`` while this process writes ``path``.

    ``acquire()`` never blocks: a held lock raises ``LockedError`` naming the
    file and the holder's pid. The lock file holds the pid of its holder and is
    removed on release; the kernel releases the lock of a dead process. The file's
    folder is created if missing (and removed again on release if still empty).
    """

    def __init__(self, path: str, kind: str = "run file", key: str = "output.path"):
        self.path = os.path.abspath(os.fspath(path))
        self.lock_path = self.path + ".lock"
        self.kind, self.key = kind, key
        self._fd: int | None = None
        # Folders created for this file (deepest first); release() removes those still empty,
        # so a run that fails before writing leaves nothing behind.
        self.created_dirs: list[str] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        self._make_folder()
        try:
            return self._lock()
        except BaseException:
            self._remove_created()
            raise

    def _lock(self) -> OutputLock:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFileError(f"{self.key} = {self.path!r}: cannot create the lock file "
                                   f"{self.lock_path!r} ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunFileError(f"{self.key} = {self.path!r}: cannot lock "
                                       f"{self.lock_path!r} ({e.strerror or e})") from None
                who = f"process {pid}" if pid else "another process"
                raise LockedError(f"{self.key} = {self.path!r}: {who} is writing this {self.kind} "
                                  f"(lock {os.path.basename(self.lock_path)}); wait for it to "
                                  "finish or stop it first", pid) from None
            # The file may have been unlinked by its previous holder between our open
            # and our flock: then we locked a dead inode; start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            # the signal watcher may end the process with os._exit (no finally runs there):
            # release there too
            on_hard_exit(id(self), self.release)
            return self

    def _make_folder(self) -> None:
        folder = os.path.dirname(self.path)
        created, parent = [], folder
        while not os.path.exists(parent):
            created.append(parent)
            parent = os.path.dirname(parent)
        self.created_dirs = created
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            self._remove_created()
            raise RunFileError(f"{self.key} = {self.path!r}: its folder cannot be created "
                               f"({e.strerror or e})") from None

    def release(self) -> None:
        if self._fd is None:
            return
        on_hard_exit(id(self), None)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)  # while still holding it: see acquire()
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created_dirs:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                os.rmdir(folder)
        self.created_dirs = []

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def remove_stale_temporaries(path: str) -> None:
    """Remove temporaries ``.<name>.<pid>.tmp`` of dead writers (call while holding the lock)."""
    folder, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}."
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder or "."):
            if entry.startswith(prefix) and entry.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))


# ----------------------------------------------------------------------------- datasets


def _chunks(shape: tuple[int, ...], itemsize: int, leading: bool) -> tuple[int, ...]:
    """Chunk shape of at most CHUNK_MAX bytes; with ``leading`` one row of axis 0 per chunk."""
    chunk = [max(1, n) for n in shape]
    if leading:
        chunk[0] = 1
    while math.prod(chunk) * itemsize > CHUNK_MAX:
        axes = [i for i in range(len(chunk)) if chunk[i] > 1 and not (leading and i == 0)]
        if not axes:
            break
        i = max(axes, key=lambda j: chunk[j])
        chunk[i] = (chunk[i] + 1) // 2
    return tuple(chunk)


def create_array(group: h5py.Group, name: str, data=None, *, shape=None, dtype=None,
                 extendable: bool = False) -> h5py.Dataset:
    """A checksummed dataset: compact (object header) when small and fixed, else chunked
    with fletcher32. ``extendable`` makes axis 0 unlimited (rows appended later)."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if not extendable and nbytes <= COMPACT_MAX:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create(h5py.h5s.SCALAR) if shape == () else h5py.h5s.create_simple(shape)
        dsid = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl)
        ds = h5py.Dataset(dsid)
        if data is not None and nbytes:
            ds[()] = data
        return ds
    if shape == ():
        raise ValueError(f"{name}: a scalar cannot be extendable")
    maxshape = (None,) + shape[1:] if extendable else shape
    chunk_shape = (256,) + shape[1:] if extendable and len(shape) == 1 else shape
    chunks = _chunks(chunk_shape, dtype.itemsize, leading=extendable and len(shape) > 1)
    return group.create_dataset(name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks,
                                fletcher32=True, data=data)


def _protected(ds: h5py.Dataset) -> bool:
    layout = ds.id.get_create_plist().get_layout()
    return layout == h5py.h5d.COMPACT or (layout == h5py.h5d.CHUNKED and bool(ds.fletcher32))


def _append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + rows.shape[0], axis=0)
    ds[n:] = rows


# ----------------------------------------------------------------------------- checksums


def _canonical(value) -> bytes:
    """Bytes that identify an attribute or array value (dtype, shape, contents)."""
    if isinstance(value, (str, bytes)):
        return b"s:" + as_text(value).encode("utf-8", "surrogateescape")
    a = np.asarray(value)
    if a.dtype.kind in "OSU":
        return b"S:" + repr([as_text(v) for v in a.ravel().tolist()]).encode("utf-8", "surrogateescape")
    return f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()


def _digest(items) -> str:
    h = hashlib.sha256()
    for name, value in items:
        data = _canonical(value)
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _attrs_digest(f: h5py.File) -> str:
    return _digest((k, f.attrs[k]) for k in sorted(f.attrs) if k not in MUTABLE_ATTRS)


def _state_digest(group: h5py.Group) -> str:
    return _digest((k, group[k][()]) for k in sorted(group) if isinstance(group[k], h5py.Dataset))


def _data_digest(f: h5py.File) -> str:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return _digest((name, f[name][()]) for name in sorted(names))


def seal(f: h5py.File, data: bool = False) -> None:
    """Write the SHA-256 checksums (root attributes; /state if present) of an open file;
    with ``data`` also ``data_sha256``, over every dataset (small files: study, compare)."""
    if data:
        f.attrs["data_sha256"] = _data_digest(f)
    f.attrs["attrs_sha256"] = _attrs_digest(f)
    if isinstance(f.get("state"), h5py.Group):
        f["state"].attrs["sha256"] = _state_digest(f["state"])


# ----------------------------------------------------------------------------- commits


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def commit_h5(path: str, update: Callable[[h5py.File], None], *, fresh: bool = False,
              durable: bool = True, seal_data: bool = False) -> None:
    """Replace ``path`` atomically by a new version (module docstring, "Crash consistency").

    ``update(f)`` edits the new version (opened with h5py): a copy of the
    current file, or an empty file when ``fresh``. The version is then sealed
    (``seal``; ``seal_data``: every dataset too), closed, fsync-ed (``durable``) and renamed
    over ``path``.
    Whatever happens -- an exception, a signal, a kill -- ``path`` is the old
    version or the new one, never a mixture; the temporary is removed on errors.
    """
    from ._dims import label_dimensions  # here, not at the top: _dims imports as_text

    path = os.path.abspath(path)
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    with critical():
        try:
            if fresh:
                f = h5py.File(tmp, "w", libver=LIBVER)
            else:
                shutil.copyfile(path, tmp)
                f = h5py.File(tmp, "r+", libver=LIBVER)
            with f:
                update(f)
                label_dimensions(f)  # named dimensions for xarray
                seal(f, data=seal_data)
            if durable:
                _fsync_path(tmp)
            os.replace(tmp, path)
            if durable:
                _fsync_path(folder, directory=True)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


class RunWriter:
    """Writes one run file by checkpoints (module docstring): records wait in memory and
    each ``commit`` writes them, the latest state and the attributes as one new version.

    Thread-safe: the CLI's signal watcher may commit (as "interrupted") while the
    main thread is stuck in a long compiled computation.
    """

    def __init__(self, path: str, *, name: str, history: tuple[str, ...],
                 checkpoint_every: float = 10.0, durable: bool = True):
        self.path = os.path.abspath(path)
        self.name = name
        self.history = ("s",) + tuple(history) + ("wall_time",)
        self.checkpoint_every = float(checkpoint_every)
        self.durable = durable
        self.status = "running"
        self._rows: list[dict] = []
        self._snaps: list[tuple[float, np.ndarray]] = []
        self._state: Callable[[], tuple] | None = None
        self._attrs: dict = {}
        self._final: np.ndarray | None = None
        self._truncate: tuple[int, int] | None = None
        self._last = time.monotonic()
        self._cost = 0.0
        self._mutex = threading.RLock()
        self.commits = 0

    @classmethod
    def create(cls, path: str, *, config_text: str, seed: int, x: np.ndarray, y: np.ndarray,
               name: str, measure0: np.ndarray, key: np.ndarray, history: tuple[str, ...],
               arrays: dict | None = None, attrs: dict | None = None,
               checkpoint_every: float = 10.0, durable: bool = True) -> RunWriter:
        """Write the first version of a run file (no records, state at step 0; replaces any
        old file) and return its writer. The caller holds the ``OutputLock``.

        ``name`` is the snapshot array's name (``theta`` or ``rho``), ``history``
        the recorded scalars besides s and wall_time, ``arrays`` fixed datasets by
        path (e.g. ``{"grid/t": ...}``).
        """
        import jax

        from . import __version__

        self = cls(path, name=name, history=history, checkpoint_every=checkpoint_every,
                   durable=durable)
        measure0 = np.asarray(measure0)

        def build(f):
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["wflow_version"] = __version__
            f.attrs["config"] = config_text
            f.attrs["status"] = "running"
            f.attrs["seed"] = int(seed)
            f.attrs["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
            f.attrs["jax_version"] = jax.__version__
            f.attrs["backend"] = jax.default_backend()
            f.attrs["wall_time"] = 0.0
            for attr, value in (attrs or {}).items():
                f.attrs[attr] = value
            h = f.create_group("history")
            for column in self.history:
                create_array(h, column, shape=(0,), dtype="f8", extendable=True)
            snap = f.create_group("snapshots")
            create_array(snap, "s", shape=(0,), dtype="f8", extendable=True)
            create_array(snap, name, shape=(0,) + measure0.shape, dtype=measure0.dtype,
                         extendable=True)
            d = f.create_group("data")
            create_array(d, "x", np.asarray(x))
            create_array(d, "y", np.asarray(y))
            for where, value in (arrays or {}).items():
                group, _, leaf = where.rpartition("/")
                create_array(f.require_group(group) if group else f, leaf, np.asarray(value))
            st = f.create_group("state")
            create_array(st, name, measure0)
            create_array(st, "step", np.int64(0))
            create_array(st, "key", np.asarray(key, np.uint32))

        commit_h5(self.path, build, fresh=True, durable=durable)
        self.commits += 1
        return self

    @classmethod
    def resume(cls, path: str, *, name: str, history: tuple[str, ...], n_history: int,
               n_snapshots: int, checkpoint_every: float = 10.0,
               durable: bool = True) -> RunWriter:
        """A writer continuing an existing, verified file; records past ``n_history`` /
        ``n_snapshots`` (written by an older wflow after its last state) are dropped
        by the first commit."""
        self = cls(path, name=name, history=history, checkpoint_every=checkpoint_every,
                   durable=durable)
        self._truncate = (n_history, n_snapshots)
        return self

    # --- what a record adds

    def add(self, *, history: dict | None = None, snapshot: tuple[float, np.ndarray] | None = None,
            state: Callable[[], tuple] | None = None) -> None:
        """Queue one record: ``history`` maps every column (s, ..., wall_time) to a float,
        ``snapshot`` is (s, array), ``state()`` returns (array, step, key) when committed."""
        with self._mutex:
            if history is not None:
                self._rows.append({c: float(history[c]) for c in self.history})
                self._attrs["wall_time"] = float(history["wall_time"])
            if snapshot is not None:
                self._snaps.append((float(snapshot[0]), np.asarray(snapshot[1])))
            if state is not None:
                self._state = state

    def set_attr(self, name: str, value) -> None:
        """Set a root attribute at the next commit."""
        with self._mutex:
            self._attrs[name] = value

    def set_final(self, prediction: np.ndarray) -> None:
        with self._mutex:
            self._final = np.asarray(prediction)

    def due(self) -> bool:
        """Is a checkpoint due (``checkpoint_every`` and the 5% cost bound)?"""
        if self.checkpoint_every <= 0:
            return True
        wait = max(self.checkpoint_every, COMMIT_COST_FACTOR * self._cost)
        return time.monotonic() - self._last >= wait

    def commit(self, status: str | None = None) -> None:
        """Write everything queued (and ``status``) as one new version of the file."""
        with self._mutex, critical():
            t0 = time.monotonic()
            rows, snaps, attrs = list(self._rows), list(self._snaps), dict(self._attrs)
            state = self._state() if self._state is not None else None
            final, truncate = self._final, self._truncate
            new_status = status or self.status

            def update(f):
                if truncate is not None:
                    n_hist, n_snap = truncate
                    for column in self.history:
                        f[f"history/{column}"].resize(n_hist, axis=0)
                    f["snapshots/s"].resize(n_snap, axis=0)
                    f[f"snapshots/{self.name}"].resize(n_snap, axis=0)
                    if "final" in f:
                        del f["final"]
                if rows:
                    for column in self.history:
                        _append(f[f"history/{column}"],
                                np.asarray([r[column] for r in rows], np.float64))
                if snaps:
                    _append(f["snapshots/s"], np.asarray([s for s, _ in snaps], np.float64))
                    _append(f[f"snapshots/{self.name}"], np.stack([a for _, a in snaps]))
                if state is not None:
                    array, step, key = state
                    f[f"state/{self.name}"][...] = np.asarray(array)
                    f["state/step"][()] = np.int64(step)
                    f["state/key"][...] = np.asarray(key, np.uint32)
                if final is not None:
                    if "final" in f:
                        del f["final"]
                    create_array(f.create_group("final"), "prediction", final)
                for k, v in attrs.items():
                    f.attrs[k] = v
                f.attrs["status"] = new_status

            try:
                commit_h5(self.path, update, durable=self.durable)
            except OSError as e:
                raise RunFileError(f"output.path = {self.path!r}: could not write a checkpoint "
                                   f"({e.strerror or _one_line(e)}); the file keeps its previous "
                                   "checkpoint") from None
            self._rows.clear()
            self._snaps.clear()
            self._attrs.clear()
            self._truncate = None
            self.status = new_status
            self.commits += 1
            self._last = time.monotonic()
            self._cost = self._last - t0


# ----------------------------------------------------------------------------- reading


def check_run_file(path: str) -> dict:
    """Root attributes of a wflow run file; ``RunFileError`` naming the file otherwise.

    Only opens the file and checks ``format`` / ``format_version``; ``verify_run``
    checks everything.
    """
    return check_format(path, FORMAT, FORMAT_VERSION, "run", RunFileError)


def check_format(path: str, fmt: str, version_max: int, kind: str,
                 error: type[Exception]) -> dict:
    """Root attributes (text decoded) of a wflow HDF5 file whose ``format`` is ``fmt`` and
    ``format_version`` an integer <= ``version_max``; else ``error`` naming the file (the run,
    study and compare files share this check; ``kind`` names the file in messages)."""
    if not os.path.exists(path):
        raise error(f"{path}: file not found")
    if not os.path.isfile(path):
        raise error(f"{path}: not a regular file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (as_text(v) if isinstance(v, (str, bytes)) else v) for k, v in f.attrs.items()}
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise error(f"{path}: not a readable HDF5 file ({_one_line(e)})") from None
    if attrs.get("format") != fmt:
        raise error(f"{path}: not a wflow {kind} file (root attribute format = "
                    f"{attrs.get('format')!r}, expected {fmt!r})")
    version = attrs.get("format_version", 0)
    try:
        if isinstance(version, (str, bytes)) or np.asarray(version).shape != ():
            raise TypeError
        version = int(version)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{path}: format_version = {version!r} is not an integer") from None
    if version > version_max:
        raise error(f"{path}: format_version {version} is newer than this "
                    f"wflow understands ({version_max})")
    return attrs


def _is_resolved(config: dict) -> bool:
    """A full resolved config as wflow writes it (hand-written files may store less)."""
    return all(isinstance(config.get(s), dict)
               for s in ("data", "model", "init", "solver", "train", "output"))


def _expected_k(model: dict, tokens: int | None = None) -> int | None:
    """k of the stored config's block; None when it cannot be built here (a user's block
    whose file is gone, a hand-written config)."""
    from ._model import feature_k

    try:
        return feature_k(model, tokens=tokens)
    except (KeyError, TypeError, ValueError):
        return None


class _Reader:
    """Reads and checks one open run file; every problem is a RunFileError naming a dataset."""

    def __init__(self, path: str, f: h5py.File, out: dict | None = None):
        self.path, self.f = path, f
        self.out = {} if out is None else out  # the arrays read so far, by path
        self.sealed = False  # written (and sealed) by wflow: every dataset has a checksum

    def fail(self, what: str, problem: str) -> RunFileError:
        return RunFileError(f"{self.path}: {what} {problem}")

    def dataset(self, name: str, required: bool = True) -> h5py.Dataset | None:
        try:
            obj = self.f.get(name)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise self.fail(f"/{name}", f"is damaged ({_one_line(e)})") from None
        if obj is None:
            if required:
                raise self.fail(f"/{name}", "is missing")
            return None
        if not isinstance(obj, h5py.Dataset):
            raise self.fail(f"/{name}", "is not a dataset")
        return obj

    def read(self, ds: h5py.Dataset) -> np.ndarray:
        name = ds.name
        if self.sealed and not _protected(ds):
            raise self.fail(name, "has no checksum (contiguous layout without fletcher32): "
                            "the file was edited by something other than wflow")
        try:
            return np.asarray(ds[()])
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            raise self.fail(name, f"is damaged: its data cannot be read ({_one_line(e)})") from None

    def numeric(self, name: str, a: np.ndarray, ndim: int | None, *, integer=False) -> np.ndarray:
        kinds = "iu" if integer else "fiu"
        if a.dtype.kind not in kinds:
            raise self.fail(f"/{name}", f"has dtype {a.dtype}, expected "
                            f"{'an integer' if integer else 'a real number'} type")
        if ndim is not None and a.ndim != ndim:
            raise self.fail(f"/{name}", f"has shape {a.shape}, expected {ndim} dimension(s)")
        return a

    # -- the parts of a run file, in reading order (``_read_open``)

    def root(self, attrs: dict) -> tuple[dict, dict]:
        """(raw root attributes, stored config); checks the seal, status and numbers."""
        f, path = self.f, self.path
        raw_attrs = {}
        try:
            for k in f.attrs:
                raw_attrs[k] = f.attrs[k]
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise RunFileError(f"{path}: the root attributes are damaged "
                               f"({_one_line(e)})") from None
        self.sealed = "attrs_sha256" in raw_attrs
        if self.sealed and as_text(raw_attrs["attrs_sha256"]) != _attrs_digest(f):
            raise RunFileError(f"{path}: the root attributes (config, seed, ...) are damaged: "
                               "their checksum attrs_sha256 does not match")
        status = attrs.get("status")
        if not isinstance(status, str) or status not in STATUSES:
            raise RunFileError(f"{path}: root attribute status = {status!r}; expected one of "
                               f"{', '.join(STATUSES)}")
        try:
            config = tomllib.loads(as_text(attrs.get("config", "")))
        except (tomllib.TOMLDecodeError, RecursionError):
            if self.sealed:
                raise RunFileError(f"{path}: root attribute config is not valid TOML") from None
            config = {}  # a hand-written file: the config is only used for labels
        for name in ("initial_loss", "wall_time"):
            if name in attrs:
                v = np.asarray(attrs[name])
                if v.shape != () or v.dtype.kind not in "fiu":
                    raise RunFileError(f"{path}: root attribute {name} = {attrs[name]!r} is not "
                                       "a number")

        return raw_attrs, config

    def history(self) -> None:
        """/history: 1-D real columns of one length."""
        hist = self.f.get("history")
        if not isinstance(hist, h5py.Group) or "s" not in hist or "loss" not in hist:
            raise self.fail("/history", "is missing or lacks s and loss")
        n = None
        for column in list(hist):
            name = f"history/{column}"
            a = self.numeric(name, self.read(self.dataset(name)), 1)
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise self.fail(f"/{name}", f"has {a.shape[0]} rows, /history/{next(iter(hist))} "
                                f"has {n}")
            self.out[name] = a

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """/data/x, /data/y and /final/prediction."""
        x = self.numeric("data/x", self.read(self.dataset("data/x")), 2)
        y = self.numeric("data/y", self.read(self.dataset("data/y")), 2)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0 or 0 in x.shape or 0 in y.shape:
            raise self.fail("/data/x and /data/y", f"have shapes {x.shape} and {y.shape}, expected "
                            "(N, d_in) and (N, d_out) with N, d_in, d_out >= 1")
        self.out["data/x"], self.out["data/y"] = x, y
        pred = self.dataset("final/prediction", required=False)
        if pred is not None:
            p = self.numeric("final/prediction", self.read(pred), 2)
            if p.shape != y.shape:
                raise self.fail("/final/prediction", f"has shape {p.shape}, expected {y.shape} "
                                "(the shape of /data/y)")
            self.out["final/prediction"] = p
        return x, y

    def snapshots(self, all_snapshots: bool) -> tuple[str | None, tuple | None]:
        """/snapshots: one array (theta or rho) and its times; (name, shape of one)."""
        snaps = self.f.get("snapshots")
        name = None
        if isinstance(snaps, h5py.Group):
            names = [k for k in snaps if k != "s"]
            if len(names) > 1:
                raise self.fail("/snapshots", f"holds {names}, expected one snapshot array")
            name = names[0] if names else None
        snap_shape = None
        if name is not None:
            ds = self.dataset(f"snapshots/{name}")
            s_ds = self.dataset("snapshots/s", required=False)
            if ds.ndim < 2 or 0 in ds.shape[1:]:
                raise self.fail(f"/snapshots/{name}", f"has shape {ds.shape}, expected "
                                "(n_snap, ...) with every dimension after the first >= 1")
            snap_shape = ds.shape[1:]
            if s_ds is not None:
                s = self.numeric("snapshots/s", self.read(s_ds), 1)
                if s.shape[0] != ds.shape[0]:
                    raise self.fail("/snapshots/s", f"has {s.shape[0]} entries, /snapshots/{name} "
                                    f"holds {ds.shape[0]} snapshots")
                self.out["snapshots/s"] = s
            if all_snapshots or ds.shape[0] <= 2:
                a = self.read(ds)
            else:  # only the first and last (plots): still read through the checksums
                try:
                    a = np.stack([ds[0], ds[-1]])
                except (OSError, ValueError, RuntimeError) as e:
                    raise self.fail(ds.name, f"is damaged: its data cannot be read "
                                    f"({_one_line(e)})") from None
            self.out[f"snapshots/{name}"] = self.numeric(f"snapshots/{name}", a, None)
            if name == "theta" and ds.ndim != 4:
                raise self.fail("/snapshots/theta", f"has shape {ds.shape}, expected "
                                "(n_snap, L, M, k)")
        return name, snap_shape

    def state(self, name: str | None, snap_shape) -> None:
        """/state: the resumable state, with its own checksum."""
        state = self.f.get("state")
        if isinstance(state, h5py.Group):
            names = [k for k in state if k not in ("step", "key")]
            if len(names) != 1:
                raise self.fail("/state", f"holds {sorted(state)}, expected <name>, step and key")
            sname = names[0]
            arr = self.numeric(f"state/{sname}", self.read(self.dataset(f"state/{sname}")), None)
            if name is not None and (sname != name or arr.shape != snap_shape):
                raise self.fail(f"/state/{sname}", f"has shape {arr.shape}, the snapshots "
                                f"/snapshots/{name} have {snap_shape}")
            step = self.numeric("state/step", self.read(self.dataset("state/step")), 0,
                             integer=True)
            if int(step) < 0:
                raise self.fail("/state/step", f"= {int(step)} is negative")
            key = self.read(self.dataset("state/key"))
            if key.shape != (2,) or key.dtype != np.uint32:
                raise self.fail("/state/key", f"has shape {key.shape} and dtype {key.dtype}, "
                                "expected (2,) uint32")
            if self.sealed:
                stored = state.attrs.get("sha256")
                if stored is None or as_text(stored) != _state_digest(state):
                    raise self.fail("/state", "is damaged: its checksum sha256 does not match "
                                    "(the resumable state cannot be trusted)")
            self.out[f"state/{sname}"] = arr
            self.out["state/step"], self.out["state/key"] = step, key

    def complete(self, name: str | None) -> None:
        """A sealed file (written by wflow) has every part of a run file."""
        if self.sealed:  # written by wflow: every part of a run file must be there
            wanted = ["snapshots/s", "state/step", "state/key"]
            wanted += [f"snapshots/{name}"] if name is not None else ["snapshots/<theta or rho>"]
            wanted += [k for k in self.out if k.startswith("state/")] or ["state/<theta or rho>"]
            missing = [w for w in wanted if w not in self.out]
            if missing:
                raise self.fail(f"/{missing[0]}", "is missing (the file was written by wflow: it "
                                "has been edited or damaged)")

    def rest(self) -> None:
        """Any further fixed arrays (grid axes, ...)."""
        path = self.path

        def visit(path_, obj):
            if isinstance(obj, h5py.Dataset) and path_ not in self.out and not any(
                    path_.startswith(p) for p in ("snapshots/",)):
                self.out[path_] = self.read(obj)

        try:
            self.f.visititems(visit)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise RunFileError(f"{path}: the file's structure is damaged "
                               f"({_one_line(e)})") from None

    def consistent(self, config: dict, x: np.ndarray, y: np.ndarray) -> None:
        """Shapes against the stored (resolved) config."""
        if _is_resolved(config) and config["solver"].get("kind", "particles") == "particles":
            solver, model, data = config["solver"], config["model"], config["data"]
            tokens = data.get("tokens")
            k = _expected_k(model, tokens)
            want = (solver.get("L"), solver.get("M"), k)
            for where in ("snapshots/theta", "state/theta"):
                got = self.out[where].shape[-3:] if where in self.out else None
                if got is not None and got != want and (k is not None or got[:2] != want[:2]):
                    raise self.fail(f"/{where}", f"has shape {self.out[where].shape}, the "
                                    f"stored config needs (..., L, M, k) = {want}")
            width = data.get("dim") if tokens is None else tokens * data.get("dim", 0)
            if x.shape != (data.get("n"), width):
                names = ("(data.n, data.dim)" if tokens is None
                         else "(data.n, data.tokens x data.dim)")
                raise self.fail("/data/x", f"has shape {x.shape}, the stored config has "
                                f"{names} = ({data.get('n')}, {width})")
            if y.shape[1] != data.get("out_dim", y.shape[1]):
                raise self.fail("/data/y", f"has {y.shape[1]} columns, the stored config has "
                                f"data.out_dim = {data.get('out_dim')}")


def _read_checked(path: str, *, all_snapshots: bool = True) -> tuple[dict, dict]:
    """(attrs, arrays) of a run file after every check (``verify_run``)."""
    attrs = check_run_file(path)
    out: dict = {}
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise RunFileError(f"{path}: not a readable HDF5 file ({_one_line(e)})") from None
    try:
        return _read_open(path, f, attrs, out, all_snapshots)
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        # HDF5 found damage below the checks (an attribute heap, an object header): the
        # file cannot be trusted, whatever part it was
        raise RunFileError(f"{path}: the file is damaged: {_one_line(e)}") from None


def _read_open(path: str, f: h5py.File, attrs: dict, out: dict, all_snapshots: bool):
    """The body of ``_read_checked`` on the open file ``f`` (closed on return)."""
    with f:
        r = _Reader(path, f, out)
        raw_attrs, config = r.root(attrs)
        r.history()
        x, y = r.data()
        name, snap_shape = r.snapshots(all_snapshots)
        r.state(name, snap_shape)
        if r.sealed:
            r.complete(name)
        r.rest()
        r.consistent(config, x, y)
    clean = {k: (as_text(v) if isinstance(v, (str, bytes)) else v) for k, v in raw_attrs.items()}
    return clean, out


def verify_run(path: str) -> dict:
    """Check a whole run file (format, checksums, shapes, dtypes, consistency with its config).

    Returns the root attributes; raises ``RunFileError`` with one line naming the
    damaged or inconsistent dataset.
    """
    return _read_checked(path)[0]


def verify_file(path: str) -> None:
    """Read every dataset of any HDF5 file written with ``commit_h5`` (fletcher32 and the
    object-header checksums fire on damage) and check its SHA-256 attributes."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise RunFileError(f"{path}: not a readable HDF5 file ({_one_line(e)})") from None
    with f:
        try:
            sealed = "attrs_sha256" in f.attrs
            if sealed and as_text(f.attrs["attrs_sha256"]) != _attrs_digest(f):
                raise RunFileError(f"{path}: the root attributes are damaged (their checksum "
                                   "attrs_sha256 does not match)")
            if "data_sha256" in f.attrs and as_text(f.attrs["data_sha256"]) != _data_digest(f):
                raise RunFileError(f"{path}: the file's data are damaged (their checksum "
                                   "data_sha256 does not match)")
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            if isinstance(e, RunFileError):
                raise
            raise RunFileError(f"{path}: the file is damaged ({_one_line(e)})") from None

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                try:
                    obj[()]
                except (OSError, ValueError, RuntimeError) as e:
                    raise RunFileError(f"{path}: /{name} is damaged ({_one_line(e)})") from None

        try:
            f.visititems(visit)
        except (OSError, KeyError, RuntimeError) as e:
            raise RunFileError(f"{path}: the file's structure is damaged "
                               f"({_one_line(e)})") from None


def read_run(path: str) -> dict:
    """Read a whole run file into a dict: ``attrs`` and one entry per dataset path.

    Example keys: ``"history/loss"``, ``"snapshots/theta"``, ``"state/step"``.
    Everything is verified first (``verify_run``): a missing, foreign, damaged or
    inconsistent file raises ``RunFileError`` (one line naming the dataset).
    """
    attrs, arrays = _read_checked(path)
    return {"attrs": attrs, **arrays}
