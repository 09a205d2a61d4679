"""Figures of a run file: ``wflow._plot.plot_run`` on small synthetic run files.

The files are written here with h5py following the contract of docs/reliability.md, "The run file",
so these tests do not depend on the solver or the CLI.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from wflow._plot import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(feature: str, dim: int, *, kind: str = "particles", data: str = "sine",
            L: int = 6, M: int = 200) -> str:
    return (
        "seed = 0\n"
        f'[data]\nkind = "{data}"\nn = 64\n'
        f'[model]\nfeature = "{feature}"\nactivation = "tanh"\nbias = true\ndim = {dim}\n'
        f'[solver]\nkind = "{kind}"\ndepth = "layers"\nL = {L}\nM = {M}\n'
        '[train]\ntime = 2.0\ndt = 0.01\nmethod = "euler"\n'
    )


def write_run(path, *, config: str, theta=None, rho=None, grid=None, x, y, prediction=None,
              loss=None, stationarity=None, status: str = "complete") -> str:
    n = 50
    s = np.linspace(0.0, 2.0, n)
    loss = np.exp(-3 * s) * 0.5 if loss is None else loss
    stationarity = 1.5 * np.exp(-3 * s) if stationarity is None else stationarity
    with h5py.File(path, "w") as f:
        f.attrs.update(format="wflow-run", format_version=1, wflow_version="0.1.0",
                       config=config, status=status, seed=0, created_utc="2024-01-01T00:00:00Z",
                       jax_version="0.4.30", backend="cpu")
        f["history/s"] = s
        f["history/loss"] = loss
        f["history/stationarity"] = stationarity
        f["history/wall_time"] = np.linspace(0.0, 3.0, n)
        f["snapshots/s"] = np.linspace(0.0, 2.0, 5)
        if theta is not None:
            f["snapshots/theta"] = theta
        if rho is not None:
            f["snapshots/rho"] = rho
            f["grid/t"] = (np.arange(rho.shape[1]) + 0.5) / rho.shape[1]
            for i, axis in enumerate(grid):
                f[f"grid/axis_{i}"] = axis
        f["data/x"] = x
        f["data/y"] = y
        if prediction is not None:
            f["final/prediction"] = prediction
    return str(path)


def check_pngs(paths, expected, out_dir) -> None:
    assert [os.path.basename(p) for p in paths] == expected
    for p in paths:
        assert os.path.dirname(p) == str(out_dir)
        with open(p, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC
        assert os.path.getsize(p) > 8_000, p  # a real figure, not an empty canvas


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def neuron_run(path, rng, L=6, M=3000):
    """neuron features, d = 2 (k = 5), 1-D inputs: particles drift between snapshots."""
    theta0 = rng.normal(size=(L, M, 5))
    drift = np.linspace(0, 1, 5)[:, None, None, None] * np.array([0.5, -0.3, 0.8, 0.2, 0.0])
    theta = theta0[None] * (1 + 0.3 * np.linspace(0, 1, 5))[:, None, None, None] + drift
    x = rng.uniform(-2, 2, size=(64, 1))
    y = np.sin(x)
    return write_run(path, config=_config("neuron", 2, M=M), theta=theta, x=x, y=y,
                     prediction=y + 0.05 * rng.normal(size=y.shape))


def linear_run(path, rng):
    """linear features, d = 1 (k = 1): rigid translation of a Gaussian
    (docs/theory.md, "Closed form: linear, d = 1")."""
    theta0 = 0.2 * rng.normal(size=(8, 500, 1))
    theta = theta0[None] + np.linspace(0, 0.7, 5)[:, None, None, None]
    x = rng.normal(size=(40, 1))
    y = 2.0 * x
    return write_run(path, config=_config("linear", 1, data="teacher", L=8, M=500),
                     theta=theta, x=x, y=y, prediction=1.95 * x)


def degenerate_run(path, rng):
    """Every particle at 0, constant loss, stationarity exactly 0
    (docs/theory.md, "Degenerate start")."""
    x = rng.uniform(-1, 1, size=(32, 1))
    y = np.sin(3 * x)
    return write_run(path, config=_config("neuron", 1, L=4, M=50), theta=np.zeros((5, 4, 50, 3)),
                     x=x, y=y, prediction=np.zeros_like(y), loss=np.full(50, 0.2345),
                     stationarity=np.zeros(50))


def test_neuron_run(tmp_path, rng):
    out = tmp_path / "figs"  # created by plot_run
    paths = plot_run(neuron_run(tmp_path / "neuron.h5", rng), str(out))
    check_pngs(paths, ["loss.png", "particles.png", "predictions.png"], out)


def test_linear_d1_run(tmp_path, rng):
    paths = plot_run(linear_run(tmp_path / "linear.h5", rng), str(tmp_path))
    check_pngs(paths, ["loss.png", "particles.png", "predictions.png"], tmp_path)


def test_degenerate_run(tmp_path, rng):
    paths = plot_run(degenerate_run(tmp_path / "degenerate.h5", rng), str(tmp_path))
    check_pngs(paths, ["loss.png", "particles.png", "predictions.png"], tmp_path)


def test_incomplete_run_skips_predictions(tmp_path, rng):
    x = rng.normal(size=(30, 2))
    loss = np.exp(-np.linspace(0, 2, 50))
    loss[-3:] = [np.inf, np.nan, np.nan]  # diverged at the end: masked, not a crash
    path = write_run(tmp_path / "diverged.h5",
                     config=_config("neuron", 2, data="circles", L=4, M=100),
                     theta=rng.normal(size=(5, 4, 100, 4)), x=x, y=x[:, :1],
                     loss=loss, status="diverged")
    paths = plot_run(path, str(tmp_path))
    check_pngs(paths, ["loss.png", "particles.png"], tmp_path)


@pytest.mark.parametrize("cells", [(40,), (24, 20)])
def test_grid_run_density(tmp_path, rng, cells):
    axes = [np.linspace(-2, 2, n) for n in cells]
    mesh = np.meshgrid(*axes, indexing="ij")
    shift = np.linspace(0, 1, 5)
    rho = np.stack([np.stack([np.exp(-sum((m - a) ** 2 for m in mesh)) for _ in range(5)])
                    for a in shift])  # (n_snap, n_t, *cells): a blob moving in s
    x = rng.normal(size=(20, 2))
    path = write_run(tmp_path / "grid.h5",
                     config=_config("linear" if len(cells) == 1 else "neuron", 1, kind="grid", L=5),
                     rho=rho, grid=axes, x=x, y=x[:, :1], prediction=0.9 * x[:, :1])
    paths = plot_run(path, str(tmp_path))
    check_pngs(paths, ["loss.png", "density.png", "predictions.png"], tmp_path)


def test_not_a_run_file(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.h5.*not a wflow run file"):
        plot_run(str(other), str(tmp_path / "out"))
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="wrong.h5"):
        plot_run(str(wrong), str(tmp_path / "out"))
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="notes.txt.*not a readable HDF5 file"):
        plot_run(str(text), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="missing.h5"):
        plot_run(str(tmp_path / "missing.h5"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written for a bad file


if __name__ == "__main__":  # write sample figures to look at: python tests/test_plot.py [DIR]
    import sys

    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wflow_plot_samples"
    gen = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for name, make in [("neuron", neuron_run), ("linear", linear_run),
                       ("degenerate", degenerate_run)]:
        print(plot_run(make(os.path.join(root, f"{name}.h5"), gen), os.path.join(root, name)))
