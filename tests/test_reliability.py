"""Reliability in-process: damaged and hand-edited files, the lock, the memory preflight,
hostile data / init / config sources, run-time failures, and generated hostile inputs.

Fault injection with real processes (signals, SIGKILL at random instants) is in
tests/test_faults.py.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time

import _helpers
import h5py
import numpy as np
import pytest
from _helpers import cli, datasets

from wflow import _io, _preflight
from wflow.cli import main

BASE = {
    "seed": "0",
    "data": {"kind": '"sine"', "n": "32", "dim": "2"},
    "model": {"feature": '"neuron"', "activation": '"tanh"'},
    "init": {"kind": '"gaussian"', "std": "1.0"},
    "solver": {"L": "2", "M": "8"},
    "train": {"time": "1.0", "dt": "0.1", "record_every": "2", "snapshots": "3"},
}


def toml_text(edits=None, base=BASE):
    return _helpers.toml_text(base, edits)


def write_config(folder, edits=None, name="cfg.toml"):
    path = folder / name
    path.write_text(toml_text(edits))
    return str(path)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("wflow: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_same_run(a, b):
    x, y = datasets(a), datasets(b)
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A complete run and an interrupted one (same config), written once."""
    tmp = tmp_path_factory.mktemp("runs")
    cfg = write_config(tmp)
    done, stopped = tmp / "done.h5", tmp / "stopped.h5"
    assert main(["run", cfg, "-o", str(done), "-q"]) == 0
    assert main(["run", cfg, "-o", str(stopped), "-q", "--stop-after-records", "3"]) == 130
    return cfg, done, stopped


# ----------------------------------------------------------------------------- checksums


def _dataset_regions(path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges (offset, size) holding each dataset's values: its chunks (chunked) or its
    object header (compact: the values live there)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            layout = obj.id.get_create_plist().get_layout()
            if layout == h5py.h5d.CHUNKED:
                n = obj.id.get_num_chunks()
                out[name] = [(c.byte_offset, c.size) for c in
                             (obj.id.get_chunk_info(i) for i in range(n))]
            else:
                info = h5py.h5o.get_info(obj.id)
                out[name] = [(info.addr, info.hdr.space.total)]
        f.visititems(visit)
    return out


def _flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def test_every_dataset_is_protected(runs):
    _, done, _ = runs
    with h5py.File(done, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert _io._protected(obj), name
        f.visititems(visit)
        assert f.id.get_create_plist() is not None


@pytest.mark.parametrize("which", ["done", "stopped"])
def test_flipped_byte_in_every_dataset_is_detected(runs, tmp_path, capsys, which):
    cfg, done, stopped = runs
    source = done if which == "done" else stopped
    regions = _dataset_regions(source)
    assert {"history/loss", "snapshots/theta", "state/theta", "state/step", "state/key",
            "data/x", "data/y"} <= set(regions)
    for name, spans in regions.items():
        for k, (offset, size) in enumerate(spans[:3]):
            bad = tmp_path / f"bad_{name.replace('/', '_')}_{k}.h5"
            shutil.copyfile(source, bad)
            _flip(bad, offset + size // 2)
            with pytest.raises(_io.RunFileError) as e:
                _io.read_run(str(bad))
            msg = str(e.value)
            assert name in msg or name.split("/")[0] in msg, (name, msg)
            if which == "done" and k == 0:
                rc, _, err = cli(capsys, "plot", bad, "-o", tmp_path / "figs")
                assert rc == 2 and name.split("/")[0] in one_error_line(err)
                assert not (tmp_path / "figs").exists()
            if which == "stopped" and k == 0:
                before = bad.read_bytes()
                rc, _, err = cli(capsys, "run", cfg, "-o", bad, "-q", "--resume")
                assert rc == 2 and name.split("/")[0] in one_error_line(err), (name, err)
                assert bad.read_bytes() == before  # nothing written to a damaged file


def test_flipped_config_text_is_detected(runs, tmp_path):
    _, done, _ = runs
    data = bytearray(done.read_bytes())
    i = data.find(b'kind = "sine"')
    assert i > 0
    data[i + 9] ^= 0x01  # "sine" -> "rine": still valid TOML, a different run
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(_io.RunFileError, match="root attributes"):
        _io.read_run(str(bad))


def test_random_byte_flips_are_detected_or_harmless(runs, tmp_path, n_flips=150):
    """Any flipped byte either makes read_run fail with one line, or changes nothing read."""
    _, done, _ = runs
    reference = _io.read_run(str(done))
    size = os.path.getsize(done)
    rng = np.random.default_rng(1)
    detected = 0
    for offset in rng.integers(0, size, n_flips):
        bad = tmp_path / "flip.h5"
        shutil.copyfile(done, bad)
        _flip(bad, int(offset))
        try:
            got = _io.read_run(str(bad))
        except _io.RunFileError as e:
            assert len(str(e).splitlines()) == 1
            detected += 1
            continue
        assert got.keys() == reference.keys(), offset
        for name in reference:
            if name == "attrs":
                for k in reference["attrs"]:
                    if k not in _io.MUTABLE_ATTRS:
                        assert str(got["attrs"][k]) == str(reference["attrs"][k]), (offset, k)
            else:
                np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{offset}")
    assert detected > 0


@pytest.mark.slow
def test_every_byte_flip_is_detected_or_harmless(runs, tmp_path):
    """Exhaustive: every byte of a small run file (slow: ~one read per byte)."""
    _, done, _ = runs
    reference = _io.read_run(str(done))
    data = done.read_bytes()
    bad = tmp_path / "flip.h5"
    for offset in range(len(data)):
        mutated = bytearray(data)
        mutated[offset] ^= 0x5A
        bad.write_bytes(bytes(mutated))
        try:
            got = _io.read_run(str(bad))
        except _io.RunFileError:
            continue
        for name in reference:
            if name != "attrs":
                np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{offset}")
            else:
                for k in reference["attrs"]:
                    if k not in _io.MUTABLE_ATTRS:
                        assert str(got["attrs"][k]) == str(reference["attrs"][k]), (offset, k)


# ----------------------------------------------------------------------------- hand edits


def _edited(source, tmp_path, edit):
    path = tmp_path / "edited.h5"
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(name, value):
    def edit(f):
        if name in f:
            del f[name]
        f[name] = value
    return edit


HAND_EDITS = [
    ("scalar-history", _replace("history/loss", 1.0), "/history/loss"),
    ("short-history", _replace("history/loss", np.zeros(2)), "/history/loss"),
    ("string-history", _replace("history/s", np.array([b"a"] * 6)), "/history/s"),
    ("k-zero", _replace("snapshots/theta", np.zeros((3, 2, 8, 0), np.float32)),
     "/snapshots/theta"),
    ("prediction-rows", _replace("final/prediction", np.zeros((31, 1), np.float32)),
     "/final/prediction"),
    ("vector-step", _replace("state/step", np.array([3, 4])), "/state/step"),
    ("string-step", _replace("state/step", "ten"), "/state/step"),
    ("key-shape", _replace("state/key", np.zeros(3, np.uint32)), "/state/key"),
    ("theta-wrong-M", _replace("state/theta", np.zeros((2, 7, 5), np.float32)), "/state/theta"),
    ("x-1d", _replace("data/x", np.zeros(32)), "/data/x"),
    ("no-history", lambda f: f.__delitem__("history"), "/history"),
    ("status", lambda f: f.attrs.__setitem__("status", "great"), "status"),
    ("format_version", lambda f: f.attrs.__setitem__("format_version", "one"), "format_version"),
]


@pytest.mark.parametrize("edit, needle", [c[1:] for c in HAND_EDITS], ids=[c[0] for c in HAND_EDITS])
def test_hand_edited_files_exit_2(runs, tmp_path, capsys, edit, needle):
    cfg, done, stopped = runs
    for source, verb in ((done, "plot"), (stopped, "resume")):
        path = _edited(source, tmp_path, edit)
        with pytest.raises(_io.RunFileError, match=needle.replace("/", ".")):
            _io.read_run(str(path))
        if verb == "plot":
            rc, _, err = cli(capsys, "plot", path, "-o", tmp_path / "figs")
        else:
            rc, _, err = cli(capsys, "run", cfg, "-o", path, "-q", "--resume")
        assert rc == 2 and needle in one_error_line(err), err


GRID_EDITS = {
    "data.kind": '"teacher"', "data.n": "16", "data.dim": "1", "data.teacher_width": "2",
    "data.teacher_depth": "1", "model.feature": '"linear"', "model.activation": None,
    "init.std": "0.5", "solver.kind": '"grid"', "solver.M": None, "solver.precision": '"float64"',
    "train.method": '"ssprk3"', "train.time": "0.6", "train.dt": "0.05", "train.record_every": "1",
}


def test_grid_runs_are_checkpointed_protected_and_resume_bit_identical(tmp_path, capsys):
    """The grid solver's run files (/state/rho, /snapshots/rho, /grid/...) get the same
    guarantees: a stopped run resumes to the uninterrupted file, a flipped byte in the
    density state or in the grid axes is refused with exit 2 and the file left as it was."""
    text = toml_text(GRID_EDITS) + "[solver.grid]\ncells = 24\nbounds = [-3.0, 3.0]\n"
    cfg = tmp_path / "grid.toml"
    cfg.write_text(text)
    done, stopped = tmp_path / "done.h5", tmp_path / "stopped.h5"
    assert cli(capsys, "run", cfg, "-o", done, "-q")[0] == 0
    assert cli(capsys, "run", cfg, "-o", stopped, "-q", "--stop-after-records", "4")[0] == 130
    regions = _dataset_regions(stopped)
    assert {"state/rho", "snapshots/rho", "grid/axis_0", "history/wall_mass"} <= set(regions)
    for name in ("state/rho", "snapshots/rho", "grid/axis_0"):
        bad = tmp_path / f"bad_{name.replace('/', '_')}.h5"
        shutil.copyfile(stopped, bad)
        offset, size = regions[name][0]
        _flip(bad, offset + size // 2)
        before = bad.read_bytes()
        rc, _, err = cli(capsys, "run", cfg, "-o", bad, "-q", "--resume")
        assert rc == 2 and name.split("/")[0] in one_error_line(err), (name, err)
        assert bad.read_bytes() == before
    assert cli(capsys, "run", cfg, "-o", stopped, "-q", "--resume")[0] == 0
    assert_same_run(stopped, done)



# ----------------------------------------------------------------------------- the lock


def test_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "o.h5"
    with _io.OutputLock(out):
        for extra in ([], ["--set", "output.overwrite=true"]):
            rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", *extra)
            assert rc == 2 and str(os.getpid()) in one_error_line(err) and "o.h5" in err
            assert not out.exists()
    assert not os.path.exists(f"{out}.lock")
    assert cli(capsys, "run", cfg, "-o", out, "-q")[0] == 0
    with _io.OutputLock(out):
        before = out.read_bytes()
        rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--set", "output.overwrite=true")
        assert rc == 2 and "writing" in err and out.read_bytes() == before
        rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
        assert rc == 2 and str(os.getpid()) in err


def test_lock_of_a_dead_process_is_free(tmp_path):
    """A stale lock file (its holder died) does not block: flock died with the process."""
    out = tmp_path / "o.h5"
    (tmp_path / "o.h5.lock").write_text("999999\n")
    with _io.OutputLock(out) as lock:
        assert lock.held
    assert not (tmp_path / "o.h5.lock").exists()


# ----------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("setting, key", [
    ("solver.L=9223372036854775808", "solver.L"),
    ("data.n=1000000000000", "data.n"),
    ("model.dim=10000000000", "model.dim"),
    ("solver.M=1000000000", "solver.M"),
])
def test_preflight_refuses_sizes_quickly(tmp_path, capsys, setting, key):
    cfg = write_config(tmp_path)
    t0 = time.perf_counter()
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q", "--set", setting)
    elapsed = time.perf_counter() - t0
    line = one_error_line(err)
    assert rc == 2 and elapsed < 2.0, elapsed
    assert key in line and "memory" in line and "available" in line and "--memory-limit" in line
    assert os.listdir(tmp_path) == ["cfg.toml"]


def test_preflight_limit_override_and_disk(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q", "--memory-limit", "1MB")
    assert rc == 2 and "--memory-limit = 977 KiB" in one_error_line(err)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q", "--memory-limit", "lots")
    assert rc == 2 and "--memory-limit" in one_error_line(err)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "a.h5", "-q", "--memory-limit", "none")
    assert rc == 0
    monkeypatch.setattr(_preflight, "_free_disk", lambda path: 1000)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")
    line = one_error_line(err)
    assert rc == 2 and "output.path" in line and "disk" in line
    assert not (tmp_path / "o.h5").exists()


def test_preflight_honours_ulimit_v(tmp_path):
    """3e7 samples (about 4.4 GiB) under a 4 GB address-space limit: refused before anything
    is built (MemAvailable alone would accept it), one line naming RLIMIT_AS."""
    import subprocess
    import sys

    if _preflight.memory_limits()[0][1] < 8 * 2**30:
        pytest.skip("needs 8 GiB MemAvailable, so that the address-space limit is the smallest")
    cfg = write_config(tmp_path, {"data.n": "30000000"})
    out = tmp_path / "o.h5"
    cmd = f"ulimit -v 4000000 && exec {sys.executable} -m _wflow_entry run {cfg} -o {out} -q"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and proc.stderr.strip() == line, proc.stderr
    assert "memory" in line and "ulimit -v (RLIMIT_AS)" in line and "data.n" in line
    assert not out.exists()


def _fake_cgroup(root, v2=None, v1=None):
    """A cgroup file system at ``root``: v2 (memory.max, memory.current) at its top, v1
    (memory.limit_in_bytes, memory.usage_in_bytes) in memory/."""
    root.mkdir()
    if v2 is not None:
        (root / "memory.max").write_text(f"{v2[0]}\n")
        (root / "memory.current").write_text(f"{v2[1]}\n")
    if v1 is not None:
        (root / "memory").mkdir()
        (root / "memory" / "memory.limit_in_bytes").write_text(f"{v1[0]}\n")
        (root / "memory" / "memory.usage_in_bytes").write_text(f"{v1[1]}\n")
    return str(root)


@pytest.mark.parametrize("version, needle", [("v2", "cgroup memory.max 300 MiB minus "
                                                     "memory.current 100 MiB"),
                                             ("v1", "cgroup memory.limit_in_bytes 300 MiB minus "
                                                     "memory.usage_in_bytes 100 MiB")])
def test_preflight_honours_the_cgroup_limit(tmp_path, capsys, monkeypatch, version, needle):
    """A container's or batch job's memory limit (a fake cgroup tree, WFLOW_CGROUP_ROOT):
    300 MiB with 100 MiB used leaves 200 MiB, below this run's ~260 MiB: exit 2 naming the
    limit; "max" (v2) or the v1 'unlimited' value is no limit."""
    mib = 2**20
    limits = {version: (300 * mib, 100 * mib)}
    monkeypatch.setenv("WFLOW_CGROUP_ROOT", _fake_cgroup(tmp_path / "cg", **limits))
    assert _preflight.host_limit()[1] == 200 * mib
    cfg = write_config(tmp_path)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")
    line = one_error_line(err)
    assert rc == 2 and needle in line and "200 MiB available" in line, line
    assert not (tmp_path / "o.h5").exists()
    unlimited = {"v2": ("max", 100 * mib), "v1": (9223372036854771712, 100 * mib)}[version]
    monkeypatch.setenv("WFLOW_CGROUP_ROOT", _fake_cgroup(tmp_path / "cg2", **{version: unlimited}))
    assert all("cgroup" not in what for what, _ in _preflight.memory_limits())
    assert cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")[0] == 0


def test_preflight_estimate_is_exact_arithmetic():
    import tempfile

    from wflow._config import load_config

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.toml")
        with open(path, "w") as fh:
            fh.write(toml_text())
        config = load_config(path)
    base = _preflight.estimate(config)
    config["solver"]["M"] *= 1000
    bigger = _preflight.estimate(config)
    temps = next(p for p in bigger.parts if "(N, M)" in p.what)
    assert temps.bytes == 4 * 32 * 8000 * 4  # 4 N M b
    assert bigger.total > base.total
    # the grid hook: rho (n_t, *cells) and (N, C) temporaries scale with the cell count
    config["solver"]["kind"] = "grid"
    config["solver"]["grid"] = {"cells": [16, 16, 16]}
    g1 = _preflight.estimate(config)
    config["solver"]["grid"] = {"cells": [32, 32, 32]}
    g2 = _preflight.estimate(config)
    rho1 = next(p for p in g1.parts if p.what.startswith("density")).bytes
    rho2 = next(p for p in g2.parts if p.what.startswith("density")).bytes
    assert rho2 == 8 * rho1 and rho1 == 8 * 2 * 16**3 * 4
    assert any("solver.grid.cells" in p.keys for p in g2.parts)


# ----------------------------------------------------------------------------- data, init, config


def _data_files(folder):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    files = {}
    np.save(folder / "arr.npy", x)
    os.replace(folder / "arr.npy", folder / "renamed.npz")
    files["renamed-npy"] = "renamed.npz"
    np.savez_compressed(folder / "comp.npz", x=x, y=x[:, 0])
    raw = bytearray((folder / "comp.npz").read_bytes())
    for i in range(60, len(raw) - 200, 7):
        raw[i] ^= 0xFF
    (folder / "corrupt.npz").write_bytes(bytes(raw))
    files["corrupt-compressed"] = "corrupt.npz"
    (folder / "truncated.npz").write_bytes((folder / "comp.npz").read_bytes()[:150])
    files["truncated"] = "truncated.npz"
    np.savez(folder / "complex.npz", x=x + 1j, y=x[:, 0])
    files["complex-x"] = "complex.npz"
    np.savez(folder / "zerocols.npz", x=np.zeros((20, 0)), y=x[:, 0])
    files["zero-columns-x"] = "zerocols.npz"
    np.savez(folder / "zerocols_y.npz", x=x, y=np.zeros((20, 0)))
    files["zero-columns-y"] = "zerocols_y.npz"
    np.savez(folder / "huge.npz", x=x * 1e300, y=x[:, 0])
    files["overflow-float32"] = "huge.npz"
    np.savez(folder / "obj.npz", x=np.array([{"a": 1}] * 20, dtype=object), y=x[:, 0])
    files["object-array"] = "obj.npz"
    np.savez(folder / "bool.npz", x=x > 0, y=x[:, 0])
    files["bool-array"] = "bool.npz"
    with h5py.File(folder / "grp.h5", "w") as f:
        f.create_group("x")
        f["y"] = x[:, 0]
    files["h5-group"] = "grp.h5"
    return files


FILE_CASES = ["renamed-npy", "corrupt-compressed", "truncated", "complex-x", "zero-columns-x",
              "zero-columns-y", "overflow-float32", "object-array", "bool-array", "h5-group"]


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_data_files_exit_2(tmp_path, capsys, case):
    name = _data_files(tmp_path)[case]
    cfg = write_config(tmp_path, {"data.kind": '"file"', "data.path": f'"{name}"',
                                  "data.dim": None, "data.n": None})
    before = set(os.listdir(tmp_path))
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")
    assert rc == 2 and "data.path" in one_error_line(err), err
    assert set(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("edits, key", [
    ({"init.std": "1e300"}, "init.std"),
    ({"init.mean": "1e39"}, "init.mean"),
    ({"data.noise": "1e300"}, "data.noise"),
    ({"data.noise": "1e300", "solver.precision": '"float64"'}, "loss at s = 0"),
    ({"init.kind": '"file"', "init.path": '"big.npz"'}, "init.path"),
], ids=["init-std", "init-mean", "noise-float32", "noise-float64", "init-file"])
def test_values_the_precision_cannot_hold_exit_2(tmp_path, capsys, edits, key):
    np.savez(tmp_path / "big.npz", theta=np.full((2, 8, 5), 1e300))
    cfg = write_config(tmp_path, edits)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")
    assert rc == 2 and key in one_error_line(err), err
    assert not (tmp_path / "o.h5").exists()


def test_odd_config_sources_exit_2(tmp_path, capsys):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    rc, _, err = cli(capsys, "run", fifo, "-o", tmp_path / "o.h5")
    assert rc == 2 and "regular file" in one_error_line(err) and time.perf_counter() - t0 < 5
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    rc, _, err = cli(capsys, "run", deep, "-o", tmp_path / "o.h5")
    assert rc == 2 and "nested too deeply" in one_error_line(err)
    cfg = write_config(tmp_path)
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "--set",
                     "solver.L=" + "[" * 5000 + "]" * 5000)
    assert rc == 2 and "nested too deeply" in one_error_line(err)
    rc, _, err = cli(capsys, "run", "/dev/null", "-o", tmp_path / "o.h5")
    assert rc == 2 and "regular file" in one_error_line(err)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    rc, _, err = cli(capsys, "run", binary, "-o", tmp_path / "o.h5")
    assert rc == 2 and "UTF-8" in one_error_line(err)
    assert not (tmp_path / "o.h5").exists()


# ----------------------------------------------------------------------------- run-time failures


@pytest.mark.parametrize("error", ["memory", "resource_exhausted", "disk_full"])
def test_runtime_failure_is_a_clean_exit_and_resumable(tmp_path, capsys, monkeypatch, error):
    import jax

    from wflow import _integrate

    cfg = write_config(tmp_path, {"train.method": '"heun"', "train.temperature": "0.01",
                                  "output.checkpoint_every": "0.0"})
    ref, out = tmp_path / "ref.h5", tmp_path / "o.h5"
    assert cli(capsys, "run", cfg, "-o", ref, "-q")[0] == 0
    calls = {"n": 0}
    if error == "disk_full":
        real = _io.commit_h5

        def commit(*a, **k):
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **k)

        monkeypatch.setattr(_io, "commit_h5", commit)
    else:
        real = _integrate._advance_fixed

        def advance(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                if error == "memory":
                    raise MemoryError()
                raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                                 "1099511627776 bytes")
            return real(*a, **k)

        monkeypatch.setattr(_integrate, "_advance_fixed", advance)
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 4 and "Traceback" not in err, err
    monkeypatch.undo()
    attrs = _io.verify_run(str(out))
    if error == "disk_full":
        assert attrs["status"] == "running" and "No space left" in err
    else:
        assert attrs["status"] == "failed" and "out of memory" in attrs["failure"]
        assert "out of memory" in one_error_line(err)
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 0, err
    assert_same_run(ref, out)


# ----------------------------------------------------------------------------- numerical health


def test_energy_identity_with_l2(tmp_path, capsys):
    """dF/ds = -D for the regularized energy (exponential lambda(s)): the trapezoid rule on
    the recorded D matches the recorded F to second order in the step (Heun), and F falls."""
    residuals = []
    for dt in (0.02, 0.01):
        cfg = write_config(tmp_path, {"solver.precision": '"float64"', "train.method": '"heun"',
                                      "train.dt": str(dt), "train.time": "0.6",
                                      "train.record_every": "1", "train.l2": "0.3",
                                      "train.l2_schedule": '"exponential"', "train.l2_decay": "0.5",
                                      "init.std": "1.5"}, name=f"c{dt}.toml")
        out = tmp_path / f"e{dt}.h5"
        assert cli(capsys, "run", cfg, "-o", out, "-q")[0] == 0
        with h5py.File(out, "r") as f:
            s, F, D = (f[f"history/{n}"][()] for n in ("s", "energy", "dissipation"))
            E, R = f["history/loss"][()], f["history/stationarity"][()]
        assert np.all(np.diff(F) < 0) and np.all(D > 0)
        integral = np.concatenate([[0.0], np.cumsum(0.5 * (D[1:] + D[:-1]) * np.diff(s))])
        residuals.append(np.max(np.abs((F - F[0]) + integral)))
        # the unregularized residual R is not -dE/ds when l2 > 0 (docs/reliability.md's caveat)
        dE = np.gradient(E, s)
        assert np.max(np.abs(dE + R)) > 100 * residuals[-1]
    order = math.log2(residuals[0] / residuals[1])
    assert 1.7 < order < 2.3, (residuals, order)


def _circles(tmp_path, dt, on_increase="warn", name="c.toml"):
    """The issue's example: circles with d = 3 and Euler far past its stability limit."""
    return write_config(tmp_path, {"data.kind": '"circles"', "data.n": "256", "data.dim": None,
                                   "model.dim": "3", "solver.L": "8", "solver.M": "32",
                                   "train.dt": str(dt), "train.time": "60.0",
                                   "train.record_every": "2", "train.on_increase":
                                   f'"{on_increase}"'}, name=name)


def test_loss_rise_warns_with_a_stable_step_that_is_stable(tmp_path, capsys):
    out = tmp_path / "w.h5"
    rc, _, err = cli(capsys, "run", _circles(tmp_path, 0.5), "-o", out, "-q")
    assert rc == 0
    warning = [ln for ln in err.splitlines() if ln.startswith("wflow: warning: the loss rose")]
    assert len(warning) == 1 and "stability limit of euler" in warning[0]
    attrs = _io.verify_run(str(out))
    assert attrs["stability_warning"] in warning[0]
    stable = float(warning[0].split("dt < ")[1].split(" ")[0])
    assert 0.0 < stable < 0.5
    # the estimate is right: 0.8 x the stable step runs without a rise, or a warning
    out2 = tmp_path / "ok.h5"
    rc, _, err = cli(capsys, "run", _circles(tmp_path, round(0.8 * stable, 4), name="ok.toml"),
                     "-o", out2, "-q")
    assert rc == 0 and "rose" not in err
    loss = datasets(out2)["history/loss"]
    assert np.all(np.diff(loss) <= 0)
    # on_increase = "stop": a clean stop, status "unstable", exit 3, not resumable
    out3 = tmp_path / "stop.h5"
    cfg = _circles(tmp_path, 0.5, "stop", name="stop.toml")
    rc, _, err = cli(capsys, "run", cfg, "-o", out3, "-q")
    assert rc == 3 and _io.verify_run(str(out3))["status"] == "unstable"
    rc, _, err = cli(capsys, "run", cfg, "-o", out3, "-q", "--resume")
    assert rc == 2 and "unstable" in one_error_line(err)


def test_no_warning_for_a_stable_flow(tmp_path, capsys):
    cfg = write_config(tmp_path, {"data.kind": '"teacher"', "solver.L": "8", "solver.M": "32",
                                  "train.dt": "0.05", "train.time": "20.0",
                                  "train.record_every": "5"})
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "o.h5", "-q")
    assert rc == 0 and "rose" not in err


def test_stable_step_matches_the_jacobian_spectrum():
    """The power-iteration estimate against the eigenvalues of the full drift Jacobian
    (central differences column by column, float64)."""
    import jax
    import jax.numpy as jnp

    import wflow

    feature = wflow.Neuron(d=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2))
    y = np.sin(x[:, :1])
    problem = wflow.Problem(feature, jnp.asarray(x), jnp.asarray(y))
    theta = jnp.asarray(rng.normal(size=(2, 6, feature.k)))
    flow = wflow.ParticleFlow(problem, wflow.LayeredDepth(), wflow.Regularization(l2=0.1))
    drift = jax.jit(lambda th: flow.velocity(th, jnp.asarray(0.0))[1].ravel())
    n, eps = theta.size, 1e-6
    basis = np.eye(n).reshape((n,) + theta.shape)
    J = np.stack([(drift(theta + eps * e) - drift(theta - eps * e)) / (2 * eps) for e in basis],
                 axis=1)
    exact = np.max(np.abs(np.linalg.eigvals(J)))
    stable, rho = flow.stable_step(theta, 0.0, "euler")
    assert rho == pytest.approx(exact, rel=0.05) and stable == pytest.approx(2 / exact, rel=0.05)
    assert flow.stable_step(theta, 0.0, "adaptive") is None
