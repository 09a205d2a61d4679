"""xarray access: run, grid-run, study and compare files open with named dimensions.

``xarray.open_datatree(path, engine="h5netcdf")`` reads the HDF5 dimension scales that
every commit attaches (``wflow/_dims.py``); ``wflow.open_run`` does the same after
verifying the file's checksums. The labels change no data: the files still verify.
"""

import os

import _helpers
import h5py
import numpy as np
import pytest
import xarray as xr
from _helpers import cli

import wflow
from wflow import _io

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

RUN = {
    "seed": "0",
    "data": {"kind": '"teacher"', "n": "16", "dim": "2", "test_n": "8"},
    "model": {"feature": '"neuron"'},
    "init": {"kind": '"gaussian"', "std": "1.0"},
    "solver": {"L": "4", "M": "6"},
    "train": {"time": "1.0", "dt": "0.1", "record_every": "2", "snapshots": "3"},
}


def _run(tmp_path, capsys, edits=None, extra="", verb=("run",), name="run.h5", flags=("-q",)):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(_helpers.toml_text(RUN, edits) + extra)
    out = tmp_path / name
    rc, _, err = cli(capsys, *verb, cfg, "-o", out, *flags)
    assert rc == 0, err
    return out


def test_run_file_has_named_dimensions(tmp_path, capsys):
    out = _run(tmp_path, capsys)
    tree = xr.open_datatree(out, engine="h5netcdf")
    theta = tree["snapshots"]["theta"]
    assert theta.dims == ("snapshot", "layer", "particle", "coord")
    assert theta.shape == (3, 4, 6, 5)
    np.testing.assert_array_equal(tree["snapshots"]["s"].values, [0.0, 0.5, 1.0])
    history = tree["history"].to_dataset()
    assert history["loss"].dims == ("s",)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(history["loss"].values, f["history/loss"][()])
        np.testing.assert_array_equal(history["s"].values, f["history/s"][()])
    # the three-line analysis of the documentation: the loss at s = 0.6, the last snapshot
    assert float(history["loss"].sel(s=0.6, method="nearest")) == pytest.approx(
        float(history["loss"][3]))
    last = tree["snapshots"].to_dataset()["theta"].isel(snapshot=-1)
    assert last.dims == ("layer", "particle", "coord")
    assert tree["data"]["x"].dims == ("sample", "in")
    assert tree["data"]["y"].dims == ("sample", "out")
    assert tree["data"]["x_test"].dims == ("test_sample", "in")
    assert tree["final"]["prediction"].dims == ("sample", "out")
    assert tree["state"]["theta"].dims == ("layer", "particle", "coord")
    _io.verify_run(str(out))  # the labels are covered by the checksums and break nothing


def test_grid_run_file_has_cell_coordinates(tmp_path, capsys):
    out = tmp_path / "grid.h5"
    rc, _, err = cli(capsys, "run", os.path.join(CONFIGS, "grid_neuron_2d.toml"), "-o", out,
                     "-q", "--set", "train.time=0.1", "--set", "train.snapshots=2")
    assert rc == 0, err
    tree = wflow.open_run(out)
    rho = tree["snapshots"]["rho"]
    assert rho.dims == ("snapshot", "layer", "cell_0", "cell_1")
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(tree["cell_0"].values, f["grid/axis_0"][()])
        np.testing.assert_array_equal(tree["layer"].values, f["grid/t"][()])
    # the mass of every slice, integrated with xarray: 1 to round-off
    width = float(tree["cell_0"][1] - tree["cell_0"][0]) * float(tree["cell_1"][1] - tree["cell_1"][0])
    mass = rho.isel(snapshot=-1).sum(("cell_0", "cell_1")) * width
    np.testing.assert_allclose(mass.values, 1.0, rtol=1e-5)


def test_study_file_has_named_dimensions(tmp_path, capsys):
    study = ('\n[study]\nL = [2, 4]\nM = [2, 3]\nseeds = 2\ntimes = [0.0, 0.5]\n'
             'reference = "particles"\nreference_M = 12\nreference_L = 8\nmetrics = ["output"]\n'
             'reference_depth = "layers"\n')  # the file's layout is that of any reference
    out = _run(tmp_path, capsys, {"data.test_n": None}, study, verb=("study", "limit"),
               name="study.h5", flags=("-q", "--no-plot"))
    tree = wflow.open_run(out)
    errors = tree["errors"]["output"]
    assert errors.dims == ("L", "M", "seed", "time")
    np.testing.assert_array_equal(tree["L"].values, [2, 4])
    np.testing.assert_array_equal(tree["time"].values, [0.0, 0.5])
    table = errors.sel(time=0.5).mean("seed").to_pandas()  # a study's error table, a DataFrame
    assert table.shape == (2, 2) and np.all(np.isfinite(table.values))
    fit = tree["fit"]["output"].to_dataset()
    assert fit["rms"].dims == ("L", "M", "time")
    # the fits: slopes along the other swept axis, the model's terms, the free fit's parameters
    assert fit["slope_L"].dims == fit["slope_L_err"].dims == ("time", "M")
    assert fit["slope_M"].dims == ("time", "L")
    assert fit["model"].dims == fit["model_err"].dims == ("time", "term")
    assert list(fit["term"].values) == ["a", "b"]
    assert fit["free"].dims == fit["theory_inside"].dims == ("time", "param")
    assert list(fit["param"].values) == ["a", "p", "b", "q"]
    assert fit["free_ci"].dims == ("time", "param", "bound")
    with h5py.File(out, "r") as f:
        assert [str(p) for p in fit["param"].values] == list(f["fit/output/free"].attrs["params"])
        np.testing.assert_array_equal(fit["free_ci"].sel(bound="upper").values,
                                      f["fit/output/free_ci"][..., 1])
        np.testing.assert_array_equal(fit["slope_M"].sel(L=4).values, f["fit/output/slope_M"][:, 1])


def test_compare_file_has_named_dimensions(tmp_path, capsys):
    compare = '\n[compare]\noptimizers = ["sgd"]\nrecords = 4\n'
    out = _run(tmp_path, capsys, None, compare, verb=("compare",), name="cmp.h5",
               flags=("-q", "--no-plots"))
    tree = xr.open_datatree(out, engine="h5netcdf")
    for name in ("meanfield", "sgd"):
        ds = tree[name].to_dataset()
        assert ds["loss"].dims == ("s",) and ds["prediction"].dims == ("sample", "out")
    np.testing.assert_allclose(tree["sgd"]["loss"].values, tree["meanfield"]["loss"].values,
                               rtol=1e-5)


def test_open_run_refuses_a_damaged_file(tmp_path, capsys):
    out = _run(tmp_path, capsys)
    with h5py.File(out, "r+") as f:
        f.attrs["seed"] = 99  # the attribute checksum no longer matches
    with pytest.raises(ValueError, match="checksum"):
        wflow.open_run(out)
