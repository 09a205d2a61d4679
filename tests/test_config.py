"""Config loading (``wflow.load_config``), validation messages and ``wflow.build_run``."""

import glob
import os
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wflow
from wflow._config import SCHEMA, config_warnings, to_toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml")))

TINY = """
seed = 3
[data]
kind = "teacher"
n = 16
dim = 2
[solver]
L = 2
M = 4
[train]
time = 0.5
dt = 0.1
"""


def write(tmp_path, text, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_resolved(tmp_path):
    cfg = wflow.load_config(write(tmp_path, "seed = 0\n", "mini.toml"))
    # [study] is resolved by the study verbs, and kept only when the file has one
    assert set(cfg) == {"seed", *SCHEMA} - {"study"}
    for section, keys in SCHEMA.items():
        if section != "study":
            # [model.params] is kept only for a block that takes parameters
            assert set(keys) - {"params"} <= set(cfg[section]), section
    assert "params" not in cfg["model"]
    assert cfg["data"]["kind"] == "teacher" and cfg["data"]["n"] == 256
    assert cfg["model"]["dim"] == 2  # = data.dim
    assert cfg["solver"]["precision"] == "float32"
    assert cfg["train"]["method"] == "euler" and cfg["train"]["dt"] == 0.01
    assert cfg["output"]["path"] == os.path.join("runs", "mini.h5")
    assert cfg["output"]["overwrite"] is False


def test_int_accepted_where_float_expected(tmp_path):
    cfg = wflow.load_config(write(tmp_path, "[train]\ntime = 3\ndt = 1\n"))
    assert isinstance(cfg["train"]["time"], float) and cfg["train"]["time"] == 3.0


def test_resolution_of_dims(tmp_path):
    cfg = wflow.load_config(write(tmp_path, '[data]\nkind = "digits"\nclasses = [3, 8]\n'))
    assert cfg["data"]["dim"] == 64 and cfg["model"]["dim"] == 64 and cfg["data"]["out_dim"] == 1
    cfg = wflow.load_config(write(tmp_path, '[data]\nkind = "digits"\n'))
    assert cfg["data"]["classes"] == list(range(10)) and cfg["data"]["out_dim"] == 10
    cfg = wflow.load_config(write(tmp_path, '[data]\nkind = "circles"\n'))
    assert cfg["data"]["dim"] == 2
    cfg = wflow.load_config(write(tmp_path, "[data]\ndim = 1\nout_dim = 3\n"))
    assert cfg["model"]["dim"] == 3  # d >= d_out


def test_toml_round_trip(tmp_path):
    cfg = wflow.load_config(write(tmp_path, TINY + '[init]\nmean = [0.0, 1.0, 2.0, 3.5, -1e-9]\n'))
    back = tomllib.loads(to_toml(cfg))
    expected = {s: ({k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t)
                for s, t in cfg.items()}
    assert back == expected  # grid configs: tests/test_grid.py::test_config_resolution


def test_string_escapes_round_trip():
    cfg = {"output": {"path": 'we"ird\\pa\tth\u00e9\x7f.h5'}}
    assert tomllib.loads(to_toml(cfg)) == cfg


def test_overrides(tmp_path):
    path = write(tmp_path, TINY)
    cfg = wflow.load_config(path, ["solver.L=8", "model.activation=silu", "init.std=0.5",
                                   "init.mean=[0, 1, 0, 1, 0]", "seed=7", "output.path=a/b.h5",
                                   ("data.noise", 0.1)])
    assert cfg["solver"]["L"] == 8 and cfg["model"]["activation"] == "silu"
    assert cfg["init"]["std"] == 0.5 and cfg["init"]["mean"] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert cfg["seed"] == 7 and cfg["output"]["path"] == "a/b.h5"
    assert cfg["data"]["noise"] == 0.1


@pytest.mark.parametrize("item, needle", [
    ("solver.L", "--set"), ("=3", "--set"), ("solver..L=3", "--set"),
    ("solver.LL=3", "solver.LL"), ("solver.L=true", "solver.L"), ("seed=-1", "seed"),
    ("modle.L=3", "modle.L"), ("solver.grid.x=1", "solver.grid.x"), ("train.dt=inf", "train.dt"),
])
def test_bad_overrides(tmp_path, item, needle):
    with pytest.raises(wflow.ConfigError) as e:
        wflow.load_config(write(tmp_path, TINY), [item])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("[model]\nactivaton = 'tanh'\n", "did you mean model.activation?"),
    ("[modle]\nfeature = 'neuron'\n", "did you mean [model]?"),
    ("[train]\nrecord_evry = 3\n", "did you mean train.record_every?"),
    ("sed = 3\n", "did you mean seed?"),
])
def test_unknown_names_suggest_close_match(tmp_path, text, needle):
    with pytest.raises(wflow.ConfigError, match=r"unknown") as e:
        wflow.load_config(write(tmp_path, text))
    assert needle in str(e.value)


def test_malformed_toml_names_the_line(tmp_path):
    with pytest.raises(wflow.ConfigError, match=r"line 3"):
        wflow.load_config(write(tmp_path, "seed = 0\n[data]\nkind = \n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(wflow.ConfigError, match="file not found"):
        wflow.load_config(str(tmp_path / "nope.toml"))


def test_relative_paths_follow_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    x = np.linspace(-1, 1, 12)[:, None]
    np.savez(sub / "d.npz", x=x, y=2 * x[:, 0])
    path = write(sub, '[data]\nkind = "file"\npath = "d.npz"\n')
    monkeypatch.chdir(tmp_path)
    cfg = wflow.load_config(path)
    assert cfg["data"]["path"] == str(sub / "d.npz")
    assert cfg["data"]["n"] == 12 and cfg["data"]["dim"] == 1 and cfg["data"]["out_dim"] == 1
    # given with --set, a relative path is relative to the current directory
    cfg = wflow.load_config(path, ["data.path=sub/d.npz"])
    assert cfg["data"]["path"] == str(sub / "d.npz")


def test_build_run_objects_and_seeds(tmp_path):
    cfg = wflow.load_config(write(tmp_path, TINY))
    run = wflow.build_run(cfg)
    assert isinstance(run.problem, wflow.Problem) and isinstance(run.depth, wflow.LayeredDepth)
    assert run.schedule.n_steps == 5 and run.regularization.l2 == 0.0
    assert run.measure0.shape == (2, 4, 5) and run.measure0.dtype == jnp.float32
    assert run.problem.x.dtype == jnp.float32 and run.problem.x.shape == (16, 2)
    root = jax.random.PRNGKey(3)
    expected = wflow.init_particles("gaussian", jax.random.fold_in(root, 1), 2, 4, 5)
    np.testing.assert_array_equal(np.asarray(run.measure0), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(run.key), np.asarray(jax.random.fold_in(root, 2)))
    again = wflow.build_run(wflow.load_config(write(tmp_path, TINY)))
    np.testing.assert_array_equal(np.asarray(run.problem.y), np.asarray(again.problem.y))
    other = wflow.build_run(wflow.load_config(write(tmp_path, TINY), ["seed=4"]))
    assert not np.array_equal(np.asarray(run.problem.x), np.asarray(other.problem.x))


def test_build_run_continuous_float64(tmp_path):
    cfg = wflow.load_config(write(tmp_path, TINY), [
        "solver.depth=continuous", "solver.adjoint=backsolve", "solver.precision=float64",
        "train.l2=0.1", "train.l2_schedule=inverse", "train.temperature=0.01"])
    run = wflow.build_run(cfg)
    assert isinstance(run.depth, wflow.ContinuousDepth) and run.depth.adjoint == "backsolve"
    assert run.measure0.dtype == jnp.float64 and run.problem.y.dtype == jnp.float64
    assert run.regularization.l2_schedule == "inverse" and run.regularization.temperature == 0.01


def test_init_file_shape_mismatch(tmp_path):
    np.savez(tmp_path / "theta.npz", theta=np.zeros((2, 4, 3)))
    cfg = wflow.load_config(write(tmp_path, TINY + '[init]\nkind = "file"\npath = "theta.npz"\n'))
    with pytest.raises(wflow.ConfigError, match=r"init\.path.*\(2, 4, 5\)"):
        wflow.build_run(cfg)
    np.savez(tmp_path / "theta.npz", theta=np.ones((2, 4, 5)))
    run = wflow.build_run(cfg)
    assert np.all(np.asarray(run.measure0) == 1.0)


def test_relu_warns(tmp_path):
    cfg = wflow.load_config(write(tmp_path, TINY), ["model.activation=relu"])
    (warning,) = config_warnings(cfg)
    assert "relu" in warning and "theory" in warning and "\n" not in warning
    assert config_warnings(wflow.load_config(write(tmp_path, TINY))) == []


def test_config_error_is_value_error():
    assert issubclass(wflow.ConfigError, ValueError)
    assert {"ConfigError", "load_config", "build_run"} <= set(wflow.__all__)


@pytest.mark.parametrize("path", BUNDLED, ids=[os.path.basename(p) for p in BUNDLED])
def test_bundled_configs_validate_and_build(path):
    cfg = wflow.load_config(path)
    assert cfg["output"]["path"] == os.path.join(
        "runs", os.path.splitext(os.path.basename(path))[0] + ".h5")
    run = wflow.build_run(cfg)
    if cfg["solver"]["kind"] == "grid":
        assert run.measure0.rho.shape == (cfg["solver"]["L"], *cfg["solver"]["grid"]["cells"])
    else:
        assert run.measure0.shape == (cfg["solver"]["L"], cfg["solver"]["M"],
                                      run.problem.feature.k)
    assert config_warnings(cfg) == []


def test_all_bundled_configs_present():
    names = {os.path.basename(p) for p in BUNDLED}
    assert {"quickstart.toml", "linear_exact.toml", "degenerate_delta0.toml",
            "teacher_continuous.toml", "digits.toml", "grid_linear_exact.toml",
            "grid_neuron_2d.toml", "grid_neuron_3d.toml"} <= names


def test_linear_exact_teacher_is_linear():
    cfg = wflow.load_config(os.path.join(ROOT, "configs", "linear_exact.toml"))
    run = wflow.build_run(cfg)
    x, y = np.asarray(run.problem.x)[:, 0], np.asarray(run.problem.y)[:, 0]
    ratio = y / x
    assert np.ptp(ratio) < 1e-12 and abs(ratio[0] - 1.0) > 0.5  # y = a x with a far from 1
