"""Fault injection with real processes: SIGINT / SIGTERM at start-up, mid-run and twice,
SIGKILL at random instants followed by ``--resume``, two writers on one file.

Every process is ``python -m _wflow_entry`` (the console script) on a tiny problem (sine data, so the numbers
do not depend on the x64 flag of the process; L = 2, M = 8). Resumes run in one
driver process (``_DRIVER``) so that JAX compiles once for all of them. The default
run kills a handful of processes; ``-m slow`` runs the long campaign.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from _helpers import datasets

from wflow import _io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep
           + os.environ.get("PYTHONPATH", ""))

CONFIG = """seed = 0
[data]
kind = "sine"
n = 32
[solver]
L = 2
M = 8
[train]
time = {time}
dt = 0.1
method = "heun"
temperature = 0.01
record_every = 1
snapshots = 7
[output]
checkpoint_every = 0.0
"""

# Resumes many files in one process (JAX compiles once) and prints one JSON line per file.
_DRIVER = r"""
import io, json, sys, contextlib
from wflow.cli import main
cfg = sys.argv[1]
for path in sys.argv[2:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", cfg, "-o", path, "-q", "--resume"])
    print(json.dumps({"path": path, "rc": rc, "err": err.getvalue()[-500:]}), flush=True)
"""


def write_config(folder, time_=20.0, name="cfg.toml"):
    path = folder / name
    path.write_text(CONFIG.format(time=time_))
    return str(path)


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "_wflow_entry", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Output:
    """Collects a process's stderr while it runs."""

    def __init__(self, proc):
        self.proc, self.buf = proc, bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.buf.extend(chunk)

    def text(self) -> str:
        self.thread.join(5)
        return bytes(self.buf).decode(errors="replace")

    def text_so_far(self) -> str:
        return bytes(self.buf).decode(errors="replace")


def wait_until(predicate, proc, timeout=120.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def n_records(path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return f["history/s"].shape[0]
    except (OSError, KeyError):
        return 0


def resume_all(cfg, paths) -> list[dict]:
    if not paths:
        return []
    res = subprocess.run([sys.executable, "-c", _DRIVER, cfg, *map(str, paths)], env=ENV, check=False,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def assert_prefix_of(path, ref):
    """The file on disk is a valid prefix of the reference run (module docstring of _io)."""
    got = _io.read_run(str(path))  # checksums, shapes: RunFileError if anything is wrong
    if got["attrs"]["status"] == "complete":  # killed after its last commit: the whole run
        assert datasets(path).keys() == ref.keys()
        for name, value in ref.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        return got["history/s"].shape[0]
    assert got["attrs"]["status"] in ("running", "interrupted")
    n, n_snap = got["history/s"].shape[0], got["snapshots/s"].shape[0]
    for name, value in ref.items():
        if name.startswith("history/"):
            np.testing.assert_array_equal(got[name], value[:n], err_msg=name)
        elif name.startswith("snapshots/"):
            np.testing.assert_array_equal(got[name], value[:n_snap], err_msg=name)
        elif name.startswith("data/"):
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    step = int(got["state/step"])
    h = 0.1
    assert step == (round(got["history/s"][-1] / h) if n else 0)
    if n_snap and round(got["snapshots/s"][-1] / h) == step:
        np.testing.assert_array_equal(got["state/theta"], got["snapshots/theta"][-1])
    return n


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cfg = write_config(tmp)
    out = tmp / "ref.h5"
    t0 = time.time()
    proc = spawn("run", cfg, "-o", out, "-q")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return cfg, out, datasets(out), time.time() - t0


# ----------------------------------------------------------------------------- SIGKILL


def _kill_campaign(reference, tmp_path, n_kills, seed):
    cfg, ref_path, ref, lifetime = reference
    rng = np.random.default_rng(seed)
    with h5py.File(ref_path, "r") as f:  # how long the reference spent recording
        wall = f["history/wall_time"][()]
    recording = float(wall[-1] - wall[0])
    killed, stats = [], {"absent": 0, "records": []}
    for i in range(n_kills):
        out = tmp_path / f"k{i}.h5"
        proc = spawn("run", cfg, "-o", out, "-q")
        if i % 2 == 0:  # anywhere in the process's life
            time.sleep(rng.uniform(0.0, lifetime))
        else:  # while records are being committed
            wait_until(lambda out=out: n_records(out) > 0, proc)
            time.sleep(rng.uniform(0.0, 1.5 * recording))
        proc.kill()
        proc.communicate(timeout=60)
        if not out.exists():
            stats["absent"] += 1
            assert not [p for p in os.listdir(tmp_path) if p.startswith(f"k{i}.h5")
                        and p != f"k{i}.h5.lock"]
            continue
        stats["records"].append(assert_prefix_of(out, ref))
        if _io.read_run(str(out))["attrs"]["status"] != "complete":
            killed.append(out)
    for result in resume_all(cfg, killed):
        assert result["rc"] == 0, result
        got = datasets(result["path"])
        assert got.keys() == ref.keys()
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{result['path']} {name}")
        assert _io.verify_run(result["path"])["status"] == "complete"
    return stats


def test_sigkill_at_random_instants_then_resume_is_bit_identical(reference, tmp_path):
    stats = _kill_campaign(reference, tmp_path, n_kills=6, seed=0)
    assert stats["absent"] + len(stats["records"]) == 6


@pytest.mark.slow
def test_sigkill_campaign(reference, tmp_path):
    stats = _kill_campaign(reference, tmp_path, n_kills=120, seed=1)
    # the campaign must have hit every phase: before the file, and at many record counts
    assert stats["absent"] > 0 and len(set(stats["records"])) > 10, stats


# ----------------------------------------------------------------------------- SIGINT / SIGTERM


def _last_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_startup(tmp_path, sig):
    """Imports, config, data, compilation: 130, one line, no file (or a valid one)."""
    cfg = write_config(tmp_path)
    rng = np.random.default_rng(int(sig))
    for delay in (0.3, float(rng.uniform(0.6, 2.0))):
        out = tmp_path / f"s{delay:.2f}.h5"
        proc = spawn("run", cfg, "-o", out, "-q")
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        err = err.decode()
        assert proc.returncode == 130, err
        assert "Traceback" not in err and _last_line(err).startswith("wflow: interrupted"), err
        if out.exists():
            assert _io.verify_run(str(out))["status"] in ("interrupted", "running")


@pytest.mark.parametrize("sig, twice", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                        (signal.SIGTERM, True), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-twice", "SIGINT-twice"])
def test_signal_mid_run_then_resume(reference, tmp_path, sig, twice):
    cfg, _, ref, _ = reference
    out = tmp_path / "o.h5"
    proc = spawn("run", cfg, "-o", out, "-q")
    output = Output(proc)
    assert wait_until(lambda: n_records(out) >= 3, proc), output.text()
    proc.send_signal(sig)
    if twice:
        time.sleep(0.005)
        proc.send_signal(sig)
    proc.wait(timeout=120)
    err = output.text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in _last_line(err)
    assert _io.verify_run(str(out))["status"] == "interrupted"
    assert_prefix_of(out, ref)
    (result,) = resume_all(cfg, [out])
    assert result["rc"] == 0, result
    got = datasets(out)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_second_signal_stops_a_long_compiled_chunk_at_once(tmp_path):
    """The main thread is inside one long XLA call (a chunk of 10^5 steps); Python could not
    run a handler before it ends, but the signal watcher commits and exits within ~1 s."""
    cfg = tmp_path / "long.toml"
    cfg.write_text(CONFIG.format(time=100000.0).replace("record_every = 1",
                                                        "record_every = 1000000")
                   .replace("snapshots = 7", "snapshots = 2"))
    out = tmp_path / "long.h5"
    proc = spawn("run", cfg, "-o", out, "-q")
    output = Output(proc)
    assert wait_until(lambda: n_records(out) >= 1 or (
        out.exists() and os.path.getsize(out) > 0), proc), output.text()
    time.sleep(1.5)  # inside the first chunk
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    elapsed = time.time() - t0
    err = output.text()
    assert proc.returncode == 130 and elapsed < 5.0, (elapsed, err)
    assert "Traceback" not in err and "interrupted" in _last_line(err)
    attrs = _io.verify_run(str(out))
    assert attrs["status"] == "interrupted"


def test_first_signal_stops_a_long_chunk_within_seconds_with_its_state(tmp_path):
    """One chunk of 10^6 steps between two records: the loop runs it in pieces of about a
    second and looks at the first SIGTERM between them, so the run stops within seconds with
    the state reached mid-chunk committed (resumable: tests/test_flow.py checks that resuming
    from such a state is bit-identical), not at the end of the chunk."""
    cfg = tmp_path / "long.toml"
    cfg.write_text(CONFIG.format(time=100000.0).replace("record_every = 1",
                                                        "record_every = 1000000")
                   .replace("snapshots = 7", "snapshots = 2"))
    out = tmp_path / "long.h5"
    proc = spawn("run", cfg, "-o", out)  # with the progress bar: it moves inside the chunk
    output = Output(proc)
    assert wait_until(lambda: out.exists() and os.path.getsize(out) > 0, proc), output.text()
    assert wait_until(lambda: "step/s" in output.text_so_far() or "it/s" in output.text_so_far(),
                      proc, timeout=60), output.text()
    time.sleep(1.0)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    elapsed = time.time() - t0
    err = output.text()
    assert proc.returncode == 130 and elapsed < 10.0, (elapsed, err)
    assert "Traceback" not in err and "interrupted" in _last_line(err)
    got = _io.read_run(str(out))
    assert got["attrs"]["status"] == "interrupted"
    assert 0 < int(got["state/step"]) < 10**6 and got["history/s"].tolist() == [0.0]


def _study_config(tmp_path, time_: float) -> str:
    """A study with a continuous-depth particle reference of 1024 points and its floor (two
    halves of 512, trained on their own): each phase lasts seconds at time_ = 50."""
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG.format(time=time_).replace('method = "heun"\ntemperature = 0.01',
                                                     'method = "euler"') + f"""
[study]
L = [2]
M = [8]
seeds = 1
times = [0.0, {time_}]
metrics = ["output"]
reference = "particles"
reference_M = 1024
reference_L = 4
reference_depth = "continuous"
""")
    return str(cfg)


def _sigterm_when(proc, output, pattern: str) -> tuple[float, str]:
    """Send one SIGTERM once ``pattern`` shows in the process's stderr; (seconds it took to
    end, its stderr), asserting exit 130 within 10 s and no traceback."""
    assert wait_until(lambda: re.search(pattern, output.text_so_far()), proc, timeout=240), \
        output.text()
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    elapsed = time.time() - t0
    err = output.text()
    assert proc.returncode == 130 and elapsed < 10.0, (elapsed, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    return elapsed, err


def test_first_signal_stops_a_study_inside_its_reference(tmp_path):
    """``wflow study limit`` with a large continuous-depth particle reference and one record
    (the study time) at the end: the bar moves during the reference, and a first SIGTERM
    stops the study within seconds (the block is redone on --resume)."""
    cfg = _study_config(tmp_path, 400.0)
    proc = spawn("study", "limit", cfg, "-o", tmp_path / "study.h5", "--no-plot")
    _sigterm_when(proc, Output(proc), r"reference.*\b([1-9]\d?)%")


def test_first_signal_stops_a_study_in_its_floor_phase_and_resume_finishes(tmp_path):
    """After the last block the study measures its reference's floor (``_floor``: here two
    independent half references, as long as the reference itself). That phase has a bar of
    its own that moves, and a first SIGTERM there stops the study within seconds with every
    block saved; --resume redoes only the floor and completes the file."""
    cfg = _study_config(tmp_path, 50.0)
    out = tmp_path / "study.h5"
    proc = spawn("study", "limit", cfg, "-o", out, "--no-plot")
    _, err = _sigterm_when(proc, Output(proc), r"reference floor:\s+([1-9]\d?)%")
    assert "--resume" in _last_line(err), err[-2000:]
    from wflow.study import read_study

    part = read_study(str(out))
    assert part["attrs"]["status"] == "interrupted" and bool(np.all(part["done"]))
    assert not any(k.startswith("reference/floor") for k in part)
    res = subprocess.run([sys.executable, "-m", "_wflow_entry", "study", "limit", cfg, "-o",
                          str(out), "-q", "--no-plot", "--resume"], env=ENV,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    full = read_study(str(out))
    assert full["attrs"]["status"] == "complete"
    assert np.all(np.isfinite(full["reference/floor/output"]))
    np.testing.assert_array_equal(full["errors/output"], part["errors/output"])


def test_first_signal_stops_compare_within_seconds_and_writes_nothing(tmp_path):
    """``wflow compare`` between its runs (the mean-field run done, the optimizers' running):
    a first SIGTERM ends it within seconds, exit 130, one line, and no compare file, neither
    whole nor half-written (it is written once, atomically, at the end)."""
    cfg = os.path.join(ROOT, "configs", "compare_lazy.toml")
    out = tmp_path / "cmp.h5"
    proc = spawn("compare", cfg, "-o", out, "--no-plots", "--set", "train.time=1000.0")
    _, err = _sigterm_when(proc, Output(proc), "meanfield: complete")
    assert "interrupted" in _last_line(err), err[-2000:]
    assert not out.exists() and not list(tmp_path.glob("*.h5*")), list(tmp_path.iterdir())


_NATIVE_CALL = r"""
import sys, time
from wflow._io import OutputLock
from wflow._signals import Interrupts
with Interrupts(stop_within=float(sys.argv[1])) as it, OutputLock(sys.argv[2]):
    it.running(lambda: "wflow: interrupted; the file keeps its last checkpoint")
    print("ready", flush=True)
    time.sleep(120)  # stands for one long native call that never reaches a record or a poll
"""


def test_first_signal_ends_a_native_call_that_never_polls_within_its_deadline(tmp_path):
    """A first SIGTERM asks the command to stop at its next record; where the main thread
    never gets there (a single call of minutes: an ODE solve of a large reference, an
    optimal-transport metric), the signal watcher ends it from the last checkpoint after
    ``stop_within`` seconds: exit 130, the finish line, no traceback, and the output's lock
    file and the folder created for it removed as on a normal exit (no ``finally`` runs
    after ``os._exit``: a compare stopped this way in CI used to leave ``cmp.h5.lock``)."""
    out = tmp_path / "new" / "out.h5"
    proc = subprocess.Popen([sys.executable, "-c", _NATIVE_CALL, "3", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    elapsed = time.time() - t0
    assert proc.returncode == 130 and 2.5 < elapsed < 8.0, (elapsed, err)
    assert "Traceback" not in err and _last_line(err).endswith("keeps its last checkpoint"), err
    assert "stopping at the next record" in err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


# ----------------------------------------------------------------------------- two writers


def test_two_writers_started_together(tmp_path):
    cfg = write_config(tmp_path, time_=2.0)
    out = tmp_path / "same.h5"
    procs = [spawn("run", cfg, "-o", out, "-q") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    (err,) = [e for rc, e in results if rc == 2]
    assert "same.h5" in err and "Traceback" not in err
    # refused because another process writes it (pid named), or, if the first one already
    # finished, because the file exists
    assert ("is writing" in err and any(str(p.pid) in err for p in procs)) or "exists" in err
    assert _io.verify_run(str(out))["status"] == "complete"


# ----------------------------------------------------------------------------- signal storms


def _exiting(proc) -> bool:
    """``proc`` has begun to exit: the kernel's PF_EXITING flag (0x4, field 9 of
    /proc/PID/stat), set when the process calls exit. Tearing down a large address space then
    takes milliseconds (7-9 ms for 2 GB, measured), during which ``poll()`` still sees the
    process alive but a signal can no longer change its exit code."""
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            return bool(int(f.read().rsplit(")", 1)[1].split()[6]) & 0x4)
    except (OSError, IndexError, ValueError):  # gone, or no procfs: poll() decides
        return False


def _alive_after(proc, delay: float) -> bool:
    """Wait ``delay`` seconds, polling every 10 ms; False as soon as ``proc`` has exited or
    has begun to (``_exiting``): a signal sent then would find no process to interrupt."""
    deadline = time.time() + delay
    while (left := deadline - time.time()) > 0:
        if proc.poll() is not None or _exiting(proc):
            return False
        time.sleep(min(0.01, left))
    return proc.poll() is None and not _exiting(proc)


def _signal_storm(tmp_path, trials: int, seed: int) -> dict:
    """``trials`` runs, each sent two or three SIGINT / SIGTERM at random instants: from start-up
    through the last commit to interpreter shutdown (the first at a random time over the
    run's lifetime -- in every other trial over its last 2.5 s --, the next ones 0-300 ms
    apart; a run that ended before its first signal is counted "too late"). Every run the signals
    reached ends with exit 130, no traceback, and exactly one final "interrupted" line; its
    file, if any, is intact (verify_run).

    The lifetime is the probe run's at first, then that of the last run that ended before its
    first signal: when other tests share the cores the probe's can be far from the trials'
    (a CI run counted 3 of 4 trials too late). Each too-late trial is made up for by one more
    trial, at most ``trials`` more."""
    cfg = write_config(tmp_path, time_=0.4)
    t0 = time.time()
    probe = spawn("run", cfg, "-o", tmp_path / "probe.h5", "-q")
    probe.communicate(timeout=300)
    assert probe.returncode == 0
    lifetime = time.time() - t0
    rng = np.random.default_rng(seed)
    seen = {"interrupted": 0, "too late": 0, "statuses": {}}
    trial = -1
    while (trial := trial + 1) < trials + min(seen["too late"], trials):
        out = tmp_path / f"t{trial}.h5"
        n = int(rng.integers(2, 4))
        # every other trial aims at the end: the last records, the final commit, the exit
        start, end = (0.3, lifetime + 0.3) if trial % 2 == 0 else (max(0.3, lifetime - 2.5),
                                                                  lifetime)
        first = float(rng.uniform(start, end))
        gaps = rng.uniform(0.0, 0.3, n - 1).tolist()
        sigs = [signal.SIGINT if rng.random() < 0.5 else signal.SIGTERM for _ in range(n)]
        started = time.time()
        proc = spawn("run", cfg, "-o", out, "-q")
        output = Output(proc)
        sent = 0
        for delay, sig in zip([first, *gaps], sigs, strict=True):
            if not _alive_after(proc, delay):
                break
            proc.send_signal(sig)
            sent += 1
        proc.wait(timeout=120)
        err = output.text()
        what = (trial, n, sent, first, gaps, err)
        if sent == 0:
            assert proc.returncode == 0, what
            seen["too late"] += 1
            lifetime = time.time() - started  # within 10 ms of its exit (_alive_after)
            continue
        seen["interrupted"] += 1
        assert proc.returncode == 130, what
        assert "Traceback" not in err, what
        finals = [ln for ln in err.splitlines() if ln.startswith("wflow: interrupted")]
        assert len(finals) == 1 and _last_line(err) == finals[0], what
        if out.exists():
            status = _io.verify_run(str(out))["status"]
            assert status in ("running", "interrupted", "complete"), what
            seen["statuses"][status] = seen["statuses"].get(status, 0) + 1
    return seen


def test_two_and_three_signals_at_random_instants(tmp_path):
    seen = _signal_storm(tmp_path, trials=4, seed=1)
    assert seen["interrupted"] >= 2, seen


@pytest.mark.slow
def test_two_and_three_signals_at_random_instants_50_trials(tmp_path):
    seen = _signal_storm(tmp_path, trials=50, seed=2)
    assert seen["interrupted"] >= 25, seen
    print(seen)


# ----------------------------------------------------------------------------- allocator policy

_ALLOCATOR = r"""
import ctypes, json, os, sys
import _wflow_entry
set_ = _wflow_entry.tune_allocator()
import numpy as np
libc = ctypes.CDLL(None)
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc.mallinfo2.restype = Mallinfo2
a = np.ones(64 * 2**20 // 8)  # 64 MiB: above glibc's largest mmap threshold
info = libc.mallinfo2()
# 3 GiB freed at the heap's top (never touched: no memory is used): glibc trims a top above
# M_TRIM_THRESHOLD, whose largest finite value is 2^31 - 1, so only -1 keeps it
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(3 * 2**30))
print(json.dumps({"set": set_, "mmapped": info.hblkhd, "heap_after_free": libc.mallinfo2().arena}))
"""


# the command's allocator policy, libc's malloc / free / memset and the resident size
_LIBC = r"""
import ctypes, json
import _wflow_entry
assert _wflow_entry.tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int,
                                                                ctypes.c_size_t]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
"""


_RELEASE = _LIBC + r"""
from wflow._preflight import release_free_memory
size = 256 * 2**20
hole = libc.malloc(size); libc.memset(hole, 1, size)
live = libc.malloc(1 << 20); libc.memset(live, 1, 1 << 20)  # keeps the hole off the heap's top
libc.free(hole)
held = rss()
kept = release_free_memory(keep=2 * size)  # less free than keep: nothing given back
after_kept = rss()
released = release_free_memory(keep=0)
print(json.dumps({"kept": kept, "released": released, "held": held, "after_kept": after_kept,
                  "after": rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_gives_back_a_hole_inside_the_heap():
    """Under the command's policy a freed 256 MiB block inside the heap stays resident (the
    next call of the same program reuses it); ``release_free_memory`` gives it back when the
    allocator holds more free memory than ``keep`` (a study calls it with keep = 0 between
    blocks of different shapes: without it the full CCM sweep grew to 24 GB and was
    OOM-killed)."""
    res = subprocess.run([sys.executable, "-c", _RELEASE], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["kept"] is False and got["after_kept"] > got["held"] - 2**20, got
    assert got["released"] is True and got["after"] < got["held"] - 200 * 2**20, got


_RETAIN = _LIBC + r"""
import resource
from wflow._preflight import release_free_memory
size, blocks = 256 * 2**20, []
for _ in range(2):  # two holes inside the heap, each kept off its neighbour and the heap's top
    hole = libc.malloc(size); libc.memset(hole, 1, size)
    blocks += [hole, libc.malloc(1 << 20)]
    libc.memset(blocks[-1], 1, 1 << 20)
libc.free(blocks[0]); libc.free(blocks[2])
held = rss()
released = release_free_memory(keep=size, retain=True)  # the next block's estimate: one hole
after = rss()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = libc.malloc(size); libc.memset(again, 2, size)  # the next block's buffer
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"released": released, "held": held, "after": after, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_between_blocks_the_next_blocks_estimate_stays_resident():
    """Between blocks of different shapes a study gives back the free memory beyond the next
    block's estimate (``release_free_memory(keep, retain=True)``): of two freed 256 MiB holes
    one goes back to the system and the other stays resident, so that the next block's
    256 MiB buffer is served from it without faulting its 65,536 pages in again (on a VM
    about 1 s of system time per GiB). Before, every free page went back at each change of
    shape."""
    res = subprocess.run([sys.executable, "-c", _RETAIN], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    gone = got["held"] - got["after"]
    assert got["released"] is True
    assert 224 * 2**20 < gone < 288 * 2**20, got  # one hole given back, not both
    assert got["faults"] < 1000, got  # 65,536 4 KiB pages if it had been given back


_ALIGNED = _LIBC + r"""
from wflow.study._limit import _Watch
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                ctypes.c_size_t]
size, calls, small = 64 * 2**20, 8, []
start = rss()
for _ in range(calls):  # a compiled call: its temporaries, 64-byte aligned as XLA asks
    p = ctypes.c_void_p()
    libc.posix_memalign(ctypes.byref(p), 64, size)
    libc.memset(p, 1, size)
    small.append(libc.malloc(48))  # an allocation made meanwhile, kept (a small result)
    libc.free(p)
grown = rss() - start
watch = _Watch(None, None, 1, keep=2 * size, reuse=False)  # estimate: 2 such buffers
watch(0)
print(json.dumps({"grown": grown, "after": rss() - start}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's posix_memalign")
def test_a_block_gives_back_the_holes_its_aligned_temporaries_leave():
    """Under the command's policy without the aligned-reuse shim (glibc < 2.38 alone), a
    compiled call's aligned temporaries do not reuse the previous call's freed holes (a freed
    64 MiB block does not serve the next 64-byte-aligned request of its own size when a
    small allocation sits next to it), so the heap grows by the temporaries at most calls (8
    calls held 6 x 64 MiB). Between the calls a study block (``_Watch`` with its estimate as
    ``keep``) then gives back what is free beyond that estimate; without it the full CCM
    sweep's reference was OOM-killed at 23.7 GB."""
    res = subprocess.run([sys.executable, "-c", _ALIGNED], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # reused holes would hold one buffer (64 MiB); measured: 6 of the 8 calls took fresh memory
    assert got["grown"] > 4 * 64 * 2**20, got
    assert got["after"] < 2 * 64 * 2**20, got  # given back: at most the block's estimate kept


_WARM = _LIBC + r"""
from wflow.study._limit import _Watch
MiB, held = 2**20, []
def call(size):  # a call's temporaries (fresh or reused), a small result kept, then freed
    p = libc.malloc(size); libc.memset(p, 1, size)
    held.append(libc.malloc(48))
    libc.free(p)
watch = _Watch(None, None, 1, keep=256 * MiB, reuse=True)
watch(0)  # the block's first check: the heap's size is the reference
call(200 * MiB)
before = rss(); watch(1); warm = rss() - before  # grown by less than keep: kept
call(400 * MiB)
before = rss(); watch(2); beyond = rss() - before  # grown by more than keep: given back
print(json.dumps({"warm": warm, "beyond": beyond}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_with_aligned_reuse_a_block_keeps_what_its_warm_up_took():
    """With the shim a block's heap stops growing after its first calls, so a block gives
    memory back only when its heap has grown by more than its estimate (``keep``) since its
    first check: 200 MiB of growth under a 256 MiB estimate stays resident (the next call
    reuses it without faulting it in again); 600 MiB is given back."""
    res = subprocess.run([sys.executable, "-c", _WARM], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert abs(got["warm"]) < 16 * 2**20, got
    assert got["beyond"] < -300 * 2**20, got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("policy", ["wflow", "default"])
def test_the_command_keeps_large_buffers_out_of_mmap(policy):
    """``tune_allocator`` (the command's first step, before JAX starts): a 64 MiB buffer comes
    from the heap, not from a fresh mmap that the kernel must zero-fill on every call, and a
    3 GiB block freed at the heap's top stays in the process (a study's block of several GiB
    freed it and faulted it in again); WFLOW_MALLOC=default keeps glibc's behaviour (the same
    buffers are mmapped and returned)."""
    env = dict(ENV, WFLOW_MALLOC=policy)
    res = subprocess.run([sys.executable, "-c", _ALLOCATOR], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if policy == "wflow":
        assert got["set"] is True and got["mmapped"] < 64 * 2**20, got  # start-up blocks only
        assert got["heap_after_free"] >= 3 * 2**30, got
    else:
        assert got["set"] is False and got["mmapped"] >= 64 * 2**20, got
        assert got["heap_after_free"] < 2**30, got


# ----------------------------------------------------------------------------- aligned reuse

def _cc_available() -> bool:
    import shutil

    return bool(shutil.which("cc") or shutil.which("gcc"))


_REUSE = _LIBC.replace("assert _wflow_entry.tune_allocator()\n",
                       "policy = _wflow_entry.allocator_policy()\n") + r"""
import os, signal
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                ctypes.c_size_t]
size, calls, small = 64 * 2**20, 8, []
layout = [libc.malloc(16 * (j % 7 + 1)) for j in range(int(os.environ["LAYOUT"]))]
start = rss()
for _ in range(calls):  # a compiled call: its temporaries, 64-byte aligned as XLA asks
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, size) == 0 and p.value % 64 == 0
    libc.memset(p, 1, size)
    small.append(libc.malloc(48))  # an allocation made meanwhile, kept (a small result)
    libc.free(p)
print(json.dumps({"policy": policy, "grown": rss() - start,
                  "counts": _wflow_entry.aligned_reuse_counts(),
                  "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                  "preload": os.environ.get("LD_PRELOAD", "")}))
"""


def _reuse_run(tmp_path, layout=0, **env):
    env = dict(ENV, WFLOW_CACHE_DIR=str(tmp_path / "cache"), LAYOUT=str(layout), **env)
    res = subprocess.run([sys.executable, "-c", _REUSE], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _cc_available(),
                    reason="glibc and a C compiler")
def test_the_aligned_reuse_shim_lets_aligned_temporaries_reuse_their_hole(tmp_path):
    """``allocator_policy`` (the command's: ``preload_aligned_reuse`` then ``tune_allocator``)
    compiles the shim into the cache once and restarts the process with it preloaded. Then
    the same eight aligned 64 MiB calls as above reuse one hole: the heap grows by one buffer,
    not six (the test above), and every request after the first is served from the freed
    hole, in every layout of the heap (a few small allocations first: without the shim's
    keeping of the piece glibc frees below each fresh aligned buffer, one of these layouts
    reused nothing). SIGINT / SIGTERM, blocked across the restart, are unblocked after it."""
    for layout in range(4):
        got, err = _reuse_run(tmp_path, layout)
        assert got["policy"] == "wflow (no mmap, no trim, one arena, aligned reuse)", (got, err)
        assert got["counts"][0] >= 7, got  # the first call takes fresh memory, the others reuse
        assert got["grown"] < 2 * 64 * 2**20, got
        assert got["blocked"] == [] and "aligned_reuse-" in got["preload"], got
    # compiled once: the cached library is used again, and no temporary file is left
    assert len(list((tmp_path / "cache").glob("aligned_reuse-*.so"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
@pytest.mark.parametrize("env, policy", [
    ({"WFLOW_MALLOC": "no-preload"}, "wflow (no mmap, no trim, one arena)"),
    ({"CC": os.path.join(os.sep, "nonexistent", "cc")}, "wflow (no mmap, no trim, one arena)"),
    ({"WFLOW_MALLOC": "default"}, "default")], ids=["no-preload", "no-compiler", "default"])
def test_without_the_shim_the_command_runs_on_silently(tmp_path, env, policy):
    """WFLOW_MALLOC=no-preload, a compiler that does not exist (``CC``), WFLOW_MALLOC=default:
    no restart, no shim, nothing on stderr, and the rest of the policy as named."""
    got, err = _reuse_run(tmp_path, **env)
    assert got["policy"] == policy and got["counts"] is None and got["preload"] == "", got
    assert err == "" and got["blocked"] == [], (got, err)


def test_the_command_refuses_an_unknown_allocator_mode():
    res = subprocess.run([sys.executable, "-m", "_wflow_entry", "info"],
                         env=dict(ENV, WFLOW_MALLOC="jemalloc"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.strip() == ("wflow: WFLOW_MALLOC = 'jemalloc' is not one of: wflow, "
                                  "no-preload, default"), res.stderr


_SIGNAL_ACROSS_RESTART = r"""
import os, signal, sys
import _wflow_entry
_wflow_entry.guard()
if not os.environ.get("WFLOW_PRELOADED"):  # the first process: SIGTERM while the exec is near
    block = signal.pthread_sigmask
    def block_then_signal(how, sigs):
        old = block(how, sigs)
        if how == signal.SIG_BLOCK and signal.SIGTERM in sigs:
            os.kill(os.getpid(), signal.SIGTERM)
        return old
    signal.pthread_sigmask = block_then_signal
_wflow_entry.preload_aligned_reuse()
print("restarted and not interrupted", os.environ.get("WFLOW_PRELOADED") is not None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _cc_available(),
                    reason="glibc and a C compiler")
def test_a_signal_during_the_restart_is_delivered_after_it(tmp_path):
    """A SIGTERM that arrives while the process restarts with the shim waits (blocked across
    the exec) until the new process's start-up guard is in: exit 130 and its one line, never
    a death by the signal in the new interpreter's first milliseconds."""
    res = subprocess.run([sys.executable, "-c", _SIGNAL_ACROSS_RESTART],
                         env=dict(ENV, WFLOW_CACHE_DIR=str(tmp_path / "cache")),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 130 and res.stdout == "", res
    assert res.stderr.strip() == ("wflow: interrupted by SIGTERM during start-up; nothing was "
                                  "written"), res.stderr
