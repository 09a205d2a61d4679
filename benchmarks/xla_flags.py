"""Screen XLA's CPU flags on wflow's training step: one fresh process per flag set and round.

    python benchmarks/xla_flags.py [--sizes N,d,L,M ...] [--rounds 3] [--flag=FLAGS ...]
        [--json results/xla_flags_screen.jsonl]

XLA reads ``XLA_FLAGS`` once, when the backend starts, so flag sets cannot be interleaved in one
process as ``ab_step.py`` interleaves revisions: each (round, flag set) is a child process, and
the flag sets alternate within every round so that this VM's slow phases hit them alike. A
child times the step of ``ab_step.py`` (``LayeredDepth.evaluate`` and the Euler update, float32,
Neuron features) under the ``wflow`` command's allocator policy and prints one JSON line: the
median and minimum step, the kernel's share of the CPU time (``getrusage``), and the loss and
the sum of theta after one step (equal across flag sets when a flag changes no arithmetic).
A flag XLA does not know ends its child; it is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = [
    "",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_use_xnnpack=false",
]


def child(sizes: list[str]) -> None:
    """Time the step at each size in this process; print one JSON line."""
    import resource
    import time

    sys.path.insert(0, ROOT)
    from ab_step import step_program  # sets the wflow command's allocator policy

    import jax
    import jax.numpy as jnp

    import wflow

    out = {}
    for text in sizes:
        N, d, L, M = (int(v) for v in text.split(","))
        step, theta = step_program(wflow, N, d, L, M)
        first = jax.block_until_ready(step(theta))
        times = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(41 if N * M * L < 1e7 else 9):
            t0 = time.perf_counter()
            jax.block_until_ready(step(theta))
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        out[text] = {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                     "kernel_share": (r1.ru_stime - r0.ru_stime) / cpu,
                     "loss": float(first[1]), "theta_sum": float(jnp.sum(first[0]))}
    print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "sizes": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["256,2,32,512", "1024,2,64,2048"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flag", action="append", dest="flags",
                    help="a flag set to screen against XLA's default, as one word "
                         "(--flag=--xla_cpu_...=...; repeat it; default: FLAGS)")
    ap.add_argument("--json", help="also write every child's line to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.sizes)
    args.flags = FLAGS if args.flags is None else ["", *args.flags]
    rows = []
    for _ in range(args.rounds):
        for flags in args.flags:
            env = dict(os.environ, XLA_FLAGS=flags)
            proc = subprocess.run([sys.executable, __file__, "--child", "--sizes", *args.sizes],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"flags": flags, "failed": last})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    base = {s: statistics.median(r["sizes"][s]["median_ms"] for r in rows
                                 if r["flags"] == "" and "sizes" in r) for s in args.sizes}
    for flags in args.flags:
        mine = [r for r in rows if r["flags"] == flags]
        if any("failed" in r for r in mine):
            print(f"{flags or '(default)'}: failed: {mine[0]['failed']}")
            continue
        for s in args.sizes:
            meds = [r["sizes"][s]["median_ms"] for r in mine]
            same = len({(r["sizes"][s]["loss"], r["sizes"][s]["theta_sum"]) for r in rows
                        if "sizes" in r}) == 1
            print(f"{flags or '(default)'} {s}: medians {', '.join(f'{m:.2f}' for m in meds)} ms"
                  f" (median / default's {statistics.median(meds) / base[s]:.2f}), kernel "
                  f"{statistics.median(r['sizes'][s]['kernel_share'] for r in mine):.1%}"
                  f"{'' if same else ', results differ across flag sets'}")


if __name__ == "__main__":
    main()
