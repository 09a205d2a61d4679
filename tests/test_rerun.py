"""Run files are reproducible: ``wflow run RUN.h5`` reruns the config stored in a run file.

Every bundled config is run for two steps, then rerun from its run file; the two files hold
the same arrays bit for bit (wall times aside). The eight slowest to compile run with -m slow. The stored config is the resolved config with
every default written, so this also checks that the resolver's output is accepted as input.
"""

import glob
import os
import tomllib

import _helpers
import numpy as np
import pytest
from _helpers import cli

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs", "*.toml")))


def _short(path):
    """--set overrides that make a bundled config two steps long (a forward-only config,
    train.time = 0, stays so)."""
    with open(path, "rb") as f:
        train = tomllib.load(f).get("train", {})
    if train.get("time") == 0:
        return []
    dt = train.get("dt", 0.01)
    return ["--set", f"train.time={2 * dt!r}", "--set", "train.record_every=1",
            "--set", "train.snapshots=2"]


# The configs that take longest to compile (continuous depth at tight tolerances, 3-D grids,
# wide sweeps' base configs) rerun in the slow set; every config reruns with -m slow.
HEAVY = {"grid_linear_exact", "teacher_continuous", "grid_neuron_3d", "shapes_tanh",
         "lu_reorder_circles", "zero_loss_sine", "lu_reorder_digits", "limit_teacher_depth"}


def _param(config):
    name = os.path.basename(config)[:-5]
    return pytest.param(config, id=name, marks=pytest.mark.slow if name in HEAVY else ())


@pytest.mark.parametrize("config", [_param(c) for c in CONFIGS])
def test_rerun_from_the_run_file_is_bit_identical(config, tmp_path, capsys):
    first, second = tmp_path / "first.h5", tmp_path / "second.h5"
    rc, _, err = cli(capsys, "run", config, "-o", first, "-q", *_short(config))
    assert rc == 0, err
    rc, _, err = cli(capsys, "run", first, "-o", second, "-q")
    assert rc == 0, err
    a, b = _helpers.datasets(first), _helpers.datasets(second)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_rerun_refuses_to_overwrite_its_source(tmp_path, capsys):
    run = tmp_path / "run.h5"
    rc, _, err = cli(capsys, "run", CONFIGS[0], "-o", run, "-q", *_short(CONFIGS[0]))
    assert rc == 0, err
    before = run.stat().st_mtime_ns
    rc, _, err = cli(capsys, "run", run, "-o", run, "-q")
    assert rc == 2 and "rerun" in err and run.stat().st_mtime_ns == before


def test_rerun_with_set_and_bad_hdf5(tmp_path, capsys):
    run = tmp_path / "run.h5"
    rc, _, err = cli(capsys, "run", CONFIGS[0], "-o", run, "-q", *_short(CONFIGS[0]))
    assert rc == 0, err
    rc, _, err = cli(capsys, "run", run, "-o", tmp_path / "seed.h5", "-q", "--set", "seed=7")
    assert rc == 0, err
    a, b = _helpers.datasets(run), _helpers.datasets(tmp_path / "seed.h5")
    assert not np.array_equal(a["snapshots/theta"][0], b["snapshots/theta"][0])
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    rc, _, err = cli(capsys, "run", tmp_path / "other.h5", "-o", tmp_path / "o.h5", "-q")
    assert rc == 2 and "not a wflow run" in err and len(err.strip().splitlines()) == 1
