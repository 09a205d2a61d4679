"""The ``wflow`` command end to end: run files, errors, overwrite, resume, divergence, plot."""

import os
import signal
import subprocess
import sys
import threading
import time
import tomllib

import _helpers
import h5py
import numpy as np
import pytest
from _helpers import cli

import wflow
from wflow.cli import main

# A tiny problem (compiles once per test session: every run below shares its shapes).
BASE = {
    "seed": "0",
    "data": {"kind": '"teacher"', "n": "32", "dim": "2"},
    "model": {"feature": '"neuron"', "activation": '"tanh"'},
    "init": {"kind": '"gaussian"', "std": "1.0"},
    "solver": {"L": "4", "M": "8"},
    "train": {"time": "1.0", "dt": "0.1", "record_every": "2", "snapshots": "3"},
}
N_HIST, N_SNAP = 6, 3  # steps 0, 2, 4, 6, 8, 10; snapshots at 0, 5, 10


def toml_text(edits=None):
    """BASE with edits {"section.key": raw TOML literal or None (delete)} as TOML text."""
    return _helpers.toml_text(BASE, edits)


def write_config(tmp_path, edits=None, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(toml_text(edits))
    return str(path)


def history(path):
    with h5py.File(path, "r") as f:
        return {n: f[n][()] for n in ("history/s", "history/loss", "history/stationarity",
                                      "snapshots/s", "snapshots/theta", "state/theta",
                                      "state/key", "state/step", "data/x", "data/y")
                } | ({"final/prediction": f["final/prediction"][()]} if "final" in f else {})


# ----------------------------------------------------------------------------- a complete run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp)
    out = tmp / "out.h5"
    rc = main(["run", cfg, "-o", str(out), "--quiet"])
    return rc, out, cfg


def test_run_file_layout(finished_run):
    rc, out, _ = finished_run
    assert rc == 0
    with h5py.File(out, "r") as f:
        a = f.attrs
        assert a["format"] == "wflow-run" and int(a["format_version"]) == 1
        assert a["wflow_version"] == wflow.__version__ and a["status"] == "complete"
        assert int(a["seed"]) == 0 and a["backend"] == "cpu"
        for name in ("created_utc", "jax_version", "initial_loss", "wall_time"):
            assert name in a
        cfg = tomllib.loads(a["config"])
        assert cfg["solver"]["L"] == 4 and cfg["model"]["dim"] == 2 and cfg["output"]["path"] == str(out)
        for name in ("s", "loss", "stationarity", "wall_time"):
            assert f[f"history/{name}"].shape == (N_HIST,)
        np.testing.assert_allclose(f["history/s"][()], [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-12)
        assert f["snapshots/s"].shape == (N_SNAP,)
        assert f["snapshots/theta"].shape == (N_SNAP, 4, 8, 5)
        assert f["snapshots/theta"].dtype == np.float32
        assert f["data/x"].shape == (32, 2) and f["data/y"].shape == (32, 1)
        assert f["final/prediction"].shape == (32, 1)
        assert f["state/theta"].shape == (4, 8, 5) and int(f["state/step"][()]) == 10
        np.testing.assert_array_equal(f["state/theta"][()], f["snapshots/theta"][-1])
        assert np.all(np.diff(f["history/wall_time"][()]) >= 0)
        loss = f["history/loss"][()]
        assert loss[-1] < loss[0] and float(a["initial_loss"]) == loss[0]


def test_run_summary_line(tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, stdout, err = cli(capsys, "run", write_config(tmp_path), "-o", out)  # progress bar on
    assert rc == 0
    (line,) = stdout.strip().splitlines()
    assert line.startswith("status=complete  s=1  loss=") and "stationarity=" in line
    assert line.endswith(f"-> {out}") and "wall=" in line
    assert "loss=" in err  # tqdm postfix on stderr


def test_plot_writes_pngs(finished_run, tmp_path, capsys):
    _, out, _ = finished_run
    rc, stdout, _ = cli(capsys, "plot", out, "-o", tmp_path / "figs")
    assert rc == 0
    paths = stdout.split()
    assert paths and all(p.endswith(".png") and os.path.getsize(p) > 0 for p in paths)
    assert all(os.path.dirname(p) == str(tmp_path / "figs") for p in paths)


def test_plot_default_dir(tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert cli(capsys, "run", write_config(tmp_path), "-o", out, "-q")[0] == 0
    rc, stdout, _ = cli(capsys, "plot", out)
    assert rc == 0 and os.path.isdir(tmp_path / "r_plots")
    assert all(p.startswith(str(tmp_path / "r_plots")) for p in stdout.split())


@pytest.mark.parametrize("make", ["missing", "not_h5", "other_h5"])
def test_plot_bad_file(tmp_path, capsys, make):
    path = tmp_path / "x.h5"
    if make == "not_h5":
        path.write_bytes(b"garbage" * 10)
    elif make == "other_h5":
        with h5py.File(path, "w") as f:
            f["a"] = 1
    rc, _, err = cli(capsys, "plot", path)
    assert rc == 2 and err.startswith("wflow: error:") and len(err.strip().splitlines()) == 1
    assert "x.h5" in err and "Traceback" not in err


def test_info(capsys):
    rc, out, _ = cli(capsys, "info")
    assert rc == 0
    for word in ("wflow", "jax", "jaxlib", "diffrax", "equinox", "optax", "h5py", "python",
                 "backend", "devices", "precision", "x64"):
        assert word in out
    # the persistent compilation cache in force (the test run keeps one; conftest.py)
    import jax

    cache = jax.config.jax_compilation_cache_dir
    assert f"xla cache    {cache or 'off'} " in out, out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["run"], ["run", "a.toml", "--bogus"],
                                  ["plot"]])
def test_usage_errors(capsys, argv):
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and "Traceback" not in err


# ----------------------------------------------------------------------------- bad input


def _files(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2))
    np.savez(tmp_path / "ok.npz", x=x, y=x[:, 0])
    np.savez(tmp_path / "noy.npz", x=x)
    np.savez(tmp_path / "nan.npz", x=np.where(x > 1, np.nan, x), y=x[:, 0])
    np.savez(tmp_path / "rows.npz", x=x, y=x[:-1, 0])
    np.savez(tmp_path / "strings.npz", x=np.array(["a"] * 20), y=x[:, 0])
    (tmp_path / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 50)
    (tmp_path / "data.txt").write_text("1 2 3\n")
    np.savez(tmp_path / "theta_shape.npz", theta=np.zeros((2, 8, 5)))
    np.savez(tmp_path / "theta_none.npz", rho=np.zeros((4, 8, 5)))


BAD = [
    # (id, edits to BASE, --set arguments, text that the message must contain)
    ("unknown-section", {"modle.feature": '"neuron"'}, [], "modle"),
    ("unknown-key", {"model.activaton": '"tanh"'}, [], "model.activaton"),
    ("unknown-top-key", {"sede": "1"}, [], "sede"),
    ("section-not-table", {"train": "3"}, [], "train"),
    ("string-for-int", {"solver.L": '"16"'}, [], "solver.L"),
    ("bool-for-int", {"solver.M": "true"}, [], "solver.M"),
    ("float-for-int", {"train.record_every": "2.5"}, [], "train.record_every"),
    ("int-for-bool", {"model.bias": "1"}, [], "model.bias"),
    ("negative-L", {"solver.L": "-3"}, [], "solver.L = -3"),
    ("zero-n", {"data.n": "0"}, [], "data.n"),
    ("negative-seed", {"seed": "-1"}, [], "seed"),
    ("nan-dt", {"train.dt": "nan"}, [], "train.dt"),
    ("inf-time", {"train.time": "inf"}, [], "train.time"),
    ("negative-time", {"train.time": "-1.0"}, [], "train.time = -1.0"),
    ("negative-std", {"init.std": "-1.0"}, [], "init.std"),
    ("nan-in-mean-list", {"init.mean": "[0.0, nan, 0.0, 0.0, 0.0]"}, [], "init.mean"),
    ("mean-list-length", {"init.mean": "[0.0, 1.0]"}, [], "init.mean"),
    ("bad-data-kind", {"data.kind": '"mnist"'}, [], "data.kind"),
    ("bad-activation", {"model.activation": '"tanhh"'}, [], "model.activation"),
    ("bad-method", {"train.method": '"rk4"'}, [], "train.method"),
    ("bad-precision", {"solver.precision": '"float16"'}, [], "solver.precision"),
    ("bad-adjoint", {"solver.adjoint": '"magic"'}, [], "solver.adjoint"),
    ("one-snapshot", {"train.snapshots": "1"}, [], "train.snapshots"),
    ("divergence-factor", {"train.divergence_factor": "0.5"}, [], "train.divergence_factor"),
    ("temperature-adaptive", {"train.temperature": "0.1", "train.method": '"adaptive"'}, [],
     "train.temperature"),
    ("state-dim-too-small", {"model.dim": "1"}, [], "model.dim"),
    ("circles-dim", {"data.kind": '"circles"', "data.dim": "3"}, [], "data.dim"),
    ("digits-classes", {"data.kind": '"digits"', "data.dim": None, "data.classes": "[1, 1]"}, [],
     "data.classes"),
    ("uniform-high-low", {"init.kind": '"uniform"', "init.low": "1.0", "init.high": "0.0"}, [],
     "init.high"),
    ("grid-k-too-large", {"solver.kind": '"grid"'}, [], "k = 5"),
    ("grid-table-for-particles", {}, ["solver.grid.cfl=0.2"], "solver.grid"),
    ("grid-bad-cells", {}, ["solver.grid.cells=0"], "solver.grid.cells"),
    ("set-syntax", {}, ["solver.L"], "--set"),
    ("set-unknown", {}, ["train.dtt=0.1"], "train.dtt"),
    ("set-type", {}, ["solver.L=abc"], "solver.L"),
    ("data-path-missing-key", {"data.kind": '"file"', "data.dim": None, "data.n": None}, [],
     "data.path"),
    ("data-file-missing", {"data.kind": '"file"', "data.path": '"nope.npz"', "data.dim": None,
                           "data.n": None}, [], "data.path"),
    ("data-file-no-y", {"data.kind": '"file"', "data.path": '"noy.npz"', "data.dim": None,
                        "data.n": None}, [], "data.path"),
    ("data-file-nan", {"data.kind": '"file"', "data.path": '"nan.npz"', "data.dim": None,
                       "data.n": None}, [], "non-finite"),
    ("data-file-rows", {"data.kind": '"file"', "data.path": '"rows.npz"', "data.dim": None,
                        "data.n": None}, [], "data.path"),
    ("data-file-strings", {"data.kind": '"file"', "data.path": '"strings.npz"', "data.dim": None,
                           "data.n": None}, [], "data.path"),
    ("data-file-corrupt", {"data.kind": '"file"', "data.path": '"corrupt.h5"', "data.dim": None,
                           "data.n": None}, [], "data.path"),
    ("data-file-extension", {"data.kind": '"file"', "data.path": '"data.txt"', "data.dim": None,
                             "data.n": None}, [], "data.path"),
    ("data-file-dim", {"data.kind": '"file"', "data.path": '"ok.npz"', "data.dim": "3",
                       "data.n": None}, [], "data.dim"),
    ("data-path-not-file-kind", {"data.path": '"ok.npz"'}, [], "data.path"),
    ("init-path-missing-key", {"init.kind": '"file"'}, [], "init.path"),
    ("init-file-shape", {"init.kind": '"file"', "init.path": '"theta_shape.npz"'}, [],
     "init.path"),
    ("init-file-no-theta", {"init.kind": '"file"', "init.path": '"theta_none.npz"'}, [],
     "init.path"),
]


@pytest.mark.parametrize("edits, sets, needle", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_exits_2(tmp_path, capsys, edits, sets, needle):
    _files(tmp_path)
    cfg = write_config(tmp_path, edits)
    before = set(os.listdir(tmp_path))
    out = tmp_path / "out.h5"
    args = ["run", cfg, "-o", out, "--quiet"] + [a for s in sets for a in ("--set", s)]
    rc, stdout, err = cli(capsys, *args)
    assert rc == 2
    assert err.startswith("wflow: error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not out.exists() and set(os.listdir(tmp_path)) == before and stdout == ""


@pytest.mark.parametrize("text, needle", [
    ("seed = 0\n[data\nkind = 'sine'\n", "line 2"),
    ("seed = 0\n[train]\ntime = \n", "line 3"),
    ("seed = 0\nseed = 1\n", "line"),
])
def test_malformed_toml_exits_2(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5")
    assert rc == 2 and needle in err and "bad.toml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


def test_missing_config_exits_2(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", tmp_path / "nope.toml", "-o", tmp_path / "o.h5")
    assert rc == 2 and "nope.toml" in err and "not found" in err
    assert not (tmp_path / "o.h5").exists()


def test_unwritable_output_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    rc, _, err = cli(capsys, "run", write_config(tmp_path), "-o", tmp_path / "afile" / "o.h5", "-q")
    assert rc == 2 and "output.path" in err and len(err.strip().splitlines()) == 1


def test_relu_warning(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", write_config(tmp_path, {"model.activation": '"relu"'}),
                     "-o", tmp_path / "o.h5", "-q")
    assert rc == 0 and "warning" in err and "relu" in err and "theory" in err


# ----------------------------------------------------------------------------- overwrite, --set


def test_overwrite_protection(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "o.h5"
    assert cli(capsys, "run", cfg, "-o", out, "-q")[0] == 0
    before = out.read_bytes()
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 2 and "output.path" in err and "output.overwrite = true" in err and "--resume" in err
    assert out.read_bytes() == before
    rc, _, _ = cli(capsys, "run", cfg, "-o", out, "-q", "--set", "output.overwrite=true",
                   "--set", "train.time=0.4")
    assert rc == 0
    with h5py.File(out, "r") as f:
        assert f["history/s"].shape == (3,)


def test_default_output_path(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path, name="mycfg.toml")
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli(capsys, "run", cfg, "-q")
    assert rc == 0 and (tmp_path / "runs" / "mycfg.h5").exists()
    assert out.strip().endswith(os.path.join("runs", "mycfg.h5"))


@pytest.mark.parametrize("verb", [("study", "limit"), ("compare",)], ids=["study", "compare"])
def test_study_and_compare_create_their_output_folder(tmp_path, capsys, monkeypatch, verb):
    """As `wflow run` does: the default runs/ in a fresh folder, or -o in a new nested folder
    (the lock file used to be opened before the folder existed: exit 2)."""
    edits = ({"study.L": "[2, 4]", "study.M": "[4]", "study.seeds": "2", "study.times": "[0.5]",
              "study.reference": '"particles"', "study.reference_M": "8",
              "study.reference_L": "4", "study.reference_depth": '"layers"'} if verb[0] == "study"
             else {"compare.optimizers": '["sgd"]', "compare.records": "2"})
    cfg = write_config(tmp_path, edits, name="mycfg.toml")
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, *verb, cfg, "-q", "--no-plot" if verb[0] == "study" else "--no-plots")
    assert rc == 0, err
    default = "mycfg_limit.h5" if verb[0] == "study" else "mycfg_compare.h5"
    assert (tmp_path / "runs" / default).is_file()
    nested = tmp_path / "new" / "deeper" / "out.h5"
    rc, _, err = cli(capsys, *verb, cfg, "-o", nested, "-q",
                     "--no-plot" if verb[0] == "study" else "--no-plots")
    assert rc == 0, err
    assert nested.is_file() and not nested.with_name("out.h5.lock").exists()


def test_set_overrides_are_used_and_stored(tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, _, _ = cli(capsys, "run", write_config(tmp_path), "-o", out, "-q", "--set", "solver.M=6",
                   "--set", "train.record_every=5", "--set", "model.activation=silu")
    assert rc == 0
    with h5py.File(out, "r") as f:
        cfg = tomllib.loads(f.attrs["config"])
        assert cfg["solver"]["M"] == 6 and cfg["model"]["activation"] == "silu"
        assert f["snapshots/theta"].shape[2] == 6 and f["history/s"].shape == (3,)


def test_same_seed_same_numbers(tmp_path, capsys):
    cfg = write_config(tmp_path)
    for name in ("a.h5", "b.h5"):
        assert cli(capsys, "run", cfg, "-o", tmp_path / name, "-q")[0] == 0
    a, b = history(tmp_path / "a.h5"), history(tmp_path / "b.h5")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert cli(capsys, "run", cfg, "-o", tmp_path / "c.h5", "-q", "--set", "seed=1")[0] == 0
    assert not np.array_equal(history(tmp_path / "c.h5")["data/x"], a["data/x"])


# ----------------------------------------------------------------------------- divergence


def test_divergence_exits_3(tmp_path, capsys):
    out = tmp_path / "d.h5"
    cfg = write_config(tmp_path, {"model.feature": '"linear"', "train.dt": "50.0",
                                  "train.time": "1000.0", "train.record_every": "1"})
    rc, stdout, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 3 and "status=diverged" in stdout and "diverged" in err
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "diverged"
        assert f["snapshots/s"].shape[0] >= 1 and np.all(np.isfinite(f["snapshots/theta"][()]))
        loss = f["history/loss"][()]
        assert not np.isfinite(loss[-1]) or loss[-1] > 1e6 * loss[0]
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 2 and "diverged" in err


# ----------------------------------------------------------------------------- interrupt / resume


@pytest.mark.parametrize("stop_after", [1, 2, 4])
def test_interrupt_then_resume_is_bit_identical(tmp_path, capsys, stop_after):
    # records: steps 0, 2, 4, 5 (snapshot only), 6, 8, 10
    cfg = write_config(tmp_path, {"train.method": '"heun"', "train.temperature": "0.01"})
    ref, out = tmp_path / "ref.h5", tmp_path / "int.h5"
    assert cli(capsys, "run", cfg, "-o", ref, "-q")[0] == 0
    rc, stdout, err = cli(capsys, "run", cfg, "-o", out, "-q", "--stop-after-records", stop_after)
    assert rc == 130 and "status=interrupted" in stdout and "--resume" in err
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "interrupted" and "final" not in f
    rc, stdout, _ = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 0 and "status=complete" in stdout
    a, b = history(ref), history(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "complete"
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 2 and "complete" in err


def test_resume_after_a_killed_process(tmp_path, capsys):
    """A file left with status "running" and records past its state resumes from the state.

    The crash-consistent writer never leaves records past its state (tests/test_faults.py
    kills real processes); files of older wflow versions could, and carried no checksums:
    this one is edited by hand and its checksums removed to look like one of those.
    """
    cfg = write_config(tmp_path, {"train.temperature": "0.01"})
    ref, out, mid = tmp_path / "ref.h5", tmp_path / "dead.h5", tmp_path / "mid.h5"
    assert cli(capsys, "run", cfg, "-o", ref, "-q")[0] == 0
    # What a process writes at its snapshot at step 5 (theta, step and Langevin key together).
    boundaries = wflow.build_run(wflow.load_config(cfg)).schedule.boundaries()
    n_to_5 = int(np.sum(boundaries <= 5))
    assert cli(capsys, "run", cfg, "-o", mid, "-q", "--stop-after-records", n_to_5)[0] == 130
    with h5py.File(mid, "r") as f:
        assert int(f["state/step"][()]) == 5
        key_at_5 = f["state/key"][()]
    # stop at step 8; the last snapshot (and /state) of a killed process would be at step 5
    assert cli(capsys, "run", cfg, "-o", out, "-q", "--stop-after-records", 6)[0] == 130
    with h5py.File(out, "r+") as f:
        assert int(f["state/step"][()]) == 8
        f.attrs["status"] = "running"
        f["state/theta"][...] = f["snapshots/theta"][1]
        f["state/step"][()] = 5
        f["state/key"][...] = key_at_5
        del f.attrs["attrs_sha256"], f["state"].attrs["sha256"]
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 0 and "no checksums" in err
    a, b = history(ref), history(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_needs_the_same_config(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "o.h5"
    assert cli(capsys, "run", cfg, "-o", out, "-q", "--stop-after-records", 2)[0] == 130
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume", "--set", "train.dt=0.05")
    assert rc == 2 and "train.dt = 0.05" in err and "0.1" in err
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "none.h5", "-q", "--resume")
    assert rc == 2 and "no run file" in err and not (tmp_path / "none.h5").exists()


def _wait_for(proc, buf, needle, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if needle in bytes(buf):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_interrupts_and_resume_finishes(tmp_path, capsys, sig):
    # sine data: the same numbers whether or not the process runs with x64 enabled
    cfg = write_config(tmp_path, {"data.kind": '"sine"', "train.time": "60.0",
                                  "train.record_every": "1"})
    out = tmp_path / "sig.h5"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "_wflow_entry", "run", cfg, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    buf = bytearray()
    reader = threading.Thread(target=lambda: [buf.extend(c) for c in iter(
        lambda: proc.stderr.read1(4096), b"")], daemon=True)
    reader.start()
    try:
        assert _wait_for(proc, buf, b"loss=", 120), bytes(buf).decode(errors="replace")
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert proc.returncode == 130, bytes(buf).decode(errors="replace")
    assert b"status=interrupted" in stdout and b"Traceback" not in bytes(buf)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "interrupted"
        n = f["history/s"].shape[0]
        step = int(f["state/step"][()])
    assert 1 <= n < 601 and step == n - 1
    rc, stdout, _ = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "complete"
        s = f["history/s"][()]
        assert s.shape == (601,) and np.all(np.diff(s) > 0) and f["final/prediction"].shape == (32, 1)
