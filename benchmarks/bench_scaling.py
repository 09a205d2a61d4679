"""How the cost of one training step grows with N, M, L and d, and over devices.

The step is the one of ``bench_step.py`` (loss, dE/dTheta, Euler update of the
gradient flow, float32, ``neuron`` features with tanh; ``_baselines.py``).
For each sweep one size varies over >= 1.5 decades while the others stay at
the base size. At every point, in one process and in interleaved rounds:

* wflow, layered depth (jit, compiled apart from the timing);
* PyTorch eager and ``torch.compile`` on the same device (torch.compile: at
  the base size in ``--quick`` mode, at every point with L <= ``--compile-max-L``
  in full mode; it recompiles for every shape);
* wflow, continuous depth (diffrax Tsit5, rtol 1e-5, checkpointed adjoint):
  at the base size, and along the L sweep in full mode.

Reported: median step time, log-log slope of time against size (fitted over
the upper half of each sweep, where launch overhead no longer dominates; goal
1 +- 0.1 for N, M, L), achieved FLOP/s and its share of the device's fp32 peak.

FLOP count per step (model FLOPs, the MFU convention): 12 N M d L. Per layer
the forward is two contractions with the d-axis (w . z: 2 N M d, sum_m u_m
sigma: 2 N M d) and the backward is twice the forward (gradients with respect
to the states and to the parameters: 8 N M d). Elementwise work (bias, tanh,
tanh', products: ~10 N M L), the activations the adjoint recomputes and the
O(N L d + L M k) updates are not counted, so the share is a lower bound of
the hardware's utilization, honest for d >> 1 and pessimistic at d = 2.

Device peak (fp32, no tensor cores; ``--peak-tflops`` overrides):
* CPU: cores x clock x FLOPs/cycle/core, with the clock from the model name
  (``@ 2.50GHz``, else /proc/cpuinfo "cpu MHz", the nominal clock, no turbo) and
  64 FLOPs/cycle with AVX-512 on 512-bit units (Intel Xeon, AMD Zen 5: 2 FMA
  units x 16 lanes x 2), 32 with AVX2+FMA or AVX-512 on 256-bit units (AMD
  Zen 2-4), 8 otherwise;
* GPU: H100 SXM / H200 67 TFLOP/s, H100 PCIe 51, A100 19.5 (vendor data sheets).
The GPU goal is >= 40 % at d = 64, N = M = 8192, L = 64 (``--goal``, on by
default with a GPU; about a minute per step on 2 CPU cores).

Weak and strong scaling over devices (``--devices``): one subprocess that sees
max(devices) devices (forced host devices on the CPU:
``--xla_force_host_platform_device_count``; all real GPUs otherwise) times the
step split over n of them (``wflow._sharding.ShardedDepth``, "data" and
"particles"): strong = fixed total size, weak = N (data) or M (particles)
growing with n; each split run is checked against the 1-device step. Forced
CPU devices share the same cores: they show correctness and overhead only.

    python benchmarks/bench_scaling.py --quick                  # < 2 min on 2 cores
    python benchmarks/bench_scaling.py                          # full (~30 min on 2 cores)
    python benchmarks/bench_scaling.py --device cuda --json gpu.json   # GPU (JAX and torch)

On a GPU (``--device cuda``) the sweeps start at N = M = 4096, L = 32 (below
that a step is a few kernel launches) and the strong-scaling size is 16384,2,32,16384
by default; device counts above the visible GPUs are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import _baselines as B
import numpy as np
from bench_step import machine_info, time_interleaved

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AXES = ("N", "M", "L", "d")

# base (N, d, L, M) and the values of each swept size
QUICK = {"base": {"N": 256, "d": 2, "L": 16, "M": 256},
         "N": [128, 512, 1024, 4096], "M": [128, 512, 1024, 4096],
         "L": [4, 16, 32, 128], "d": [2, 8, 16, 64]}
FULL = {"base": {"N": 512, "d": 2, "L": 32, "M": 512},
        "N": [128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        "M": [128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        "L": [4, 8, 16, 32, 64, 128, 256, 512],
        "d": [2, 4, 8, 16, 32, 64, 128]}
# On a GPU the small sizes only measure launch overhead: larger sweeps (--device cuda).
GPU_QUICK = {"base": {"N": 4096, "d": 2, "L": 32, "M": 4096},
             "N": [1024, 4096, 16384, 65536], "M": [1024, 4096, 16384, 65536],
             "L": [8, 32, 128, 512], "d": [2, 8, 32, 128]}
GPU_FULL = {"base": {"N": 4096, "d": 2, "L": 32, "M": 4096},
            "N": [1024, 2048, 4096, 8192, 16384, 32768, 65536],
            "M": [1024, 2048, 4096, 8192, 16384, 32768, 65536],
            "L": [8, 16, 32, 64, 128, 256, 512],
            "d": [2, 4, 8, 16, 32, 64, 128]}
GOAL = {"N": 8192, "d": 64, "L": 64, "M": 8192}
GOAL_SHARE = 0.40
GPU_PEAK_TFLOPS = (("H200", 67.0), ("H100 PCIe", 51.0), ("H100", 67.0), ("A100", 19.5))


def flops(size: dict) -> float:
    """Model FLOPs of one step: 12 N M d L (module docstring)."""
    return 12.0 * size["N"] * size["M"] * size["d"] * size["L"]


def cpu_peak() -> tuple[float | None, str]:
    """fp32 peak of the usable CPU cores in FLOP/s, and how it was obtained."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return None, "no /proc/cpuinfo"
    model = re.search(r"model name\s*:\s*(.*)", text)
    model = model.group(1) if model else ""
    ghz = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if ghz:
        clock = float(ghz.group(1)) * 1e9
    else:
        mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
        if not mhz:
            return None, "no clock in /proc/cpuinfo"
        clock = float(mhz.group(1)) * 1e6
    flags = re.search(r"flags\s*:\s*(.*)", text)
    flags = set(flags.group(1).split()) if flags else set()
    family = re.search(r"cpu family\s*:\s*(\d+)", text)
    family = int(family.group(1)) if family else 0
    amd = "AuthenticAMD" in text
    if "avx512f" in flags and not (amd and family < 26):
        per_cycle, isa = 64, "AVX-512, 2 FMA units x 16 fp32 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        # AMD Zen 2-4 (family 23, 25) execute AVX-512 on 256-bit FMA units.
        per_cycle, isa = 32, "2 FMA units x 8 fp32 lanes x 2" + (
            " (AMD Zen 4: AVX-512 on 256-bit units)" if "avx512f" in flags else ", AVX2")
    else:
        per_cycle, isa = 8, "SSE"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak = cores * clock * per_cycle
    return peak, f"{cores} cores x {clock / 1e9:.2f} GHz x {per_cycle} FLOP/cycle ({isa})"


def device_peak(backend: str, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if backend == "cpu":
        return cpu_peak()
    import jax

    name = jax.devices()[0].device_kind
    for key, tflops in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12, f"{name}: {tflops} TFLOP/s fp32 (data sheet)"
    return None, f"{name}: unknown peak (give --peak-tflops)"


# ----------------------------------------------------------------------------- one size


def bench_point(size: dict, which: set, args) -> dict:
    """Time the implementations in ``which`` at one size; loss agreement checked first."""
    import jax

    import wflow

    N, d, L, M = (size[a] for a in ("N", "d", "L", "M"))
    lr = L * M * B.DS
    x, y, Theta0 = B.make_inputs(N, d, L, M, seed=args.seed)
    device = jax.devices()[0]
    problem = B.wflow_problem(x, y, device)
    out = {"size": dict(size), "flops": flops(size), "impl": {}}
    fns, losses = {}, {}

    for name, depth in (("wflow", wflow.LayeredDepth()), ("continuous", wflow.ContinuousDepth())):
        if name not in which:
            continue
        t0 = time.perf_counter()
        step = jax.jit(B.wflow_step(depth=depth)).lower(problem, jax.device_put(Theta0, device))
        step = step.compile()
        state = {"Theta": jax.device_put(Theta0, device)}
        loss, _ = step(problem, state["Theta"])
        losses[name] = float(loss)
        out["impl"][name] = {"compile_s": time.perf_counter() - t0}

        def run(step=step, state=state):
            _, state["Theta"] = step(problem, state["Theta"])
            jax.block_until_ready(state["Theta"])

        fns[name] = run
    for name, compiled in (("torch", False), ("torch.compile", True)):
        if name not in which:
            continue
        t0 = time.perf_counter()
        if compiled:
            import torch

            # A fresh dynamo cache per size: recompilations of the same code object count
            # against torch's recompile limit, beyond which it silently runs eager.
            torch._dynamo.reset()
        model = B.TorchResNet(x, y, Theta0, args.device, compile=compiled)
        losses[name] = model.loss()
        model.step(lr)  # first call compiles (torch.compile), untimed
        out["impl"][name] = {"compile_s": time.perf_counter() - t0}
        fns[name] = lambda model=model: model.step(lr)

    # Correctness first: every implementation's loss at the same inputs. Continuous
    # depth is a different discretization (an O(1/L) difference), only reported.
    ref = losses["wflow"]
    for name, value in losses.items():
        diff = abs(value - ref) / abs(ref)
        out["impl"][name]["loss_vs_wflow"] = diff
        if name != "continuous" and diff > args.tol:
            raise SystemExit(f"{name} at {size}: loss differs from wflow's by {diff:.1e} "
                             f"(> {args.tol:g}); not timing wrong code")

    # A few untimed calls, then as many timed rounds as fit the point's budget.
    t0 = time.perf_counter()
    for fn in fns.values():
        fn()
    one_round = time.perf_counter() - t0
    repeats = int(min(args.repeats, max(3, args.point_budget / max(one_round, 1e-9))))
    times = time_interleaved(fns, repeats, warmup=1)
    for name, t in times.items():
        r = out["impl"][name]
        r.update(t)
        r["repeats"] = repeats
        r["flops_per_s"] = flops(size) / (t["median_ms"] * 1e-3)
    return out


def fit_slope(xs, ts) -> tuple[float, float]:
    """(slope over the upper half of the sweep, slope over all points) of log t vs log x."""
    xs, ts = np.log(np.asarray(xs, float)), np.log(np.asarray(ts, float))
    half = len(xs) // 2 - (1 if len(xs) % 2 == 0 and len(xs) > 3 else 0)
    upper = np.polyfit(xs[half:], ts[half:], 1)[0]
    return float(upper), float(np.polyfit(xs, ts, 1)[0])


def run_sweeps(plan: dict, args) -> dict:
    base = plan["base"]
    sweeps = {}
    base_which = {"wflow", "torch", "torch.compile", "continuous"}
    print(f"\nbase size (N, d, L, M) = ({base['N']}, {base['d']}, {base['L']}, {base['M']})")
    base_point = bench_point(base, base_which, args)
    print_point(base_point)
    for axis in AXES:
        print(f"\nsweep over {axis}: {plan[axis]}")
        points = []
        for value in plan[axis]:
            size = dict(base, **{axis: value})
            which = {"wflow", "torch"}
            if not args.quick and size["L"] <= args.compile_max_L:
                which.add("torch.compile")
            if not args.quick and axis == "L":
                which.add("continuous")
            if size == base:
                point = base_point
            else:
                point = bench_point(size, which, args)
            print_point(point, axis)
            points.append(point)
            sys.stdout.flush()
        slopes = {}
        for impl in ("wflow", "torch", "torch.compile", "continuous"):
            xs = [p["size"][axis] for p in points if impl in p["impl"]]
            ts = [p["impl"][impl]["median_ms"] for p in points if impl in p["impl"]]
            if len(xs) >= 3:
                slopes[impl] = dict(zip(("upper", "all"), fit_slope(xs, ts)))
        sweeps[axis] = {"values": plan[axis], "points": points, "slopes": slopes}
        print("  slopes d log t / d log " + axis + " (upper half / all points): " +
              ", ".join(f"{k} {v['upper']:.2f} / {v['all']:.2f}" for k, v in slopes.items()))
    return {"base": base_point, "sweeps": sweeps}


def print_point(p: dict, axis: str | None = None):
    s = p["size"]
    label = f"{axis}={s[axis]}" if axis else "base"
    parts = []
    for name in ("wflow", "continuous", "torch", "torch.compile"):
        if name in p["impl"]:
            r = p["impl"][name]
            parts.append(f"{name} {r['median_ms']:.3g} ms")
    w = p["impl"]["wflow"]
    ratios = [f"torch/wflow {p['impl']['torch']['median_ms'] / w['median_ms']:.2f}"]
    if "torch.compile" in p["impl"]:
        ratios.append(f"compile/wflow "
                      f"{p['impl']['torch.compile']['median_ms'] / w['median_ms']:.2f}")
    if "continuous" in p["impl"]:
        ratios.append(f"continuous/layered {p['impl']['continuous']['median_ms'] / w['median_ms']:.1f}")
    print(f"  {label:<10} " + ", ".join(parts) + "   [" + ", ".join(ratios) +
          f"]  wflow {w['flops_per_s'] / 1e9:.2f} GFLOP/s")


# ----------------------------------------------------------------------------- devices


def devices_child(args):
    """Runs in a subprocess that sees max(--devices) devices; prints RESULT <json>."""
    import jax

    import wflow
    from wflow._sharding import ShardedDepth, make_mesh

    visible = len(jax.devices())
    counts = [n for n in (int(v) for v in args.devices.split(",")) if n <= visible]
    base = {"N": args.scaling_size[0], "d": args.scaling_size[1], "L": args.scaling_size[2],
            "M": args.scaling_size[3]}
    depth = wflow.LayeredDepth()
    out = {"backend": jax.default_backend(), "visible": len(jax.devices()), "runs": []}

    def one(size, n, mode):
        N, d, L, M = (size[a] for a in ("N", "d", "L", "M"))
        x, y, Theta0 = B.make_inputs(N, d, L, M, seed=args.seed)
        problem = B.wflow_problem(x, y, jax.devices()[0])
        step = B.wflow_step(depth=depth)
        ref = np.asarray(jax.jit(step)(problem, Theta0)[1])
        split = depth if n == 1 else ShardedDepth(depth, make_mesh(n), mode)
        p, th = split.place(problem, Theta0)
        fn = jax.jit(B.wflow_step(depth=split)).lower(p, th).compile()
        new = np.asarray(fn(p, th)[1])
        state = {"th": th}

        def run():
            _, state["th"] = fn(p, state["th"])
            jax.block_until_ready(state["th"])

        t = time_interleaved({"step": run}, args.scaling_repeats, warmup=1)["step"]
        return {"n": n, "mode": mode, "size": size, "median_ms": t["median_ms"],
                "min_ms": t["min_ms"], "step_vs_1_device": B.max_rel_diff(new, ref)}

    for mode in ("data", "particles"):
        axis = "N" if mode == "data" else "M"
        for n in counts:
            out["runs"].append({"kind": "strong", **one(base, n, mode)})
            weak = dict(base, **{axis: base[axis] * n // max(counts)})
            out["runs"].append({"kind": "weak", **one(weak, n, mode)})
    print("RESULT " + json.dumps(out))


def run_devices(args) -> dict | None:
    counts = [int(n) for n in args.devices.split(",")]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if args.device == "cpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={max(counts)}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.abspath(__file__), "--devices-child", "--devices", args.devices,
           "--scaling-size", ",".join(map(str, args.scaling_size)),
           "--scaling-repeats", str(args.scaling_repeats), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print("device scaling: the subprocess failed (see above); skipped")
        return None
    res = json.loads(lines[-1][len("RESULT "):])
    counts = sorted({r["n"] for r in res["runs"]})
    print(f"\nweak / strong scaling over {res['visible']} {res['backend']} devices "
          f"(layered step; strong: size {args.scaling_size}; weak: N (data) or M (particles) "
          f"= its value x n / {max(counts)})")
    print(f"  {'kind':<7}{'mode':<10}{'n':>3}{'(N, d, L, M)':>24}{'ms':>10}{'t1/tn':>8}"
          f"{'vs 1 dev':>10}")
    t1 = {(r["kind"], r["mode"]): r["median_ms"] for r in res["runs"] if r["n"] == 1}
    for r in res["runs"]:
        s = r["size"]
        ratio = t1[(r["kind"], r["mode"])] / r["median_ms"]
        r["t1_over_tn"] = ratio
        print(f"  {r['kind']:<7}{r['mode']:<10}{r['n']:>3}"
              f"{(s['N'], s['d'], s['L'], s['M'])!s:>24}{r['median_ms']:>10.2f}{ratio:>8.2f}"
              f"{r['step_vs_1_device']:>10.1e}")
    print("  (strong: ideal t1/tn = n; weak: ideal 1. Forced CPU devices share the machine's "
          "cores, so only the correctness column and the overhead mean something there.)")
    return res


# ----------------------------------------------------------------------------- figure


def figure(result: dict, path: str):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    styles = {"wflow": ("C0", "o", "wflow (layered)"), "continuous": ("C3", "D", "wflow continuous"),
              "torch": ("C1", "s", "torch eager"), "torch.compile": ("C2", "^", "torch.compile")}
    info = result["machine"]
    for ax, axis in zip(axes.flat, AXES):
        sw = result["sweeps"][axis]
        for impl, (color, marker, label) in styles.items():
            pts = [p for p in sw["points"] if impl in p["impl"]]
            if not pts:
                continue
            xs = [p["size"][axis] for p in pts]
            ts = [p["impl"][impl]["median_ms"] for p in pts]
            slope = sw["slopes"].get(impl, {}).get("upper")
            lab = f"{label} (slope {slope:.2f})" if slope is not None else label
            ax.loglog(xs, ts, marker=marker, color=color, label=lab)
        xs = np.asarray(sw["values"], float)
        t_w = [p["impl"]["wflow"]["median_ms"] for p in sw["points"]]
        ax.loglog(xs, t_w[-1] * xs / xs[-1], ":", color="gray", label="slope 1")
        others = ", ".join(f"{a}={v}" for a, v in result["base"]["size"].items() if a != axis)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sw["values"], [str(v) for v in sw["values"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{axis}   ({others})")
        ax.set_ylabel("ms per training step")
        ax.set_title(f"step time vs {axis}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[4]
    for axis, color in zip(AXES, ("C0", "C1", "C2", "C4")):
        pts = result["sweeps"][axis]["points"]
        ax.semilogx([p["flops"] for p in pts],
                    [100 * p["impl"]["wflow"]["flops_per_s"] / result["peak"] if result["peak"]
                     else np.nan for p in pts], "o-", color=color, label=f"{axis} sweep")
    if result.get("goal"):
        g = result["goal"]["impl"]["wflow"]
        ax.semilogx([result["goal"]["flops"]], [100 * g["flops_per_s"] / result["peak"]], "k*",
                    ms=14, label="goal size d=64, N=M=8192, L=64")
        ax.axhline(100 * GOAL_SHARE, color="k", ls=":", lw=1)
    ax.set_xlabel("model FLOPs per step (12 N M d L)")
    ax.set_ylabel("% of fp32 peak")
    ax.set_title(f"wflow utilization (peak {result['peak'] / 1e9:.0f} GFLOP/s)"
                 if result["peak"] else "wflow utilization (peak unknown)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    dev = result.get("devices")
    if dev:
        for (kind, mode), color in zip([(k, m) for k in ("strong", "weak")
                                        for m in ("data", "particles")], ("C0", "C1", "C2", "C3")):
            runs = [r for r in dev["runs"] if r["kind"] == kind and r["mode"] == mode]
            ax.plot([r["n"] for r in runs], [r["median_ms"] for r in runs], marker="o",
                    color=color, ls="-" if kind == "strong" else "--", label=f"{kind}, {mode}")
        ax.set_xlabel(f"devices ({dev['backend']}{', forced host devices' if dev['backend'] == 'cpu' else ''})")
        ax.set_ylabel("ms per step")
        ax.set_title("strong (fixed size) / weak (size x n) scaling")
        ax.set_xticks(sorted({r["n"] for r in dev["runs"]}))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle(f"wflow scaling, {info['jax_backend']}: {info.get('device_name', info['cpu_model'])}"
                 f" - {info['date_utc']} (jax {info['jax']}, torch {info['torch']})", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- main


def parse_size(text):
    vals = tuple(int(v) for v in text.split(","))
    if len(vals) != 4 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,d,L,M (four integers >= 1)")
    return vals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sweeps (< 2 min on 2 CPU cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: JAX on its CPU backend, torch on the CPU; cuda: both on the GPU")
    ap.add_argument("--repeats", type=int, default=7, help="most timed rounds per point")
    ap.add_argument("--point-budget", type=float, default=None,
                    help="seconds of timed rounds per point (default 1 quick, 6 full)")
    ap.add_argument("--compile-max-L", type=int, default=64,
                    help="full mode: torch.compile only where L <= this (it unrolls the layers)")
    ap.add_argument("--goal", action=argparse.BooleanOptionalAction, default=None,
                    help="time the goal size d=64, N=M=8192, L=64 (default: on with a GPU)")
    ap.add_argument("--devices", default="1,2,4",
                    help="device counts for weak/strong scaling ('' to skip)")
    ap.add_argument("--scaling-size", type=parse_size, default=None, metavar="N,d,L,M",
                    help="strong-scaling size (default 1024,2,16,1024 quick, 4096,2,32,4096 full)")
    ap.add_argument("--scaling-repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the fp32 peak")
    ap.add_argument("--torch-threads", type=int, default=None, metavar="N",
                    help="torch.set_num_threads(N) (default: torch's own; 1 is robust on a busy "
                    "machine, see benchmarks/README.md)")
    ap.add_argument("--tol", type=float, default=1e-4, help="loss agreement before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    ap.add_argument("--figure", default=os.path.join(HERE, "results", "scaling.png"))
    ap.add_argument("--devices-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scaling_size is None:
        if args.device == "cuda":
            args.scaling_size = (16384, 2, 32, 16384)
        else:
            args.scaling_size = (1024, 2, 16, 1024) if args.quick else (4096, 2, 32, 4096)
    if args.devices_child:
        devices_child(args)
        return
    if args.point_budget is None:
        args.point_budget = 1.0 if args.quick else 6.0

    import jax

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch reports no CUDA device")
        if jax.default_backend() != "gpu":
            ap.error(f"--device cuda: JAX's default backend is {jax.default_backend()!r}, not gpu")
    elif jax.default_backend() != "cpu":
        jax.config.update("jax_platforms", "cpu")
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    t_start = time.perf_counter()
    info = machine_info(args.device)
    if jax.default_backend() != "cpu":
        info["device_name"] = jax.devices()[0].device_kind
    peak, how = device_peak(jax.default_backend(), args.peak_tflops)
    print("machine:", info["cpu_model"], f"({info['cpus_usable']} usable cores), {info['platform']}")
    print(f"versions: python {info['python']}, jax {info['jax']}, torch {info['torch']}, "
          f"numpy {info['numpy']}; jax devices {info['jax_devices']}; torch {args.device}, "
          f"{info['torch_threads']} threads; {info['date_utc']} UTC")
    print(f"fp32 peak: {peak / 1e9:.1f} GFLOP/s ({how})" if peak else f"fp32 peak: {how}")
    load = info["load_average_1min"]
    if load is not None and load > 0.5:
        print(f"WARNING: 1-minute load average {load:.2f}: other processes are running; "
              "timings are noisy (ratios measured in interleaved rounds are more robust)")
    print("step = loss + dE/dTheta + Euler update, float32; FLOPs = 12 N M d L per step; "
          "times are medians")

    if args.device == "cuda":
        plan = GPU_QUICK if args.quick else GPU_FULL
    else:
        plan = QUICK if args.quick else FULL
    result = {"machine": info, "peak": peak, "peak_source": how, "mode": "quick" if args.quick
              else "full", **run_sweeps(plan, args)}

    goal = args.goal if args.goal is not None else jax.default_backend() == "gpu"
    if goal:
        print(f"\ngoal size {GOAL}:")
        result["goal"] = bench_point(GOAL, {"wflow", "torch", "torch.compile"}, args)
        print_point(result["goal"])
        if peak:
            share = result["goal"]["impl"]["wflow"]["flops_per_s"] / peak
            print(f"  wflow share of fp32 peak: {100 * share:.1f} % (goal >= {100 * GOAL_SHARE:.0f} "
                  f"% on an H100/H200: {'met' if share >= GOAL_SHARE else 'NOT met'})")
    if args.devices:
        result["devices"] = run_devices(args)
    result["wall_s"] = time.perf_counter() - t_start
    print(f"\ntotal {result['wall_s']:.0f} s")
    if args.figure:
        figure(result, args.figure)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
