"""Many devices: data- and particle-split runs equal the single-device run (solver.devices;
docs/devices.md, "Many devices").

JAX fixes its device count when it starts, so the multi-device runs happen in
subprocesses with ``--xla_force_host_platform_device_count=4`` (the checks are
in ``sharding_checks.py``; CLI runs go through ``wflow run``). Tolerance: 1e-12
relative, norm-wise (max|a - b| / max|b|), in float64 after 100 steps: a split
changes only the order of the sums (per device, then across devices), an
O(1e-16) rounding difference per step that the flow carries along.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from wflow._sharding import LATENCY_ELEMENTS, ShardingError, choose_mode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEVICES = 4
TOL = 1e-12


def _env(devices=DEVICES):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _checks(*names, timeout=900) -> dict:
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_checks.py"), *names],
                          env=_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["devices"] == DEVICES
    return result


def _assert_runs_agree(res: dict):
    assert res["steps"] == 100
    assert res["loss_end"] < res["loss_start"]  # the flow did something
    for mode, spec in (("data", "P()"), ("particles", "P(None, 'shard')")):
        r = res[mode]
        assert r["status"] == "complete" and r["steps"] == 100
        assert r["spec"] == spec  # the particles really are split (or replicated)
        for name in ("theta", "loss", "stationarity", "snapshots"):
            assert r[name] < TOL, (mode, name, r[name])


def test_layered_runs_and_weighted_measures_agree_across_devices():
    """One subprocess: 100 layered Euler steps in both modes; weighted evaluate/first variation."""
    res = _checks("layered", "weighted")
    _assert_runs_agree(res["layered"])
    for mode in ("data", "particles"):
        for name, value in res["weighted"][mode].items():
            assert value < TOL, (mode, name, value)


@pytest.mark.slow
def test_grid_scale_held_out_and_reordering_agree_across_devices():
    """The features layered on the depth (grid density, residual scale, held-out metrics,
    block reordering) give the single-device numbers when the depth is split."""
    for mode, values in _checks("products")["products"].items():
        for name, value in values.items():
            if isinstance(value, bool):
                assert value, (mode, name)
            else:
                assert value < TOL, (mode, name, value)


@pytest.mark.slow
@pytest.mark.parametrize("check", ["continuous", "backsolve"])
def test_continuous_runs_agree_across_devices(check):
    """diffrax depth (checkpointed backprop / backsolve adjoint): same adaptive steps, same result."""
    _assert_runs_agree(_checks(check, timeout=1800)[check])


@pytest.mark.slow
def test_continuous_weighted_measures_agree_across_devices():
    for mode, values in _checks("weighted-continuous")["weighted-continuous"].items():
        for name, value in values.items():
            assert value < TOL, (mode, name, value)


# ----------------------------------------------------------------------------- the auto rule


def test_auto_rule_compares_communicated_volume():
    """data all-reduces L M k once; particles 2 L e times N d (module docstring of _sharding)."""
    # Few particles, many samples: replicating Theta is cheap -> data.
    assert choose_mode("auto", 4, N=4096, M=64, L=16, d=2, k=5) == "data"
    # Wide layers, d = 64 (k = 129): L M k = 2.7e8 > 2 L (N d + latency) = 7.5e7 -> particles.
    assert choose_mode("auto", 8, N=8192, M=32768, L=64, d=64, k=129) == "particles"
    # The same sizes with continuous depth (e = 12 slice fields per slice): data.
    assert choose_mode("auto", 8, N=8192, M=32768, L=64, d=64, k=129, evaluations=12) == "data"
    # N = M = 8192: M k ~ 2 N d, the latency of 2 L collectives tips it to data.
    assert choose_mode("auto", 8, N=8192, M=8192, L=64, d=64, k=129) == "data"
    # Exactly at the balance point the cheaper-latency data split wins ties.
    N, d, L = 1024, 2, 8
    k = 5
    M = (2 * L * (N * d + LATENCY_ELEMENTS) - LATENCY_ELEMENTS) // (L * k)
    M -= M % 2  # divisible by the 2 devices
    assert choose_mode("auto", 2, N=N, M=M, L=L, d=d, k=k) == "data"
    assert choose_mode("auto", 2, N=N, M=M + 2, L=L, d=d, k=k) == "particles"
    # One device: nothing to split.
    assert choose_mode("auto", 1, N=7, M=3, L=2, d=2, k=5) == "data"


def test_auto_rule_falls_back_to_the_divisible_axis():
    # particles preferred (huge M k) but M is odd and N divisible: data.
    assert choose_mode("auto", 4, N=256, M=100_001, L=4, d=2, k=129) == "data"
    # data preferred but N indivisible, M divisible: particles.
    assert choose_mode("auto", 4, N=4097, M=64, L=4, d=2, k=5) == "particles"


@pytest.mark.parametrize("shard, N, M, key", [("particles", 64, 66, "solver.M = 66"),
                                               ("data", 66, 64, "data.n = 66"),
                                               ("auto", 66, 66, "data.n = 66")])
def test_indivisible_split_is_one_clear_error(shard, N, M, key):
    with pytest.raises(ShardingError) as e:
        choose_mode(shard, 4, N=N, M=M, L=4, d=2, k=5)
    msg = str(e.value)
    assert msg.startswith(key) and "not divisible by the 4 devices" in msg
    assert "64 or 68" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- the CLI


def _wflow(args, devices=DEVICES, cwd=None):
    return subprocess.run([sys.executable, "-m", "_wflow_entry", *args], env=_env(devices),
                          capture_output=True, text=True, cwd=cwd, timeout=900, check=False)


def _config(tmp_path, **solver) -> str:
    solver = {"L": 8, "M": 16, "precision": "float64", **solver}
    lines = ["seed = 3", "[data]", 'kind = "teacher"', "n = 64", "dim = 2", "[solver]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in solver.items()]
    lines += ["[train]", "time = 1.0", "dt = 0.01", "record_every = 10", "snapshots = 11"]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_cli_rejects_an_indivisible_split(tmp_path):
    """Exit 2, one line naming the key and value, nothing written."""
    cfg = _config(tmp_path, M=18, shard="particles")
    out = tmp_path / "x.h5"
    proc = _wflow(["run", cfg, "-o", str(out), "-q"])
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wflow: error: solver.M = 18: not divisible by "
                                               "the 4 devices")
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = _wflow(["run", cfg, "-o", str(out), "-q", "--set", "solver.M=16", "--set",
                   "solver.devices=8"])
    assert proc.returncode == 2 and "solver.devices = 8: 4 cpu device(s) are visible" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_resume_of_a_split_run(tmp_path):
    """A 4-device particle-split run, interrupted and resumed, equals the uninterrupted one.

    Bit for bit: the resumed run restarts from the stored snapshot with the
    same compiled chunks and the same deterministic all-reduces, so nothing
    can differ. Against a single-device run: 1e-12 (summation order).
    """
    cfg = _config(tmp_path, shard="particles")
    full, part, one = (str(tmp_path / n) for n in ("full.h5", "part.h5", "one.h5"))
    assert _wflow(["run", cfg, "-o", full, "-q"]).returncode == 0
    stopped = _wflow(["run", cfg, "-o", part, "-q", "--stop-after-records", "4"])
    assert stopped.returncode == 130, stopped.stderr
    resumed = _wflow(["run", cfg, "-o", part, "-q", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _wflow(["run", cfg, "-o", one, "-q", "--set", "solver.devices=1"]).returncode == 0
    with h5py.File(full) as a, h5py.File(part) as b, h5py.File(one) as c:
        assert a.attrs["devices"] == 4 and a.attrs["shard"] == "particles"
        assert c.attrs["devices"] == 1
        for name in ("history/loss", "history/stationarity", "snapshots/theta", "state/theta",
                     "final/prediction"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
            ref = c[name][()]
            assert np.max(np.abs(a[name][()] - ref)) / np.max(np.abs(ref)) < TOL, name


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["data", "particles"])
def test_cli_multi_process_run(tmp_path, shard):
    """Two processes x 2 CPU devices (gloo collectives, explicit coordinator variables).

    Only process 0 writes the file; it equals the single-process run to 1e-12.
    """
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, shard=shard)
    multi, one = str(tmp_path / "multi.h5"), str(tmp_path / "one.h5")
    procs = []
    for rank in range(2):
        env = _env(devices=2)
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(rank), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        procs.append(subprocess.Popen([sys.executable, "-m", "_wflow_entry", "run", cfg, "-o", multi],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "status=complete" in outs[0][0] and "status=complete" not in outs[1][0]
    assert "step/s" not in outs[1][1]  # no progress bar on process 1
    assert _wflow(["run", cfg, "-o", one, "-q", "--set", "solver.devices=1"], devices=1).returncode == 0
    with h5py.File(multi) as a, h5py.File(one) as c:
        assert a.attrs["devices"] == 4 and a.attrs["shard"] == shard
        for name in ("history/loss", "snapshots/theta", "final/prediction"):
            ref = c[name][()]
            assert np.max(np.abs(a[name][()] - ref)) / np.max(np.abs(ref)) < TOL, name


# ----------------------------------------------------------------------------- many processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _tiny_config(tmp_path, shard="particles", time=0.1) -> str:
    lines = ["seed = 3", "[data]", 'kind = "teacher"', "n = 16", "dim = 2", "[solver]", "L = 2",
             "M = 8", 'precision = "float64"', f'shard = "{shard}"', "[train]", f"time = {time}",
             "dt = 0.01", "record_every = 2", "snapshots = 3", "[output]", "checkpoint_every = 0"]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _launch(cfg, out, *args, processes=2):
    """``wflow run`` as a run of two processes x 2 CPU devices (gloo, explicit coordinator)."""
    port = _free_port()
    procs = []
    for rank in range(processes):
        env = _env(devices=2)
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(rank), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        procs.append(subprocess.Popen([sys.executable, "-m", "_wflow_entry", "run", cfg, "-o", out,
                                       "-q", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process of the multi-process run hung ({timeout} s)") from None
    return [p.returncode for p in procs], outs


def _child_of(proc, timeout=60):
    """The pid of the process that runs the command under ``proc`` (its supervising parent)."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
        if kids:
            return int(kids[0])
        time.sleep(0.1)
    raise AssertionError("no child process")


def test_two_processes_split_particles_and_end(tmp_path):
    """The short multi-process check of the default suite: a particle-split run of two
    processes ends (the final state is gathered by both, process 0 commits it), both exit 0,
    and the file is complete and verifies."""
    from wflow._io import read_run

    cfg, out = _tiny_config(tmp_path), str(tmp_path / "two.h5")
    codes, outs = _finish(_launch(cfg, out), timeout=240)
    assert codes == [0, 0], outs
    assert "status=complete" in outs[0][0] and "status=complete" not in outs[1][0]
    assert outs[0][1] == "" and outs[1][1] == "", outs  # nothing on stderr (native logs kept back)
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and run["attrs"]["shard"] == "particles"
    assert run["attrs"]["devices"] == 4 and int(run["state/step"]) == 10
    assert run["snapshots/theta"].shape == (3, 2, 8, 5) and run["history/s"].shape == (6,)
    assert np.all(np.isfinite(run["final/prediction"]))


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_lost_process_ends_the_other_with_exit_4(tmp_path, victim):
    """SIGKILL one process in the middle of a run: the other ends within seconds, exit 4,
    one line naming the lost process; process 0's file is kept and verifies."""
    import signal
    import time

    from wflow._io import read_run

    cfg, out = _tiny_config(tmp_path, time=100.0), str(tmp_path / "lost.h5")
    procs = _launch(cfg, out)
    t0 = time.monotonic()
    while not os.path.exists(out) and time.monotonic() - t0 < 240:
        assert all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.1)
    time.sleep(1.0)
    # Stopped first, so that the survivor waits for it (in a collective, or for its answer
    # at a record) when it dies; the latter is noticed through the heartbeat only.
    child = _child_of(procs[victim])
    os.kill(child, signal.SIGSTOP)
    time.sleep(2.0)
    os.kill(child, signal.SIGKILL)
    t1 = time.monotonic()
    codes, outs = _finish(procs, timeout=120)
    assert time.monotonic() - t1 < 60
    survivor = 1 - victim
    assert codes == [4, 4], outs
    lines = outs[survivor][1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wflow: error: process {victim} of "), outs
    assert "lost" in lines[0]
    own = outs[victim][1].strip().splitlines()
    assert len(own) == 1 and "SIGKILL" in own[0], outs
    attrs = read_run(out)["attrs"]
    assert attrs["status"] in (("failed",) if victim == 1 else ("running", "failed"))


@pytest.mark.parametrize("verb", ["study", "compare"])
def test_study_and_compare_refuse_a_multi_process_environment(tmp_path, verb):
    """They run as one process: inside a multi-process job, exit 2 with one line saying so."""
    cfg = _tiny_config(tmp_path)
    env = _env(devices=2)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID="0")
    args = ["study", "limit", cfg] if verb == "study" else ["compare", cfg]
    proc = subprocess.run([sys.executable, "-m", "_wflow_entry", *args, "-o",
                           str(tmp_path / "x.h5")], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"wflow {verb} runs as one process" in lines[0] and "JAX_COORDINATOR_ADDRESS" in lines[0]
    assert not (tmp_path / "x.h5").exists()


_BARRIER = r"""
import os, sys, time, jax
from wflow._sharding import ProcessLost, initialize_distributed, sync_processes
initialize_distributed()
if jax.process_index() == 1:
    time.sleep(8)  # alive, heartbeating, but late for the barrier
    os._exit(0)
try:
    sync_processes("late", timeout=2.0)
    print("PASSED")
except ProcessLost as e:
    print("LOST " + str(e))
sys.stdout.flush()
os._exit(0)
"""


def _launch_script(script: str, **env_vars) -> list[subprocess.Popen]:
    """``python -c script`` as two processes of one run (explicit coordinator, 1 CPU device
    each), with ``env_vars`` added to their environment."""
    port, procs = _free_port(), []
    for rank in range(2):
        env = _env(devices=1)
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(rank), **env_vars)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


_DIES_AT_A_RECORD = r"""
import os, signal, sys, time, jax
from wflow._sharding import any_process, initialize_distributed, sync_processes
initialize_distributed()
sync_processes("start", timeout=60.0)
if jax.process_index() == 1:
    os.kill(os.getpid(), signal.SIGKILL)
t0 = time.monotonic()
print("WAITING", flush=True)
any_process("record", (False,), timeout=600.0)  # process 1 never answers
print(f"ANSWERED after {time.monotonic() - t0:.1f} s", flush=True)
os._exit(0)
"""


def test_a_process_lost_at_a_record_ends_the_others_within_the_heartbeat():
    """A process dies while the other waits for its answer at a record (a key-value read
    with a 600 s deadline, no connection of its own to close): JAX's coordination service
    declares it lost after WFLOW_HEARTBEAT_TIMEOUT seconds without a heartbeat and ends the
    other, well before the read's deadline or JAX's own 100 s default."""
    import time

    procs = _launch_script(_DIES_AT_A_RECORD, WFLOW_HEARTBEAT_TIMEOUT="4")
    line = procs[0].stdout.readline()
    t0 = time.monotonic()
    codes, outs = _finish(procs, timeout=120)
    waited = time.monotonic() - t0
    assert line.strip() == "WAITING", (line, outs)
    assert codes[1] == -9 and codes[0] == -6, (codes, outs)  # killed; ended by JAX's abort
    assert "ANSWERED" not in outs[0][0], outs
    assert "Terminating process because the JAX distributed service" in outs[0][1], outs
    # 4 s of missed heartbeats, then the service's check and the abort: 4.1-4.6 s on 2 idle
    # cores (101 s with JAX's default); 30 s leaves room for a loaded machine.
    assert waited < 30, waited


@pytest.mark.parametrize("value", ["abc", "1", "2.5"])
def test_a_bad_heartbeat_timeout_is_refused_in_one_line(tmp_path, value):
    """WFLOW_HEARTBEAT_TIMEOUT that is not a whole number of seconds >= 2: exit 2, one line
    naming the variable, the value and what is allowed, before any coordinator is sought."""
    cfg = _tiny_config(tmp_path)
    env = _env(devices=1)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID="0", WFLOW_HEARTBEAT_TIMEOUT=value)
    proc = subprocess.run([sys.executable, "-m", "_wflow_entry", "run", cfg, "-o",
                           str(tmp_path / "x.h5")], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (f"wflow: error: WFLOW_HEARTBEAT_TIMEOUT = {value!r}: allowed is a whole "
                        "number of seconds, at least 2")
    assert not (tmp_path / "x.h5").exists()


def test_a_barrier_gives_up_on_a_late_process():
    """A process alive but not at the barrier in time: ``ProcessLost`` naming it (the CLI:
    exit 4, one line), not a wait without end."""
    procs = _launch_script(_BARRIER, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    codes, outs = _finish(procs, timeout=120)
    line = [ln for ln in outs[0][0].splitlines() if ln.startswith(("LOST", "PASSED"))]
    assert line and line[0].startswith("LOST process 1 of the 2-process run was lost"), outs
    assert "did not reach the barrier 'late' within 2 s" in line[0], outs
