"""Output paths, and study and compare files under the run file's guarantees.

* A path ending in a separator or naming a directory, and a folder this process
  cannot write, are one line and exit 2 before any computation, for every verb
  that writes (``run``, ``study``, ``compare``, ``plot``).
* Study and compare files are locked while written (a second writer: exit 2
  naming the holder's pid) and sealed (attributes and every dataset); every reader
  verifies the seals, and ``study --resume`` refuses a damaged file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import h5py
import pytest
from _helpers import cli

from wflow import _io
from wflow._compare import check_compare_file
from wflow.study import read_study
from wflow.study._file import StudyFileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUN = """
seed = 0
[data]
kind = "sine"
n = 16
dim = 2
[solver]
L = 2
M = 4
[train]
time = 0.4
dt = 0.1
record_every = 2
snapshots = 3
"""

STUDY = """
seed = 0
[data]
kind = "teacher"
n = 16
dim = 2
[solver]
L = 2
M = 4
[train]
dt = 0.5
[study]
L = [2, 4]
M = [3, 4]
seeds = 2
times = [0.5, 1.0]
reference = "particles"
reference_M = 16
reference_depth = "layers"
bootstrap = 10
"""

COMPARE = """
seed = 0
[data]
kind = "teacher"
n = 32
dim = 2
[solver]
L = 2
M = 4
[train]
time = 0.2
dt = 0.05
[compare]
records = 2
optimizers = ["sgd"]
"""


def _configs(folder) -> dict:
    out = {}
    for name, text in (("run", RUN), ("study", STUDY), ("compare", COMPARE)):
        path = folder / f"{name}.toml"
        path.write_text(text)
        out[name] = str(path)
    return out


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wflow: error: "), err
    return lines[0]


def _commands(cfg: dict, run_file: str, study_file: str, target: str, folder_target: str):
    """Every writing verb with ``target`` as its output file (``folder_target`` for figures)."""
    return {
        "run": ["run", cfg["run"], "-o", target, "-q"],
        "study": ["study", "limit", cfg["study"], "-o", target, "-q", "--no-plot"],
        "compare": ["compare", cfg["compare"], "-o", target, "-q", "--no-plots"],
        "compare --plots": ["compare", cfg["compare"], "-o", folder_target + ".h5", "-q",
                            "--plots", target],
        "plot": ["plot", run_file, "-o", target],
        "study plot": ["study", "plot", study_file, "-o", target],
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run file and an interrupted study file, written once."""
    tmp = tmp_path_factory.mktemp("outputs")
    cfg = _configs(tmp)
    from wflow.cli import main

    run_file, study_file = str(tmp / "r.h5"), str(tmp / "s.h5")
    assert main(["run", cfg["run"], "-o", run_file, "-q"]) == 0
    assert main(["study", "limit", cfg["study"], "-o", study_file, "-q", "--no-plot",
                 "--stop-after", "1"]) == 130
    return cfg, run_file, study_file


# ----------------------------------------------------------------------------- paths


def test_a_path_naming_a_folder_is_refused(files, tmp_path, capsys):
    """``-o out/newname/`` names a folder, ``-o existing_dir`` too (``plot -o`` a file is not
    a folder): exit 2, one line, nothing created."""
    cfg, run_file, study_file = files
    (tmp_path / "exists").mkdir()
    (tmp_path / "afile").write_text("x")
    trailing = str(tmp_path / "newname") + os.sep
    for verb, args in _commands(cfg, run_file, study_file, trailing, str(tmp_path / "c")).items():
        if "plot" in verb:
            continue  # a figure folder may end with a separator
        rc, _, err = cli(capsys, *args)
        line = _one_line(err)
        assert rc == 2 and "ends with '/'" in line and "names a folder" in line, (verb, line)
        assert not (tmp_path / "newname").exists(), verb
    existing = str(tmp_path / "exists")
    for verb, args in _commands(cfg, run_file, study_file, existing, str(tmp_path / "c")).items():
        if "plot" in verb:
            continue
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and "is a directory" in _one_line(err), (verb, err)
        assert os.listdir(existing) == [], verb
    for verb, args in _commands(cfg, run_file, study_file, str(tmp_path / "afile"),
                                str(tmp_path / "c")).items():
        if "plot" not in verb:
            continue
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and "is a file, not a folder" in _one_line(err), (verb, err)
    assert sorted(os.listdir(tmp_path)) == ["afile", "exists"]


_DRIVER = textwrap.dedent("""
    import json, sys, time, io, contextlib
    from wflow.cli import main
    out = {}
    for verb, args in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stderr(err):
            rc = main(args)
        out[verb] = [rc, err.getvalue(), time.monotonic() - t0]
    print("RESULT " + json.dumps(out))
""")


def test_an_unwritable_folder_is_refused_before_any_computation(files, tmp_path):
    """Outputs in a ``chmod 555`` folder: exit 2 with one line, within a second (nothing is
    computed), nothing written, for every verb. Tests run as root, whom permission bits do
    not stop: the verbs then run without the capabilities that bypass them (setpriv)."""
    cfg, run_file, study_file = files
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permission bits cannot be enforced")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    commands = _commands(cfg, run_file, study_file, str(locked / "out.h5"), str(tmp_path / "c"))
    commands["compare --plots"][-1] = str(locked / "figures")
    commands["plot"][-1] = commands["study plot"][-1] = str(locked / "figures")
    commands["run (new subfolder)"] = ["run", cfg["run"], "-o", str(locked / "a" / "b.h5"), "-q"]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([*prefix, sys.executable, "-c", _DRIVER, json.dumps(commands)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    for verb, (rc, err, elapsed) in json.loads(lines[0][len("RESULT "):]).items():
        line = _one_line(err)
        assert rc == 2 and "is not writable" in line and str(locked) in line, (verb, line)
        assert elapsed < 5.0, (verb, elapsed)
    locked.chmod(0o755)
    assert os.listdir(locked) == []
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) & 0o200


# ----------------------------------------------------------------------------- locks, seals


def test_study_and_compare_files_have_one_writer(files, tmp_path, capsys):
    cfg, _, _ = files
    for verb, args in (("study", ["study", "limit", cfg["study"], "-q", "--no-plot"]),
                       ("compare", ["compare", cfg["compare"], "-q", "--no-plots"])):
        out = tmp_path / f"{verb}.h5"
        with _io.OutputLock(out):
            rc, _, err = cli(capsys, *args, "-o", out)
            line = _one_line(err)
            assert rc == 2 and f"process {os.getpid()} is writing this {verb} file" in line
            assert not out.exists()
        assert not os.path.exists(f"{out}.lock")


def _damage(path, how):
    with h5py.File(path, "r+") as f:
        if how == "attribute":
            f.attrs["seed"] = int(f.attrs["seed"]) + 1
        else:
            name = "errors/loss" if "errors/loss" in f else "sgd/loss"
            data = f[name][()]
            data.flat[0] = 0.125 if data.flat[0] != 0.125 else 0.25
            f[name][...] = data


@pytest.mark.parametrize("how, needle", [("attribute", "attrs_sha256"),
                                         ("dataset", "data_sha256")])
def test_damaged_study_file_is_refused_by_every_reader(files, tmp_path, capsys, how, needle):
    """A study file edited behind wflow's back (an attribute, a value of a dataset): the reader,
    ``study plot`` and ``study --resume`` refuse it with one line; the intact file resumes."""
    cfg, _, study_file = files
    path = tmp_path / "s.h5"
    shutil.copyfile(study_file, path)
    assert read_study(str(path))["attrs"]["status"] == "interrupted"
    _damage(path, how)
    with pytest.raises(StudyFileError, match=needle):
        read_study(str(path))
    before = path.read_bytes()
    rc, _, err = cli(capsys, "study", "plot", path, "-o", tmp_path / "figs")
    assert rc == 2 and needle in _one_line(err)
    rc, _, err = cli(capsys, "study", "limit", cfg["study"], "-o", path, "-q", "--no-plot",
                     "--resume")
    assert rc == 2 and needle in _one_line(err) and "damaged" in err
    assert path.read_bytes() == before and not (tmp_path / "figs").exists()


@pytest.mark.parametrize("how, needle", [("attribute", "attrs_sha256"),
                                         ("dataset", "data_sha256")])
def test_damaged_compare_file_is_refused(files, tmp_path, capsys, how, needle):
    from wflow import plot_compare

    cfg, _, _ = files
    path = tmp_path / "c.h5"
    rc, _, err = cli(capsys, "compare", cfg["compare"], "-o", path, "-q", "--no-plots")
    assert rc == 0, err
    check_compare_file(str(path))
    _damage(path, how)
    with pytest.raises(ValueError, match=needle):
        check_compare_file(str(path))
    with pytest.raises(ValueError, match=needle):
        plot_compare(str(path), str(tmp_path / "figs"))
