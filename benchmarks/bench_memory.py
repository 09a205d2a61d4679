"""Peak memory of one wflow training step, and of naive reverse-mode autodiff for contrast.

The step is ``LayeredDepth().evaluate`` plus the Euler update (the update adds
one (L, M, k) array), float32, default size N = 4096, d = 2, L = 64, M = 4096.
Target: < 1 GiB peak resident memory. The activations of all layers would take
N L M * 4 B = 4 GiB, so meeting the target needs the rematerializing adjoint.

Each configuration runs in a fresh subprocess (``ru_maxrss`` is a high-water mark
of the whole process, so processes must not be shared), which reports

* ``baseline``: ru_maxrss after importing jax/wflow and creating the inputs;
* ``peak``: ru_maxrss after the step, absolute, and ``peak - baseline``;
  ru_maxrss also covers XLA compilation, so in addition
* ``compile``: ru_maxrss after ``lower().compile()`` minus the baseline, and
* ``run``: the peak of the resident set sampled every ~0.5 ms by a thread
  while only the compiled step executes, minus the resident set just before;
* XLA's own estimate, ``compiled.memory_analysis()``: temp, argument, output
  (and, on GPU, the device allocator's ``peak_bytes_in_use``).

For contrast, ``naive``: ``jax.value_and_grad`` of the same loss written as a
plain ``lax.scan`` (no remat, no hand-written adjoint). It is compiled and its
memory_analysis reported; it is executed only if its temp size is at most
``--naive-limit-gib`` (default 8 GiB) and ``--no-run-naive`` is not given.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --size 4096,2,64,4096 --json mem.json
    python benchmarks/bench_memory.py --size 8192,2,64,16384 --skip-naive   # N L M = 1e10
    python benchmarks/bench_memory.py --size 8192,64,64,8192 --skip-naive --tile 4194304

Memory at scale: the kernel works on (N, M) blocks of at most ``--tile``
elements (wflow's ``solver.tile``, default 2^18 on CPUs, 2^24 on GPUs), so the step needs the
O(N L d + L M k) floor -- the inputs x, y, the stored layer inputs z_l
(N L d), Theta, its gradient/velocity and the updated Theta (3 L M k) --
plus a few tiles, whatever N M is. The report prints the floor and the
tile next to the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

GIB = 2.0**30
MIB = 2.0**20
TARGET_GIB = 1.0
DEFAULT_SIZE = (4096, 2, 64, 4096)
HERE = os.path.dirname(os.path.abspath(__file__))


def rss_now() -> int:
    """Current resident set size in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def maxrss() -> int:
    """High-water mark of the resident set in bytes (ru_maxrss is in KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class RssSampler:
    """Background thread recording the largest resident set seen while it runs."""

    def __init__(self, interval: float = 5e-4):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_now())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss_now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_now())


def memory_stats(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError) as exc:  # not every backend implements it
        return {"error": f"{type(exc).__name__}: {exc}"}
    if m is None:
        return {"error": "memory_analysis() returned None"}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
    return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


# --------------------------------------------------------------------------- child
def floor_bytes(N: int, d: int, L: int, M: int, itemsize: int = 4) -> int:
    """x (N d), y (N), stored states (N L d), Theta, gradient and update (3 L M k), k = 2d + 1."""
    return itemsize * (N * d + N + N * L * d + 3 * L * M * (2 * d + 1))


def child(kind: str, N: int, d: int, L: int, M: int, naive_limit: float, run_naive: bool,
          tile: int | None = None):
    t_start = time.perf_counter()
    sys.path.insert(0, HERE)
    import _baselines as B
    import jax
    import numpy as np

    device = jax.devices()[0]
    x, y, Theta = B.make_inputs(N, d, L, M)
    if kind == "wflow":
        problem = B.wflow_problem(x, y, device, tile)
        args = (problem, jax.device_put(Theta, device))
        fn = B.wflow_step()
    else:
        lr = L * M * B.DS

        def fn(Theta, x, y):
            loss, g = jax.value_and_grad(B.naive_scan_loss)(Theta, x, y)
            return loss, Theta - lr * g

        args = jax.device_put((Theta, x, y), device)
    jax.block_until_ready(args)
    del x, y, Theta
    out = {"kind": kind, "size": {"N": N, "d": d, "L": L, "M": M}, "tile": tile,
           "floor_bytes": floor_bytes(N, d, L, M),
           "backend": jax.default_backend(), "device": str(device),
           "baseline_maxrss": maxrss(), "baseline_rss": rss_now()}

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["xla"] = memory_stats(compiled)
    out["after_compile_maxrss"] = maxrss()

    temp = out["xla"].get("temp_size_in_bytes")
    execute = kind == "wflow" or (run_naive and temp is not None and temp <= naive_limit * GIB)
    out["executed"] = execute
    out["naive_limit_gib"] = naive_limit
    if execute:
        before = rss_now()
        t0 = time.perf_counter()
        with RssSampler() as sampler:
            loss, _ = jax.block_until_ready(compiled(*args))
        out["run_s"] = time.perf_counter() - t0
        out["loss"] = float(loss)
        out["finite"] = bool(np.isfinite(out["loss"]))
        out["run_rss_before"] = before
        out["run_rss_peak_sampled"] = sampler.peak
        out["peak_maxrss"] = maxrss()
        stats = getattr(device, "memory_stats", lambda: None)()
        if stats and "peak_bytes_in_use" in stats:
            out["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    out["child_wall_s"] = time.perf_counter() - t_start
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- parent
def run_child(kind, size, args) -> dict:
    N, d, L, M = size
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind,
           "--size", f"{N},{d},{L},{M}", "--naive-limit-gib", str(args.naive_limit_gib)]
    if args.tile is not None:
        cmd += ["--tile", str(args.tile)]
    if args.no_run_naive:
        cmd.append("--no-run-naive")
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # GPU: allocate on demand
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench_memory: the {kind!r} subprocess failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def fmt(b) -> str:
    if b is None:
        return "-"
    if abs(b) >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / MIB:.1f} MiB" if abs(b) < 10 * MIB else f"{b / MIB:.0f} MiB"


def report(r: dict):
    label = {"wflow": "wflow step (evaluate + Euler update)",
             "naive": "naive: jax.value_and_grad of a plain lax.scan (no remat)"}[r["kind"]]
    print(f"\n{label}")
    x = r["xla"]
    if "error" in x:
        print(f"  XLA memory_analysis: unavailable ({x['error']})")
    else:
        # peak_memory_in_bytes is kept in the JSON only: on the CPU backend it
        # counts arguments and outputs but not the temp buffer.
        print(f"  XLA memory_analysis: temp {fmt(x.get('temp_size_in_bytes'))}, "
              f"arguments {fmt(x.get('argument_size_in_bytes'))}, "
              f"outputs {fmt(x.get('output_size_in_bytes'))}   (compile {r['compile_s']:.1f} s)")
    print(f"  baseline RSS after import + inputs: {fmt(r['baseline_maxrss'])} (ru_maxrss)")
    print(f"  compile: ru_maxrss {fmt(r['after_compile_maxrss'])} "
          f"(+{fmt(r['after_compile_maxrss'] - r['baseline_maxrss'])} over baseline)")
    if not r["executed"]:
        print(f"  not executed (temp size above --naive-limit-gib = {r['naive_limit_gib']:g} GiB, "
              "or --no-run-naive)")
        return
    inc = r["peak_maxrss"] - r["baseline_maxrss"]
    run_inc = r["run_rss_peak_sampled"] - r["run_rss_before"]
    print(f"  peak RSS (ru_maxrss after the step): {fmt(r['peak_maxrss'])}; "
          f"increment over baseline {fmt(inc)}")
    print(f"  during execution only (sampled RSS): peak {fmt(r['run_rss_peak_sampled'])}, "
          f"+{fmt(run_inc)} over the RSS before the call   (run {r['run_s']:.1f} s, "
          f"loss {r['loss']:.4g})")
    if "device_peak_bytes_in_use" in r:
        print(f"  device allocator peak_bytes_in_use: {fmt(r['device_peak_bytes_in_use'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default=",".join(map(str, DEFAULT_SIZE)), metavar="N,d,L,M")
    ap.add_argument("--naive-limit-gib", type=float, default=8.0,
                    help="execute the naive gradient only if XLA's temp size is at most this")
    ap.add_argument("--no-run-naive", action="store_true",
                    help="only compile the naive gradient (report XLA's estimate)")
    ap.add_argument("--tile", type=int, default=None,
                    help="wflow kernel tile in elements (default: wflow's solver.tile default)")
    ap.add_argument("--skip-naive", action="store_true",
                    help="do not even compile the naive gradient (large sizes)")
    ap.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    ap.add_argument("--child", choices=("wflow", "naive"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.split(","))
        if len(size) != 4 or min(size) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--size {args.size!r}: expected N,d,L,M (four integers >= 1)")

    if args.child:
        child(args.child, *size, args.naive_limit_gib, not args.no_run_naive, args.tile)
        return

    N, _, L, M = size
    print(f"(N, d, L, M) = {size}, float32; all activations N*L*M*4 B = {fmt(4 * N * L * M)}; "
          f"one layer's (N, M) = {fmt(4 * N * M)}")
    kinds = ("wflow",) if args.skip_naive else ("wflow", "naive")
    results = [run_child(kind, size, args) for kind in kinds]
    print(f"backend {results[0]['backend']}, device {results[0]['device']}")
    for r in results:
        report(r)
    w = results[0]
    from wflow._features import TILE, TILE_CPU

    tile = args.tile or (TILE_CPU if results[0]["backend"] == "cpu" else TILE)
    print(f"\nfloor O(N L d + L M k): {fmt(w['floor_bytes'])} (x, y, stored states, Theta, "
          f"gradient, update; float32); tile {tile} elements = {fmt(4 * tile)}")
    x = w["xla"]
    if "error" not in x:
        held = x["argument_size_in_bytes"] + x["output_size_in_bytes"] + x["temp_size_in_bytes"]
        states = 4 * N * L * size[1]
        print(f"the step's buffers (XLA arguments + outputs + temp): {fmt(held)} = "
              f"{held / w['floor_bytes']:.2f} x the floor; temp {fmt(x['temp_size_in_bytes'])} = "
              f"stored states N L d {fmt(states)} + {fmt(x['temp_size_in_bytes'] - states)} "
              f"(blocks and per-layer vectors; tile {fmt(4 * tile)})")
    peak = w.get("device_peak_bytes_in_use") if w["backend"] != "cpu" else w["peak_maxrss"]
    what = "device peak_bytes_in_use" if w["backend"] != "cpu" else "peak RSS"
    if size == DEFAULT_SIZE:
        print(f"\ntarget: wflow step {what} < {TARGET_GIB:g} GiB: {fmt(peak)} -> "
              f"{'met' if peak is not None and peak < TARGET_GIB * GIB else 'NOT met'}")
    else:
        print(f"\nwflow step {what}: {fmt(peak)} (the < {TARGET_GIB:g} GiB target is for the "
              f"default size {DEFAULT_SIZE})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"target_gib": TARGET_GIB, "results": results}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
