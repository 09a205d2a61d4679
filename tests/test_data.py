"""Datasets: deterministic from the seed, right shapes, right labels, file formats."""

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

import wflow

FEATURE = wflow.make_feature("neuron", 2)
SEQUENCES = ("in_context_regression", "teacher_transformer")  # data.tokens


def _make(kind, seed=0, tmp_path=None, **kw):
    if kind == "teacher":
        kw.setdefault("feature", FEATURE)
    if kind in SEQUENCES:
        kw.setdefault("tokens", 4)
        if kind == "teacher_transformer":
            kw.setdefault("feature", wflow.make_feature("attention", kw.get("dim", 2),
                                                        tokens=kw["tokens"]))
    if kind == "file":
        path = tmp_path / "data.npz"
        if not path.exists():
            rng = np.random.default_rng(0)
            np.savez(path, x=rng.normal(size=(20, 3)), y=rng.normal(size=20))
        kw["path"] = str(path)
    return wflow.make_dataset(kind, n=kw.pop("n", 40), dim=kw.pop("dim", 2), seed=seed, **kw)


@pytest.mark.parametrize("kind", wflow.DATASETS)
def test_deterministic_from_seed(kind, tmp_path):
    x1, y1 = _make(kind, seed=7, tmp_path=tmp_path)
    x2, y2 = _make(kind, seed=7, tmp_path=tmp_path)
    assert x1.dtype == y1.dtype == np.float64
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    if kind != "file":  # a file is a file; every generator depends on the seed
        x3, _ = _make(kind, seed=8, tmp_path=tmp_path)
        assert not np.array_equal(x1, x3)


@pytest.mark.parametrize("kind, dim, d_in, d_out", [
    ("teacher", 3, 3, 1), ("sine", 3, 3, 1), ("circles", 2, 2, 1), ("digits", 2, 64, 10),
])
def test_shapes(kind, dim, d_in, d_out):
    x, y = _make(kind, n=50, dim=dim, **({"feature": wflow.make_feature("neuron", dim)}
                                          if kind == "teacher" else {}))
    assert x.shape == (50, d_in) and y.shape == (50, d_out)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))


def test_teacher_output_dimension_and_noise():
    _, y = _make("teacher", n=30, out_dim=2)
    assert y.shape == (30, 2)
    _, y_noisy = _make("teacher", n=30, out_dim=2, noise=0.1)
    assert 0 < np.std(y_noisy - y) < 0.2
    with pytest.raises(ValueError, match="feature"):
        wflow.make_dataset("teacher", n=10, dim=2)


def test_teacher_targets_are_a_resnet_of_the_model_family():
    """y is the output of a layered ResNet of the model's own family: a smooth function of x
    with y(0) = 0 for tanh (sigma(0) = 0 and no bias makes F(0) = 0)."""
    feat = wflow.make_feature("neuron", 2, bias=False)
    x, y = wflow.make_dataset("teacher", n=40, dim=2, feature=feat, seed=0)
    x0 = np.vstack([np.zeros((1, 2)), x[1:]])
    # regenerate with x[0] replaced: teacher parameters depend on the seed only
    y0 = wflow._data.teacher_targets(x0, feat, width=4, depth=4, std=1.0, out_dim=1, seed=0)
    np.testing.assert_allclose(y0[1:], y[1:], rtol=1e-12)
    assert abs(y0[0, 0]) < 1e-15


def test_sine_targets():
    x, y = _make("sine", n=64, dim=2)
    assert np.all(np.abs(x) <= 1.0)
    np.testing.assert_allclose(y[:, 0], np.sin(np.pi * x[:, 0]), rtol=1e-14)


def test_circles_labels_and_radii():
    x, y = _make("circles", n=101)
    assert set(np.unique(y).tolist()) == {-1.0, 1.0}
    assert abs(int(np.sum(y > 0)) - int(np.sum(y < 0))) <= 1  # balanced
    r = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(r, np.where(y[:, 0] > 0, 1.0, 0.5), rtol=1e-14)
    with pytest.raises(wflow.DataError, match="data.dim"):
        wflow.make_dataset("circles", n=10, dim=3)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
@pytest.mark.parametrize("y_shape", [(25,), (25, 2)])
def test_file_roundtrip(suffix, y_shape, tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(25, 3)), rng.normal(size=y_shape)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, y=y)
    else:
        with h5py.File(path, "w") as f:
            f["x"], f["y"] = x, y
    xr, yr = wflow.make_dataset("file", path=str(path))
    np.testing.assert_array_equal(xr, x)
    np.testing.assert_array_equal(yr, y.reshape(25, -1))


def test_file_errors_name_the_key(tmp_path):
    with pytest.raises(wflow.DataError, match="data.path"):
        wflow.make_dataset("file", path=str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((3, 2)))
    with pytest.raises(wflow.DataError, match="'y'"):
        wflow.make_dataset("file", path=str(bad))
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((3, 2), np.nan), y=np.ones(3))
    with pytest.raises(wflow.DataError, match="non-finite"):
        wflow.make_dataset("file", path=str(nan))
    with pytest.raises(wflow.DataError, match="data.kind"):
        wflow.make_dataset("mnist")


def test_digits():
    x, y = wflow.make_dataset("digits", n=5000)
    assert x.shape == (1797, 64) and y.shape == (1797, 10)
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    x2, y2 = wflow.make_dataset("digits", n=100, classes=(3, 8))
    assert x2.shape == (100, 64) and y2.shape == (100, 1)
    assert set(np.unique(y2).tolist()) == {-1.0, 1.0}
    with pytest.raises(wflow.DataError, match="data.classes"):
        wflow.make_dataset("digits", classes=(3,))


@pytest.mark.parametrize("kind", ["sine", "circles"])
def test_dataset_feeds_a_problem(kind):
    x, y = _make(kind, n=16)
    problem = wflow.Problem(wflow.make_feature("neuron", 3), jnp.asarray(x), jnp.asarray(y))
    assert (problem.n, problem.d_in, problem.d_out) == (16, 2, 1)


@pytest.mark.parametrize("kind", [k for k, v in wflow._data.DATASETS.items() if v.fresh_test])
def test_fresh_held_out_sets_have_test_n_rows(kind):
    """Kinds that draw the held-out set afresh give exactly test_n rows, whatever n is."""
    options = {"feature": wflow.Neuron(d=2)}
    if kind in SEQUENCES:
        options = {"tokens": 4, "feature": wflow.make_feature("attention", 2, tokens=4)}
    x, y = wflow.make_test_set(kind, test_n=5, n=10, dim=2, **options)
    assert x.shape == ((5, 4, 2) if kind in SEQUENCES else (5, 2)) and y.shape[0] == 5
