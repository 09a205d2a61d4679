"""The HDF5 run file (SPEC §3): an append-only writer and a reader.

Layout (names are the contract)::

    /                   attrs: format = "wflow-run", format_version = 1, wflow_version,
                               config (resolved config, TOML text), status, seed,
                               created_utc, jax_version, backend,
                               initial_loss (E at s = 0), wall_time (seconds so far)
    /history/s, <the flow's history names>, wall_time
                                                 (n,)  float64, appended per record
                                                 (particles: loss, stationarity)
    /snapshots/s                                 (n_snap,)
    /snapshots/<name>                            (n_snap, ...)  run precision; particles:
                                                 theta (n_snap, L, M, k); grid: rho
    /data/x (N, d_in), /data/y (N, d_out)        run precision
    /final/prediction (N, d_out)                 written when the run completes
    /state/<name>, /state/step (), /state/key (2,) uint32
                                                 what ``--resume`` continues from
    any further fixed arrays of the run (``arrays``, e.g. the grid's axes)

The file is first written complete but empty under a temporary name in the
same folder and then renamed into place, so a reader never sees a half-made
file. During the run every record is appended and the file flushed, and
``status`` is always current: "running" while a process works on it (or died
doing so), then "complete", "diverged" or "interrupted". ``/state`` is updated
at every snapshot and at the end, so even a killed run can be resumed from its
last snapshot.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import h5py
import numpy as np

FORMAT = "wflow-run"
FORMAT_VERSION = 1


class RunFileError(ValueError):
    """A file that is not a readable wflow run file."""


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


class RunWriter:
    """Appends records to an open run file; see the module docstring for the layout."""

    def __init__(self, f: h5py.File):
        self.f = f
        self._datasets: dict[str, h5py.Dataset] = {}
        self.history = tuple(f["history"].keys())
        self.name = next(n for n in f["state"] if n not in ("step", "key"))

    @classmethod
    def create(cls, path: str, *, config_text: str, seed: int, x: np.ndarray, y: np.ndarray,
               name: str, measure0: np.ndarray, key: np.ndarray, history: tuple[str, ...],
               arrays: dict | None = None, attrs: dict | None = None) -> RunWriter:
        """Write a fresh run file at ``path`` (atomically replacing any old one) and open it.

        ``name`` is the snapshot array's name (``theta`` or ``rho``), ``history``
        the recorded scalars besides s and wall_time, ``arrays`` fixed datasets by
        path (e.g. ``{"grid/t": ...}``).
        """
        import jax

        from . import __version__

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        measure0 = np.asarray(measure0)
        try:
            with h5py.File(tmp, "w") as f:
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
                for column in ("s",) + tuple(history) + ("wall_time",):
                    h.create_dataset(column, shape=(0,), maxshape=(None,), dtype="f8",
                                     chunks=(256,))
                snap = f.create_group("snapshots")
                snap.create_dataset("s", shape=(0,), maxshape=(None,), dtype="f8", chunks=(16,))
                snap.create_dataset(name, shape=(0,) + measure0.shape,
                                    maxshape=(None,) + measure0.shape, dtype=measure0.dtype,
                                    chunks=(1,) + measure0.shape)
                d = f.create_group("data")
                d.create_dataset("x", data=np.asarray(x))
                d.create_dataset("y", data=np.asarray(y))
                for where, value in (arrays or {}).items():
                    f.create_dataset(where, data=np.asarray(value))
                st = f.create_group("state")
                st.create_dataset(name, data=measure0)
                st.create_dataset("step", data=np.int64(0))
                st.create_dataset("key", data=np.asarray(key, np.uint32))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return cls(h5py.File(path, "r+"))

    @classmethod
    def reopen(cls, path: str) -> RunWriter:
        """Open an existing run file for appending (``--resume``)."""
        try:
            return cls(h5py.File(path, "r+"))
        except (OSError, ValueError) as e:
            raise RunFileError(f"output.path = {path!r}: cannot be opened for writing "
                               f"(is another wflow process writing it?): {e}") from None

    def _append(self, name: str, value) -> None:
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = self.f[name]
        n = ds.shape[0]
        ds.resize(n + 1, axis=0)
        ds[n] = value

    def append_history(self, values: dict) -> None:
        """Append one record: ``values`` maps every history column (s, ..., wall_time) to a float."""
        for column in self.history:
            self._append(f"history/{column}", values[column])
        self.f.attrs["wall_time"] = float(values["wall_time"])

    def append_snapshot(self, s: float, measure: np.ndarray) -> None:
        self._append("snapshots/s", s)
        self._append(f"snapshots/{self.name}", np.asarray(measure))

    def save_state(self, measure: np.ndarray, step: int, key: np.ndarray) -> None:
        self.f[f"state/{self.name}"][...] = np.asarray(measure)
        self.f["state/step"][()] = np.int64(step)
        self.f["state/key"][...] = np.asarray(key, np.uint32)

    def truncate(self, n_history: int, n_snapshots: int) -> None:
        """Drop records past the state a resumed run continues from."""
        for column in self.history:
            self.f[f"history/{column}"].resize(n_history, axis=0)
        self.f["snapshots/s"].resize(n_snapshots, axis=0)
        self.f[f"snapshots/{self.name}"].resize(n_snapshots, axis=0)
        if "final" in self.f:
            del self.f["final"]

    def write_final(self, prediction: np.ndarray) -> None:
        if "final" in self.f:
            del self.f["final"]
        self.f.create_group("final").create_dataset("prediction", data=np.asarray(prediction))

    def set_attr(self, name: str, value) -> None:
        self.f.attrs[name] = value

    def set_status(self, status: str) -> None:
        self.f.attrs["status"] = status
        self.f.flush()

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_run(path: str) -> dict:
    """Read a whole run file into a dict: ``attrs`` and one entry per dataset path.

    Example keys: ``"history/loss"``, ``"snapshots/theta"``, ``"state/step"``.
    Raises ``RunFileError`` (one line) if the file is missing or not a run file.
    """
    check_run_file(path)
    out: dict = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (_text(v) if isinstance(v, (str, bytes)) else v)
                        for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])

        f.visititems(visit)
    return out


def check_run_file(path: str) -> dict:
    """Root attributes of a wflow run file; ``RunFileError`` naming the file otherwise."""
    if not os.path.isfile(path):
        raise RunFileError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (_text(v) if isinstance(v, (str, bytes)) else v) for k, v in f.attrs.items()}
    except (OSError, ValueError) as e:
        detail = " ".join(str(e).split())  # h5py messages may span lines: keep one line
        raise RunFileError(f"{path}: not a readable HDF5 file ({detail})") from None
    if attrs.get("format") != FORMAT:
        raise RunFileError(f"{path}: not a wflow run file (root attribute format = "
                           f"{attrs.get('format')!r}, expected {FORMAT!r})")
    version = attrs.get("format_version", 0)
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise RunFileError(f"{path}: format_version = {version!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise RunFileError(f"{path}: format_version {version} is newer than this "
                           f"wflow understands ({FORMAT_VERSION})")
    return attrs
