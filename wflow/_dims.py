"""Named dimensions for wflow's HDF5 files, so that xarray opens them as they are.

Every version of a run, study or compare file is labelled while it is committed
(``_io.commit_h5`` calls ``label_dimensions`` before sealing): HDF5 dimension
scales are attached to the arrays, so that

    xarray.open_datatree(path, engine="h5netcdf")

gives named dimensions and coordinates. A dimension's name is the name of its
scale dataset (as netCDF and h5netcdf read them):

* run files: ``/history/*`` along ``s`` (the scale is ``/history/s`` itself);
  ``/snapshots/theta`` (snapshot, layer, particle, coord), ``/snapshots/rho``
  (snapshot, layer, cell_0, ...), ``/snapshots/s`` (snapshot); ``/state/theta``
  (layer, particle, coord), ``/state/rho`` (layer, cell_0, ...), ``/state/key`` (rng_key),
  ``/grid/t`` (layer),
  ``/grid/axis_a`` (cell_a); ``/data/x`` (sample, in), ``/data/y`` and
  ``/final/prediction`` (sample, out), the held-out ``/data/x_test``, ``/data/y_test``
  (test_sample, in | out);
* study files: ``/errors/<metric>``, ``/values/loss`` (L, M[, D], seed, time),
  ``/done`` (L, M[, D], seed), ``/fit/<metric>/rms``, ``rms_err``, ``below_floor``
  (L, M[, D], time), every other 1-D ``/fit`` array and ``/reference/floor/<metric>``
  (time), the slopes ``slope_L`` (time, M[, D]), ``slope_M`` (time, L[, D]), ``slope_D``
  (time, L, M) and their ``_err``, the fixed-exponent model ``model``, ``model_err``
  (time, term), the free-exponent fit ``free``, ``theory_inside`` (time, param) and
  ``free_ci`` (time, param, bound), the reference's loss (seed, time) and prediction
  (seed, time, sample, out),
  ``/study/L``, ``M``, ``dims``, ``times``, ``seeds``; zero-loss runs ``/runs/<init>/history/*``
  along ``s``;
* compare files: every run group's 1-D records along its own ``s``, its predictions
  (sample, out) and (test_sample, out).

The scales that are not data of the file (``snapshot``, ``layer``, ``particle``,
``coord``, ``sample``, ``in``, ``out``, ``test_sample``, ``cell_a``, ``L``, ``M``, ``D``,
``seed``, ``time``, ``rng_key``, ``term``, ``param``, ``bound``) are small datasets at the
root holding the coordinate values: indices, the grid's depth times and cell centres, the
study's L, M, D and times, and the names of a study's fit parameters (``term``: a, b[, c];
``param``: the ``params`` attribute of ``free``, a, p, b, q[, c, r]; ``bound``: lower, upper).
Arrays whose shape does not match are left unlabelled (h5netcdf then names their
dimensions ``phony_dim_*``); nothing here changes an array's data.
"""

from __future__ import annotations

import h5py
import numpy as np

from ._io import as_text

__all__ = ["label_dimensions", "open_run"]


class _Labeller:
    def __init__(self, f: h5py.File):
        self.f = f

    def scale(self, name: str, values) -> h5py.Dataset:
        """The root scale ``name`` holding ``values`` (created, or resized and refreshed: a
        scale is never deleted, since arrays refer to it)."""
        values = np.asarray(values)
        ds = self.f.get(name)
        if not isinstance(ds, h5py.Dataset):
            ds = self.f.create_dataset(name, data=values, maxshape=(None,),
                                       chunks=(max(1, min(len(values), 4096)),), fletcher32=True)
            ds.make_scale(name)
            return ds
        if ds.shape != values.shape:
            ds.resize(values.shape)
        if len(values) and not np.array_equal(ds[()], values):
            ds[...] = values
        return ds

    def index(self, name: str, n: int) -> h5py.Dataset:
        return self.scale(name, np.arange(n, dtype=np.int64))

    def attach(self, path: str, scales: list) -> None:
        """Attach ``scales`` (datasets, one per axis) to the dataset at ``path`` if its shape
        matches them; an axis already labelled is left as it is."""
        ds = self.f.get(path)
        if not isinstance(ds, h5py.Dataset) or ds.ndim != len(scales):
            return
        if any(ds.shape[i] != sc.shape[0] for i, sc in enumerate(scales)):
            return
        for i, sc in enumerate(scales):
            if len(ds.dims[i]) == 0:
                ds.dims[i].attach_scale(sc)

    def along_s(self, group_path: str) -> None:
        """Every 1-D dataset of a group along its own ``s`` (the dataset ``s`` of the group)."""
        g = self.f.get(group_path)
        if not isinstance(g, h5py.Group) or not isinstance(g.get("s"), h5py.Dataset):
            return
        s = g["s"]
        if s.ndim != 1:
            return
        if not s.is_scale:
            s.make_scale("s")
        for name, ds in g.items():
            if name != "s" and isinstance(ds, h5py.Dataset) and ds.shape[:1] == s.shape \
                    and ds.ndim == 1:
                self.attach(ds.name, [s])

    # -- the three kinds of file

    def data(self) -> tuple | None:
        """/data/x (sample, in), /data/y (sample, out) and the held-out set; returns the
        (sample, out, test_sample) scales, or None."""
        f = self.f
        x, y = f.get("data/x"), f.get("data/y")
        if not (isinstance(x, h5py.Dataset) and isinstance(y, h5py.Dataset)
                and x.ndim == y.ndim == 2):
            return None
        sample, out = self.index("sample", x.shape[0]), self.index("out", y.shape[1])
        inp = self.index("in", x.shape[1])
        self.attach("data/x", [sample, inp])
        self.attach("data/y", [sample, out])
        test = None
        xt = f.get("data/x_test")
        if isinstance(xt, h5py.Dataset) and xt.ndim == 2:
            test = self.index("test_sample", xt.shape[0])
            self.attach("data/x_test", [test, inp])
            self.attach("data/y_test", [test, out])
        return sample, out, test

    def run(self) -> None:
        f = self.f
        self.along_s("history")
        scales = self.data()
        if scales is not None:
            self.attach("final/prediction", scales[:2])
        self.attach("state/key", [self.index("rng_key", 2)])  # the Langevin PRNG key's 2 words
        state = f.get("state")
        name = next((n for n in ("theta", "rho") if isinstance(state, h5py.Group) and n in state),
                    None)
        if name is None:
            return
        arr = state[name]
        if arr.ndim < 2:
            return
        grid_t = f.get("grid/t")
        if name == "rho" and isinstance(grid_t, h5py.Dataset) and grid_t.shape == arr.shape[:1]:
            layer = self.scale("layer", np.asarray(grid_t[()], np.float64))
        else:
            layer = self.index("layer", arr.shape[0])
        if name == "theta":
            if arr.ndim != 3:
                return
            rest = [self.index("particle", arr.shape[1]), self.index("coord", arr.shape[2])]
        else:
            rest = []
            for a, n in enumerate(arr.shape[1:]):
                axis = f.get(f"grid/axis_{a}")
                values = (np.asarray(axis[()], np.float64)
                          if isinstance(axis, h5py.Dataset) and axis.shape == (n,)
                          else np.arange(n, dtype=np.float64))
                rest.append(self.scale(f"cell_{a}", values))
        self.attach(f"state/{name}", [layer, *rest])
        if name == "rho":
            self.attach("grid/t", [layer])
            for a, sc in enumerate(rest):
                self.attach(f"grid/axis_{a}", [sc])
        snap = f.get(f"snapshots/{name}")
        if isinstance(snap, h5py.Dataset):
            snapshot = self.index("snapshot", snap.shape[0])
            self.attach(f"snapshots/{name}", [snapshot, layer, *rest])
            self.attach("snapshots/s", [snapshot])
            snap.attrs["coordinates"] = "s"  # /snapshots/s: the training time of each snapshot

    def study(self) -> None:
        f = self.f
        L, M = f.get("study/L"), f.get("study/M")
        times, seeds = f.get("study/times"), f.get("study/seeds")
        for name in ("runs",):
            runs = f.get(name)
            if isinstance(runs, h5py.Group):
                for init in runs:
                    self.along_s(f"runs/{init}/history")
        if not all(isinstance(d, h5py.Dataset) for d in (L, M, times, seeds)):
            return
        grid = [self.scale("L", np.asarray(L[()])), self.scale("M", np.asarray(M[()]))]
        dims = f.get("study/dims")
        if isinstance(dims, h5py.Dataset):
            grid.append(self.scale("D", np.asarray(dims[()])))
        seed = self.scale("seed", np.asarray(seeds[()]))
        time = self.scale("time", np.asarray(times[()], np.float64))
        for group in ("errors", "values"):
            g = f.get(group)
            if isinstance(g, h5py.Group):
                for metric in g:
                    self.attach(f"{group}/{metric}", [*grid, seed, time])
        self.attach("done", [*grid, seed])
        fit = f.get("fit")
        if isinstance(fit, h5py.Group):
            for metric in fit:
                for name in ("rms", "rms_err", "below_floor"):
                    self.attach(f"fit/{metric}/{name}", [*grid, time])
        floor = f.get("reference/floor")
        if isinstance(floor, h5py.Group):
            for metric in floor:
                self.attach(f"reference/floor/{metric}", [time])
        for path, scale in (("study/L", grid[0]), ("study/M", grid[1]), ("study/times", time),
                            ("study/seeds", seed), ("reference/done", seed)):
            self.attach(path, [scale])
        if len(grid) == 3:
            self.attach("study/dims", [grid[2]])
        self.attach("reference/loss", [seed, time])
        self.attach("reference/loss", [*grid, seed, time])
        if isinstance(fit, h5py.Group):  # the per-time summaries of every fit
            for metric, g in fit.items():
                for name, ds in g.items():
                    if isinstance(ds, h5py.Dataset) and ds.ndim == 1:
                        self.attach(ds.name, [time])
                self.fits(g, grid, time)
        scales = self.data()
        if scales is not None:
            self.attach("reference/prediction", [seed, time, *scales[:2]])

    def fits(self, g: h5py.Group, grid: list, time: h5py.Dataset) -> None:
        """One metric's slopes (time, the other swept axes), fixed-exponent model (time, term),
        free-exponent fit (time, param) and its 95% interval (time, param, bound)."""
        rest = {"slope_L": grid[1:], "slope_M": [grid[0], *grid[2:]], "slope_D": grid[:2]}
        for name, axes in rest.items():
            if len(grid) == 3 or name != "slope_D":
                for suffix in ("", "_err"):
                    self.attach(f"{g.name}/{name}{suffix}", [time, *axes])
        model = g.get("model")
        if isinstance(model, h5py.Dataset) and model.ndim == 2:
            term = self.strings("term", "abc"[:model.shape[1]])
            for name in ("model", "model_err") if term is not None else ():
                self.attach(f"{g.name}/{name}", [time, term])
        free = g.get("free")
        names = free.attrs.get("params") if isinstance(free, h5py.Dataset) else None
        if names is None or free.ndim != 2 or len(names) != free.shape[1]:
            return
        param = self.strings("param", [as_text(n) for n in names])
        bound = self.strings("bound", ["lower", "upper"])
        if param is None or bound is None:
            return
        for name in ("free", "free_se", "theory_inside"):
            if name in g:
                self.attach(f"{g.name}/{name}", [time, param])
        self.attach(f"{g.name}/free_ci", [time, param, bound])

    def strings(self, name: str, values) -> h5py.Dataset | None:
        """A root scale of names (a study's fit parameters), created or found holding them;
        None if ``/name`` exists and holds something else (the arrays then stay unlabelled)."""
        values = [str(v) for v in values]
        ds = self.f.get(name)
        if ds is None:
            ds = self.f.create_dataset(name, data=np.array(values, dtype=h5py.string_dtype()))
            ds.make_scale(name)
            return ds
        if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.dtype.kind == "O" \
                and [as_text(v) for v in ds[()]] == values:
            return ds
        return None

    def compare(self) -> None:
        scales = self.data()
        for name, g in self.f.items():
            if isinstance(g, h5py.Group):
                self.along_s(name)
                if scales is not None:
                    self.attach(f"{name}/prediction", scales[:2])
                    if scales[2] is not None:
                        self.attach(f"{name}/test_prediction", [scales[2], scales[1]])


def label_dimensions(f: h5py.File) -> None:
    """Attach named dimension scales to a wflow run, study or compare file open for writing
    (module docstring); other files are left alone."""
    kind = as_text(f.attrs.get("format", ""))
    labeller = _Labeller(f)
    if kind == "wflow-run":
        labeller.run()
    elif kind == "wflow-study":
        labeller.study()
    elif kind == "wflow-compare":
        labeller.compare()


def open_run(path):
    """A wflow run, study or compare file as an ``xarray.DataTree`` with named dimensions,
    after verifying its checksums (a damaged file raises ``ValueError`` with one line).

    Example: ``wflow.open_run("runs/quickstart.h5")["history"].to_dataset()["loss"]``.
    """
    import os

    import xarray as xr

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            kind = as_text(f.attrs.get("format", ""))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())})") \
            from None
    if kind == "wflow-run":
        from ._io import verify_run

        verify_run(path)
    elif kind == "wflow-study":
        from .study._file import read_study

        read_study(path)
    elif kind == "wflow-compare":
        from ._compare import check_compare_file

        check_compare_file(path)
    else:
        raise ValueError(f"{path}: not a wflow run, study or compare file (format = {kind!r})")
    return xr.open_datatree(path, engine="h5netcdf", phony_dims="access")
