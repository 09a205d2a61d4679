"""Time one training step of the finite mean-field ResNet: wflow vs PyTorch eager vs NumPy.

A step is loss + dE/dTheta + the Euler update Theta <- Theta - L M ds dE/dTheta
(see ``_baselines.py`` for the three implementations). For every size, in one
process:

1. correctness: loss and gradient of each implementation at the same inputs,
   compared with wflow and with a float64 NumPy reference; the script stops if a
   baseline's gradient differs from wflow's by more than ``--tol`` (timing wrong
   code would be worthless);
2. wflow: trace+lower and XLA compile times of the jitted step and forward,
   reported apart from run times; run times with ``block_until_ready``;
3. median and min over ``--repeats`` (>= 5) timed calls after ``--warmup``
   untimed calls, for the forward pass alone and for the whole step; the three
   implementations are timed in interleaved rounds (one call of each per round)
   so that load from other processes affects them alike.

Ratios, not absolute times, are the result: speed-up = t_baseline / t_wflow
(medians), and step/forward = t_step / t_forward for each implementation.

4. the elementwise floor, in the same process: XLA's tanh pass and multiply-add pass
   (a * c1 + c2, one read and one write like the tanh pass) over N*M*L float32 elements,
   each in place (a donated buffer).
   A step must at least compute the pre-activations (a multiply-add), sigma (a tanh) and,
   in the backward pass, sigma' times the adjoint (a multiply-add): floor = t_tanh + 2 t_madd,
   and the step is printed as a multiple of it (goal <= 3x);
5. the operating system's share, from ``resource.getrusage`` over ``--repeats`` wflow steps
   run alone: minor page faults per step and kernel (system) time as a share of the CPU time
   (goal <= 3%): time the kernel spends giving fresh pages to new buffers is time lost.

    python benchmarks/bench_step.py                       # the two default sizes
    python benchmarks/bench_step.py --sizes 256,2,32,512 --json out.json
    python benchmarks/bench_step.py --device cuda         # torch on CUDA (JAX: default device)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import _baselines as B

from _wflow_entry import allocator_policy

# the allocator policy of the ``wflow`` command, before JAX starts (WFLOW_MALLOC=default: glibc's)
ALLOCATOR = allocator_policy()
import numpy as np

DEFAULT_SIZES = [(256, 2, 32, 512), (1024, 2, 64, 2048)]  # N*L*M: 4.2e6 and 16x that
GOALS = {"speedup_vs_torch": 3.0, "speedup_vs_numpy": 3.0, "wflow_step_over_forward": 3.0,
         "step_over_floor": 3.0, "kernel_share": 0.03}


def parse_size(text: str):
    try:
        N, d, L, M = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N,d,L,M (four integers)")
    if min(N, d, L, M) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: N, d, L, M must all be >= 1")
    return N, d, L, M


def machine_info(torch_device: str) -> dict:
    import jax
    import jaxlib
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(dev) for dev in jax.devices()],
        "torch_device": torch_device,
        "torch_threads": torch.get_num_threads(),
        "allocator": ALLOCATOR,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                if k in os.environ},
    }
    if torch_device == "cuda":
        info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return info


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """Time each function (which must block until its work is done) ``repeats`` times.

    The implementations are timed in rounds, one call of each per round, so that
    a slow period of a shared machine hits all of them alike and the ratios
    stay meaningful.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
                   "all_ms": [1e3 * v for v in t]} for name, t in times.items()}


def check_gradients(x, y, Theta, problem, torch_device, tol):
    """Loss and max relative gradient difference of every implementation, asserted < tol."""
    loss_w, g_w = B.wflow_loss_and_grad_theta(problem, Theta)
    loss_t, g_t = B.TorchResNet(x, y, Theta, torch_device).grad_theta()
    loss_n, g_n = B.NumpyResNet(x, y, Theta).grad_theta()
    loss_64, g_64 = B.NumpyResNet(x.astype(np.float64), y.astype(np.float64),
                                  Theta.astype(np.float64)).grad_theta()
    acc = {
        "wflow": {"loss": loss_w, "grad_vs_wflow": 0.0, "grad_vs_f64": B.max_rel_diff(g_w, g_64)},
        "torch": {"loss": loss_t, "grad_vs_wflow": B.max_rel_diff(g_t, g_w),
                  "grad_vs_f64": B.max_rel_diff(g_t, g_64)},
        "numpy": {"loss": loss_n, "grad_vs_wflow": B.max_rel_diff(g_n, g_w),
                  "grad_vs_f64": B.max_rel_diff(g_n, g_64)},
    }
    for name, a in acc.items():
        rel_loss = abs(a["loss"] - loss_64) / abs(loss_64)
        a["loss_vs_f64"] = rel_loss
        if not (a["grad_vs_wflow"] < tol and a["grad_vs_f64"] < tol and rel_loss < tol):
            raise SystemExit(
                f"gradient check failed for {name}: "
                f"grad rel. diff vs wflow {a['grad_vs_wflow']:.2e}, "
                f"vs float64 {a['grad_vs_f64']:.2e}, loss rel. diff vs float64 {rel_loss:.2e} "
                f"(tolerance {tol:.0e}); not timing wrong code"
            )
    return acc


def elementwise_floor(n: int, repeats: int, warmup: int) -> dict:
    """Medians (ms) of XLA's tanh pass and multiply-add pass over n float32 elements, and the
    step's floor t_tanh + 2 t_madd (module docstring)."""
    import jax
    import jax.numpy as jnp

    # in place (donated buffers): a fresh N*M*L output per call would time the kernel's page
    # faults (0.5 GB at the large size), which no fused step pays
    buf = {"tanh": jax.device_put(np.random.default_rng(0).standard_normal(n).astype(np.float32))}
    buf["madd"] = buf["tanh"] + 0.0
    tanh = jax.jit(jnp.tanh, donate_argnums=0)
    madd = jax.jit(lambda v: v * 0.5 + 0.25, donate_argnums=0)

    def run(name, fn):
        def call():
            buf[name] = fn(buf[name])
            jax.block_until_ready(buf[name])
        return call

    t = time_interleaved({"tanh": run("tanh", tanh), "madd": run("madd", madd)},
                         max(repeats, 11), warmup)
    out = {"tanh_ms": t["tanh"]["median_ms"], "madd_ms": t["madd"]["median_ms"]}
    out["floor_ms"] = out["tanh_ms"] + 2 * out["madd_ms"]
    return out


def os_share(fn, repeats: int) -> dict:
    """Minor page faults per call and the kernel's share of the CPU time over ``repeats``
    calls of ``fn`` run alone (``resource.getrusage``)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / repeats,
            "kernel_share": system / max(user + system, 1e-12),
            "cpu_ms_per_step": 1e3 * (user + system) / repeats}


def bench_size(N, d, L, M, args) -> dict:
    import jax

    lr = L * M * B.DS
    x, y, Theta0 = B.make_inputs(N, d, L, M, seed=args.seed)
    device = jax.devices()[0]
    problem = B.wflow_problem(x, y, device)
    Theta_j = jax.device_put(Theta0, device)

    acc = check_gradients(x, y, Theta0, problem, args.device, args.tol)

    # --- wflow: compile apart from run.
    res = {"size": {"N": N, "d": d, "L": L, "M": M}, "lr": lr, "accuracy": acc}
    comp = {}
    for name, fn in (("step", B.wflow_step()), ("forward", B.wflow_forward())):
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(problem, Theta_j)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        comp[name] = (compiled, {"trace_lower_s": t1 - t0, "compile_s": t2 - t1})
    step_c, fwd_c = comp["step"][0], comp["forward"][0]

    state = {"Theta": Theta_j}

    def wflow_step():
        loss, state["Theta"] = step_c(problem, state["Theta"])
        jax.block_until_ready((loss, state["Theta"]))

    def wflow_fwd():
        jax.block_until_ready(fwd_c(problem, Theta_j))

    tm = B.TorchResNet(x, y, Theta0, args.device)  # torch .item() synchronizes on CUDA
    nm = B.NumpyResNet(x, y, Theta0)
    fwd = time_interleaved({"wflow": wflow_fwd, "torch": tm.loss, "numpy": nm.loss},
                           args.repeats, args.warmup)
    step = time_interleaved({"wflow": wflow_step, "torch": lambda: tm.step(lr),
                             "numpy": lambda: nm.step(lr)}, args.repeats, args.warmup)
    for impl in ("wflow", "torch", "numpy"):
        res[impl] = {"forward": fwd[impl], "step": step[impl]}
    res["wflow"]["compile"] = {k: v[1] for k, v in comp.items()}
    res["floor"] = elementwise_floor(N * M * L, args.repeats, args.warmup)
    res["os"] = os_share(wflow_step, max(args.repeats, 10))

    for impl in ("wflow", "torch", "numpy"):
        r = res[impl]
        r["step_over_forward"] = r["step"]["median_ms"] / r["forward"]["median_ms"]
        r["speedup_step"] = r["step"]["median_ms"] / res["wflow"]["step"]["median_ms"]
        r["speedup_forward"] = r["forward"]["median_ms"] / res["wflow"]["forward"]["median_ms"]
    res["goals"] = {
        "speedup_vs_torch": res["torch"]["speedup_step"],
        "speedup_vs_numpy": res["numpy"]["speedup_step"],
        "wflow_step_over_forward": res["wflow"]["step_over_forward"],
        "step_over_floor": res["wflow"]["step"]["median_ms"] / res["floor"]["floor_ms"],
        "kernel_share": res["os"]["kernel_share"],
    }
    return res


def print_size(res):
    s = res["size"]
    print(f"\n(N, d, L, M) = ({s['N']}, {s['d']}, {s['L']}, {s['M']})   "
          f"N*L*M = {s['N'] * s['L'] * s['M']:.3g}   lr = L*M*ds = {res['lr']:g}")
    head = (f"{'implementation':<16}{'forward ms':>18}{'step ms':>20}{'step/fwd':>10}"
            f"{'wflow speed-up':>16}{'grad diff':>11}{'grad err':>10}")
    sub = (f"{'':<16}{'median / min':>18}{'median / min':>20}{'':>10}"
           f"{'step / fwd':>16}{'vs wflow':>11}{'vs f64':>10}")
    print(head)
    print(sub)
    print("-" * len(head))
    labels = {"wflow": "wflow (jax jit)", "torch": "torch eager", "numpy": "numpy by hand"}
    for impl in ("wflow", "torch", "numpy"):
        r, a = res[impl], res["accuracy"][impl]
        fwd = f"{r['forward']['median_ms']:.2f} / {r['forward']['min_ms']:.2f}"
        stp = f"{r['step']['median_ms']:.2f} / {r['step']['min_ms']:.2f}"
        spd = f"{r['speedup_step']:.2f}x / {r['speedup_forward']:.2f}x"
        print(f"{labels[impl]:<16}{fwd:>18}{stp:>20}{r['step_over_forward']:>10.2f}"
              f"{spd:>16}{a['grad_vs_wflow']:>11.1e}{a['grad_vs_f64']:>10.1e}")
    noisy = [f"{impl} {kind}" for impl in ("wflow", "torch", "numpy")
             for kind in ("forward", "step")
             if res[impl][kind]["median_ms"] > 1.5 * res[impl][kind]["min_ms"]]
    if noisy:
        print("WARNING: median > 1.5 x min for " + ", ".join(noisy) + ": the machine was busy")
    c = res["wflow"]["compile"]
    print(f"wflow compile: step {c['step']['trace_lower_s']:.2f} s trace+lower + "
          f"{c['step']['compile_s']:.2f} s XLA;  forward {c['forward']['trace_lower_s']:.2f} s + "
          f"{c['forward']['compile_s']:.2f} s  (not included in the times above)")
    f, o = res["floor"], res["os"]
    print(f"elementwise floor over N*M*L: tanh {f['tanh_ms']:.2f} ms, multiply-add "
          f"{f['madd_ms']:.2f} ms -> floor tanh + 2 madd = {f['floor_ms']:.2f} ms; wflow step = "
          f"{res['goals']['step_over_floor']:.2f}x the floor")
    print(f"operating system: {o['minor_faults_per_step']:.0f} minor page faults per step, "
          f"kernel time {100 * o['kernel_share']:.1f}% of {o['cpu_ms_per_step']:.1f} ms CPU "
          "per step (wflow steps alone)")
    g = res["goals"]

    def verdict(key, label, at_least, unit):
        ok = g[key] >= GOALS[key] if at_least else g[key] <= GOALS[key]
        bound = ">=" if at_least else "<="
        return (f"{label} {g[key]:.2f}{unit} (goal {bound} {GOALS[key]:g}{unit}: "
                f"{'met' if ok else 'NOT met'})")

    marks = [verdict("speedup_vs_torch", "speed-up vs torch", True, "x"),
             verdict("speedup_vs_numpy", "vs numpy", True, "x"),
             verdict("wflow_step_over_forward", "wflow step/forward", False, ""),
             verdict("step_over_floor", "step/floor", False, "x"),
             verdict("kernel_share", "kernel share", False, "")]
    print("goals: " + "; ".join(marks))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=DEFAULT_SIZES,
                    metavar="N,d,L,M", help="problem sizes (default: 256,2,32,512 1024,2,64,2048)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (>= 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (>= 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="torch device (JAX always uses its default backend)")
    ap.add_argument("--torch-threads", type=int, default=None, metavar="N",
                    help="torch.set_num_threads(N) (default: leave torch's default)")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max relative gradient difference allowed before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error(f"--repeats = {args.repeats}: must be >= 5")
    if args.warmup < 1:
        ap.error(f"--warmup = {args.warmup}: must be >= 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch reports no CUDA device")

    if args.torch_threads is not None:
        import torch

        if args.torch_threads < 1:
            ap.error(f"--torch-threads = {args.torch_threads}: must be >= 1")
        torch.set_num_threads(args.torch_threads)

    info = machine_info(args.device)
    print("machine:", info["cpu_model"], f"({info['cpu_count']} cores, "
          f"{info['cpus_usable']} usable), {info['platform']}")
    print(f"versions: python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']}, "
          f"torch {info['torch']}, numpy {info['numpy']}")
    print(f"allocator: {ALLOCATOR}")
    print(f"jax backend {info['jax_backend']}, devices {info['jax_devices']}; torch device "
          f"{info.get('torch_cuda_device', args.device)}, {info['torch_threads']} threads")
    load = info["load_average_1min"]
    if load is not None and load > 0.5:
        print(f"WARNING: 1-minute load average {load:.2f} before starting: other processes are "
              "running and the timings will be noisy (torch's OpenMP threads suffer most).")
    print(f"float32; {args.warmup} warm-up + {args.repeats} timed calls; ds = {B.DS}; "
          "speed-up = t_impl / t_wflow (medians); grad diff = max|g - g_ref| / max|g_ref|")

    results = []
    for N, d, L, M in args.sizes:
        res = bench_size(N, d, L, M, args)
        print_size(res)
        sys.stdout.flush()
        results.append(res)

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "goals": GOALS, "results": results}, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
