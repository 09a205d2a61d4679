"""Generated hostile inputs: seeded random mutations of valid configs, data files, init files
and run files, each fed to the command line in-process (``wflow.cli.main``).

The contract every case is held to:

* the exit code is 0, 2, or 3 (a genuine divergence) -- never 1 (an internal error) and
  never a traceback; exit 2 prints exactly one ``wflow: error`` line;
* never a partly written file: after exit 2 a new output path does not exist and an
  existing run file is byte for byte what it was; after exit 0 or 3 the run file reads
  back through the validating reader (``_io.read_run``: checksums, shapes, consistency);
  no temporary or lock file is left beside it.

Families: ``config`` (keys of both a particle and a grid config set to hostile values,
deleted, unknown keys and sections added, the TOML text truncated or salted with bytes;
one to three mutations per case), ``data`` and ``init`` (the ``.npz`` files behind
``data.kind = "file"`` and ``init.kind = "file"``: wrong shapes, dtypes, non-finite and
huge values, missing arrays, damaged bytes, other file kinds), ``runfile`` (a valid
interrupted run file damaged by byte flips, truncation or h5py edits, then ``wflow run
--resume`` or ``wflow plot``), ``limits`` (output paths of run, plot, study and compare:
a trailing separator, an existing directory or file, a file where a folder should be,
new nested folders; and the memory limits of a container: a fake cgroup tree,
``WFLOW_CGROUP_ROOT``, with random, missing or malformed ``memory.max`` /
``memory.current`` and v1 values, and random ``--memory-limit`` sizes).

Mutations that leave a valid but long run (more than ``MAX_STEPS`` steps) are redrawn:
they are not hostile, only slow. The default run draws ``DEFAULT`` cases (a few hundred,
about two minutes on two cores); ``-m slow`` draws ``SLOW`` (over 1000). A failure names
the family, the case number and the mutation, so ``_case(family, seed)`` replays it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib

import h5py
import jax
import numpy as np
import pytest
from _helpers import datasets, toml_text

from wflow import _io
from wflow._config import load_config
from wflow.cli import main

MAX_STEPS = 400
DEFAULT = {"config": 120, "data": 40, "init": 40, "runfile": 50, "limits": 20}  # 270 cases
SLOW = {"config": 600, "data": 200, "init": 200, "runfile": 250, "limits": 150}  # 1400 cases

PARTICLES = """seed = 0
[data]
kind = "sine"
n = 16
dim = 2
noise = 0.0
[model]
feature = "neuron"
activation = "tanh"
bias = true
[init]
kind = "gaussian"
mean = 0.0
std = 1.0
[solver]
kind = "particles"
depth = "layers"
L = 2
M = 4
precision = "float32"
[train]
time = 0.4
dt = 0.1
method = "euler"
record_every = 1
snapshots = 2
[output]
overwrite = false
"""

GRID = """seed = 0
[data]
kind = "teacher"
n = 16
dim = 1
teacher_width = 2
teacher_depth = 1
[model]
feature = "linear"
dim = 1
[init]
kind = "gaussian"
std = 0.5
[solver]
kind = "grid"
depth = "layers"
L = 2
precision = "float64"
[solver.grid]
cells = 16
bounds = [-3.0, 3.0]
scheme = "muscl"
limiter = "vanleer"
cfl = 0.4
[train]
time = 0.2
dt = 0.05
method = "ssprk3"
record_every = 1
snapshots = 2
"""

# Values a hostile or careless user writes (TOML literals).
HOSTILE = [
    "0", "-1", "1", "2", "3", "7", "1e12", "9223372036854775807", "-9223372036854775808",
    "0.5", "-0.5", "1e-300", "1e308", "-1e308", "nan", "inf", "-inf", "true", "false", '""',
    '"x"', '"float64"', '"float16"', '"grid"', '"particles"', '"continuous"', '"layers"',
    '"neuron"', '"linear"', '"file"', '"point"', '"uniform"', '"adaptive"', '"heun"',
    '"ssprk3"', '"random"', '"upwind"', '"minmod"', '"teacher"', '"digits"', '"circles"',
    "[]", "[1, 2]", "[0.0, 0.0]", "[0.0, 0.0, 0.0, 0.0, 0.0]", "[[1]]", '["a"]', "[1e12, 1e12]",
    "[3.0, -3.0]", "{ a = 1 }", "1979-05-27", '"\\u0000"', '"/nonexistent/x.npz"', '"."',
]
UNKNOWN = ["colour", "Lr", "l", "m", "dtype", "steps", "size"]


def _tables(text: str) -> dict:
    """{section: {key: raw TOML value}} of a flat config text (the bases above)."""
    out, section = {"": {}}, ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
        elif "=" in line:
            key, _, value = line.partition("=")
            out[section][key.strip()] = value.strip()
    return out


def _render(tables: dict) -> str:
    """``_tables``' form back to TOML text (top-level keys first, then the sections)."""
    return toml_text({**tables.get("", {}), **{s: tab for s, tab in tables.items() if s}})


# Every key the resolved config knows, per section (so values are set on real keys too,
# not only the ones the bases spell out).
def _known_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for base in (PARTICLES, GRID):
            path = os.path.join(tmp, "c.toml")
            with open(path, "w") as fh:
                fh.write(base)
            config = load_config(path, [])
            for section, table in config.items():
                if not isinstance(table, dict):
                    keys.setdefault("", []).append(section)
                    continue
                for key, value in table.items():
                    if isinstance(value, dict):
                        keys.setdefault(f"{section}.{key}", []).extend(value)
                    elif key != "path" or section != "output":
                        keys.setdefault(section, []).append(key)
    return {s: sorted(set(v)) for s, v in keys.items()}


def _mutate_config(rng, text: str, known: dict) -> tuple[str, list[str]]:
    tables = _tables(text)
    what = []
    for _ in range(rng.integers(1, 4)):
        op = rng.choice(["set", "set", "set", "set", "delete", "unknown", "section", "drop",
                         "truncate", "bytes", "duplicate"])
        if op == "set":
            section = str(rng.choice(sorted(known)))
            key = str(rng.choice(known[section]))
            value = str(rng.choice(HOSTILE))
            tables.setdefault(section, {})[key] = value
            what.append(f"{section}.{key} = {value}")
        elif op == "delete":
            section = str(rng.choice([s for s in tables if tables[s]]))
            key = str(rng.choice(sorted(tables[section])))
            del tables[section][key]
            what.append(f"delete {section}.{key}")
        elif op == "unknown":
            section = str(rng.choice(sorted(tables)))
            key = str(rng.choice(UNKNOWN))
            tables[section][key] = str(rng.choice(HOSTILE))
            what.append(f"unknown {section}.{key}")
        elif op == "section":
            name = str(rng.choice(["optimizer", "Data", "solver.grid", "solver.extra", "train.x"]))
            tables.setdefault(name, {})["a"] = "1"
            what.append(f"section [{name}]")
        elif op == "drop":
            section = str(rng.choice([s for s in tables if s]))
            del tables[section]
            what.append(f"drop [{section}]")
        elif op == "duplicate":
            what.append("duplicate key")
            text = _render(tables)
            line = str(rng.choice([ln for ln in text.splitlines() if "=" in ln]))
            return text + line + "\n", what
        else:
            text = _render(tables)
            cut = int(rng.integers(0, len(text)))
            if op == "truncate":
                what.append(f"truncate at {cut}")
                return text[:cut], what
            junk = bytes(rng.integers(0, 256, size=int(rng.integers(1, 8)), dtype=np.uint8))
            what.append(f"bytes {junk!r} at {cut}")
            return text[:cut] + junk.decode("latin-1") + text[cut:], what
    return _render(tables), what


def _too_long(text: str) -> bool:
    """A valid-looking config that asks for more than MAX_STEPS steps (redrawn, not hostile)."""
    try:
        train = tomllib.loads(text).get("train", {})
    except (tomllib.TOMLDecodeError, UnicodeError):
        return False
    time_, dt = train.get("time", 1.0), train.get("dt", 0.1)
    try:
        return bool(float(dt) > 0 and float(time_) / float(dt) > MAX_STEPS)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return False


# ----------------------------------------------------------------------------- array files


def _mutate_arrays(rng, arrays: dict[str, np.ndarray]) -> tuple[dict, str]:
    """One hostile change to a set of named arrays."""
    arrays = {k: np.array(v) for k, v in arrays.items()}
    name = str(rng.choice(sorted(arrays)))
    a = arrays[name]
    op = str(rng.choice(["shape", "dtype", "nan", "inf", "huge", "missing", "extra", "empty",
                         "scalar", "float32max"]))
    if op == "shape":
        shape = list(a.shape)
        i = int(rng.integers(0, len(shape)))
        choice = int(rng.integers(0, 4))
        if choice == 0:
            shape[i] = max(0, shape[i] + int(rng.choice([-1, 1, 3])))
            a = np.resize(a, shape)
        elif choice == 1:
            a = a.reshape(-1)
        elif choice == 2:
            a = a[..., None]
        else:
            a = np.swapaxes(a, 0, -1).copy()
    elif op == "dtype":
        kind = str(rng.choice(["int", "bool", "complex", "str", "float16", "object"]))
        a = {"int": lambda: a.astype(np.int64), "bool": lambda: a > 0,
             "complex": lambda: a.astype(np.complex128), "str": lambda: a.astype("U8"),
             "float16": lambda: a.astype(np.float16),
             "object": lambda: np.array([None] * a.size, dtype=object)}[kind]()
        op = f"dtype {kind}"
    elif op in ("nan", "inf", "huge", "float32max"):
        a = a.astype(np.float64).copy()
        value = {"nan": np.nan, "inf": -np.inf, "huge": 1e300, "float32max": 1e39}[op]
        if a.size:
            a.flat[int(rng.integers(0, a.size))] = value
    elif op == "missing":
        del arrays[name]
        return arrays, f"missing {name}"
    elif op == "extra":
        arrays["extra"] = np.zeros(3)
        return arrays, "extra array"
    elif op == "empty":
        a = a[:0]
    elif op == "scalar":
        a = np.float64(1.0)
    arrays[name] = a
    return arrays, f"{name}: {op}"


def _write_array_file(rng, folder, arrays: dict) -> tuple[str, str]:
    """The arrays as an .npz, or (sometimes) a damaged .npz / another kind of file."""
    path = os.path.join(folder, "arrays.npz")
    kind = str(rng.choice(["npz"] * 6 + ["truncated", "flipped", "empty", "h5", "text",
                                          "directory"]))
    if kind == "directory":
        os.makedirs(path)
        return path, kind
    if kind == "h5":
        path = os.path.join(folder, "arrays.h5")
        with h5py.File(path, "w") as f:
            for name, a in arrays.items():
                if a.dtype != object:
                    f[name] = a if a.dtype.kind != "U" else a.astype("S8")
        return path, kind
    if kind == "text":
        with open(path, "w") as fh:
            fh.write("x,y\n1,2\n")
        return path, kind
    np.savez(path, **arrays)  # object arrays are pickled: the reader must refuse them
    data = bytearray(_read_bytes(path))
    if kind == "truncated":
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == "flipped":
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] ^= 0xFF
    elif kind == "empty":
        data = bytearray()
    with open(path, "wb") as fh:
        fh.write(data)
    return path, kind


# ----------------------------------------------------------------------------- the contract


def _read_bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _digest(path) -> str | None:
    return hashlib.sha256(_read_bytes(path)).hexdigest() if os.path.isfile(path) else None


def _call(capsys, argv) -> tuple[int, str]:
    x64 = jax.config.jax_enable_x64  # a float64 case must not leak into the next one
    try:
        rc = main(argv)
    finally:
        jax.config.update("jax_enable_x64", x64)
    _, err = capsys.readouterr()
    return rc, err


def _check(rc, err, out, before, label, *, allowed=(0, 2, 3)):
    assert "Traceback" not in err, f"{label}: traceback\n{err[-2000:]}"
    assert rc in allowed, f"{label}: exit {rc}\n{err[-2000:]}"
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("wflow: error")]
        assert len(lines) == 1, f"{label}: {len(lines)} error lines\n{err[-2000:]}"
        assert _digest(out) == before, f"{label}: exit 2 but {out} changed"
    elif rc in (0, 3):
        _io.read_run(out)  # RunFileError (a failing test) if the file is not valid
    folder, base = os.path.split(out)
    left = [e for e in os.listdir(folder) if e.startswith(f".{base}.") or e == base + ".lock"]
    assert not left, f"{label}: left behind {left}"


def _case_config(capsys, tmp, rng, known, label):
    base = PARTICLES if rng.random() < 0.7 else GRID
    while True:
        text, what = _mutate_config(rng, base, known)
        if not _too_long(text):
            break
    cfg = os.path.join(tmp, "cfg.toml")
    with open(cfg, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)
    out = os.path.join(tmp, "out.h5")
    rc, err = _call(capsys, ["run", cfg, "-o", out, "-q"])
    _check(rc, err, out, None, f"{label} {what}")
    return rc


def _case_file(capsys, tmp, rng, family, label):
    if family == "data":
        x = np.random.default_rng(0).normal(size=(16, 2))
        arrays = {"x": x, "y": np.sin(x[:, :1])}
        key, extra = "data", '\nkind = "file"\ndim = 2\nout_dim = 1\npath = "{path}"\n'
    else:
        arrays = {"theta": np.random.default_rng(0).normal(size=(2, 4, 5))}
        key, extra = "init", '\nkind = "file"\npath = "{path}"\n'
    arrays, what = _mutate_arrays(rng, arrays)
    path, kind = _write_array_file(rng, tmp, arrays)
    tables = _tables(PARTICLES)
    text = _render({s: t for s, t in tables.items() if s != key})
    text += f"[{key}]" + extra.format(path=path)
    if family == "init":
        text += "mean = 0.0\nstd = 1.0\n"
    cfg = os.path.join(tmp, "cfg.toml")
    with open(cfg, "w") as fh:
        fh.write(text)
    out = os.path.join(tmp, "out.h5")
    rc, err = _call(capsys, ["run", cfg, "-o", out, "-q"])
    _check(rc, err, out, None, f"{label} {what} ({kind})")
    return rc


def _damage_run_file(rng, path) -> str:
    op = str(rng.choice(["flip", "flip", "truncate", "delete", "resize", "replace", "attr",
                         "attr_delete", "group"]))
    if op in ("flip", "truncate"):
        data = bytearray(_read_bytes(path))
        if op == "flip":
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        else:
            data = data[: int(rng.integers(0, len(data)))]
        with open(path, "wb") as fh:
            fh.write(data)
        return op
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        name = str(rng.choice(names))
        if op == "delete":
            del f[name]
        elif op == "resize":
            ds = f[name]
            if ds.maxshape and ds.maxshape[0] is None:
                ds.resize(max(0, ds.shape[0] + int(rng.choice([-2, -1, 1, 5]))), axis=0)
            else:
                del f[name]
                f[name] = np.zeros(3)
        elif op == "replace":
            del f[name]
            f[name] = [np.float64(np.nan), "text", np.zeros((2, 2, 2)), np.int64(-5),
                       np.zeros(0)][int(rng.integers(0, 5))]
        elif op == "attr":
            attr = str(rng.choice(sorted(f.attrs)))
            f.attrs[attr] = [np.nan, "garbage", -1, np.zeros(3), "complete", "interrupted"][
                int(rng.integers(0, 6))]
            name = attr
        elif op == "attr_delete":
            name = str(rng.choice(sorted(f.attrs)))
            del f.attrs[name]
        else:
            f.create_group(f"extra{rng.integers(0, 100)}")
            name = "/"
    return f"{op} {name}"


def _case_runfile(capsys, tmp, rng, stopped, cfg, reference, label):
    path = os.path.join(tmp, "run.h5")
    shutil.copyfile(stopped, path)
    what = _damage_run_file(rng, path)
    before = _digest(path)
    resume = rng.random() < 0.75
    if resume:
        rc, err = _call(capsys, ["run", cfg, "-o", path, "-q", "--resume"])
    else:
        rc, err = _call(capsys, ["plot", path, "-o", os.path.join(tmp, "plots")])
    label = f"{label} {what} ({'resume' if resume else 'plot'})"
    assert "Traceback" not in err, f"{label}: traceback\n{err[-2000:]}"
    assert rc in (0, 2), f"{label}: exit {rc}\n{err[-2000:]}"
    if rc == 2:
        assert _digest(path) == before, f"{label}: exit 2 but the file changed"
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("wflow: error")]
        assert len(lines) == 1, f"{label}: {err[-2000:]}"
    elif resume:
        # A resume that went through: the damage was harmless (free space, an extra group),
        # so the run must end exactly as the uninterrupted one -- never silently different.
        got = datasets(path)
        assert got.keys() >= reference.keys(), f"{label}: {reference.keys() - got.keys()}"
        for name, value in reference.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{label}: {name}")
    return rc


_CGROUP_VALUES = ["max", "0", "1", "100000000", "300000000", "1000000000", "9223372036854771712",
                  "", "garbage", "-5", "1e9", " 400000000 \n", "18446744073709551615"]


def _fake_cgroup(rng, root) -> str:
    """A random cgroup tree: v2 files at the top and/or v1 files in memory/, some malformed."""
    os.makedirs(root)
    for folder, limit, used in (("", "memory.max", "memory.current"),
                                ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes")):
        if rng.random() < 0.6:
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for name in (limit, used):
                if rng.random() < 0.9:
                    with open(os.path.join(root, folder, name), "w") as fh:
                        fh.write(str(rng.choice(_CGROUP_VALUES)))
    return root


def _hostile_output(rng, tmp) -> tuple[str, str]:
    """(an output path, what it is): hostile or merely unusual."""
    os.makedirs(os.path.join(tmp, "dir"))
    with open(os.path.join(tmp, "file"), "w") as fh:
        fh.write("not a folder")
    kind = str(rng.choice(["slash", "dir", "under_file", "nested", "spaces", "exists"]))
    path = {"slash": os.path.join(tmp, "new") + os.sep, "dir": os.path.join(tmp, "dir"),
            "under_file": os.path.join(tmp, "file", "out.h5"),
            "nested": os.path.join(tmp, "a", "b", "out.h5"),
            "spaces": os.path.join(tmp, "with space é", "out.h5"),
            "exists": os.path.join(tmp, "file")}[kind]
    return path, kind


def _case_limits(capsys, tmp, rng, stopped, cfg, reference, label, monkeypatch):
    """Output paths and memory limits (module docstring, family ``limits``)."""
    what = []
    if rng.random() < 0.5:
        monkeypatch.setenv("WFLOW_CGROUP_ROOT", _fake_cgroup(rng, os.path.join(tmp, "cgroup")))
        what.append("cgroup " + " ".join(sorted(
            f"{os.path.relpath(os.path.join(d, f), tmp)}={open(os.path.join(d, f)).read()!r}"
            for d, _, fs in os.walk(os.path.join(tmp, "cgroup")) for f in fs)))
    else:
        monkeypatch.delenv("WFLOW_CGROUP_ROOT", raising=False)
    out, kind = _hostile_output(rng, tmp)
    what.append(f"output {kind}")
    verb = str(rng.choice(["run", "run", "run", "plot", "study", "compare"]))
    if verb in ("study", "compare") and kind in ("nested", "spaces"):
        verb = "run"  # a valid path would compute a whole study: not hostile, only slow
    extra = []
    if verb == "run" and rng.random() < 0.3:
        extra = ["--memory-limit", str(rng.choice(["1", "1KB", "300MB", "1e12", "none", "-1",
                                                   "0", "lots", "1e400", "nan"]))]
        what.append(" ".join(extra))
    before = _digest(out)
    if verb == "run":
        argv = ["run", cfg, "-o", out, "-q", *extra]
    elif verb == "plot":
        argv = ["plot", stopped, "-o", out]
    else:
        text = _render(_tables(PARTICLES))
        if verb == "compare":
            text += "[compare]\noptimizers = [\"sgd\"]\nrecords = 2\n"
        else:
            text += ("[study]\nL = [2]\nM = [4]\nseeds = 1\ntimes = [0.4]\n"
                     'reference = "particles"\nreference_M = 8\nreference_depth = "layers"\n')
        sub = os.path.join(tmp, f"{verb}.toml")
        with open(sub, "w") as fh:
            fh.write(text)
        argv = ([verb, sub, "-o", out, "-q", "--no-plots"] if verb == "compare"
                else ["study", "limit", sub, "-o", out, "-q", "--no-plot"])
    rc, err = _call(capsys, argv)
    label = f"{label} {verb}: {'; '.join(what)}"
    assert "Traceback" not in err, f"{label}: traceback\n{err[-2000:]}"
    assert rc in (0, 2), f"{label}: exit {rc}\n{err[-2000:]}"
    must_fail = ("under_file", "exists") if verb == "plot" else ("slash", "dir", "under_file",
                                                                   "exists")
    if kind in must_fail:
        assert rc == 2, f"{label}: exit {rc}, expected 2\n{err[-2000:]}"
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("wflow: error")]
        assert len(lines) == 1, f"{label}: {err[-2000:]}"
        assert _digest(out) == before, f"{label}: exit 2 but {out} changed"
        assert not os.path.exists(os.path.join(tmp, "new")), f"{label}: created a folder"
    elif verb == "run":
        _io.read_run(out)
    elif verb == "plot":
        assert os.listdir(out), f"{label}: no figures"
    return rc


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A valid run file of PARTICLES stopped after three records (status "interrupted")."""
    tmp = tmp_path_factory.mktemp("stopped")
    cfg = tmp / "cfg.toml"
    cfg.write_text(PARTICLES)
    path = tmp / "stopped.h5"
    assert main(["run", str(cfg), "-o", str(path), "-q", "--stop-after-records", "3"]) == 130
    done = tmp / "done.h5"
    assert main(["run", str(cfg), "-o", str(done), "-q"]) == 0
    return str(path), str(cfg), datasets(done)


def _campaign(capsys, tmp_path, stopped_run, family, n, seed, monkeypatch=None):
    known = _known_keys()
    codes: dict[int, int] = {}
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        tmp = tmp_path / f"{family}{i}"
        tmp.mkdir()
        label = f"{family} case {i} (seed {seed}):"
        if family == "config":
            rc = _case_config(capsys, str(tmp), rng, known, label)
        elif family in ("data", "init"):
            rc = _case_file(capsys, str(tmp), rng, family, label)
        elif family == "limits":
            rc = _case_limits(capsys, str(tmp), rng, *stopped_run, label, monkeypatch)
        else:
            rc = _case_runfile(capsys, str(tmp), rng, *stopped_run, label)
        codes[rc] = codes.get(rc, 0) + 1
        shutil.rmtree(tmp, ignore_errors=True)
    return codes


@pytest.mark.parametrize("family", sorted(DEFAULT))
def test_generated_hostile_inputs(capsys, tmp_path, stopped_run, family, monkeypatch):
    codes = _campaign(capsys, tmp_path, stopped_run, family, DEFAULT[family], seed=2026,
                      monkeypatch=monkeypatch)
    # The generator must exercise both outcomes where both are possible (else it tests nothing).
    assert codes.get(2, 0) > 0
    if family != "runfile":
        assert codes.get(0, 0) + codes.get(3, 0) > 0, codes


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SLOW))
def test_generated_hostile_inputs_campaign(capsys, tmp_path, stopped_run, family, monkeypatch):
    _campaign(capsys, tmp_path, stopped_run, family, SLOW[family], seed=11,
              monkeypatch=monkeypatch)
