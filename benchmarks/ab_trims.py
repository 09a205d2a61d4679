"""A/B: a study block with and without giving free memory back between its chunk's calls.

    python benchmarks/ab_trims.py [--size 2000] [--memory 7] [--factors 1 inf]

Runs ``wflow study limit configs/shapes_tanh.toml`` at one shape, M = D = ``--size`` (L = 50,
one seed, 14 gradient steps), with a reference of the same size: two blocks of one run each,
the largest block of the Chaintron-Chizat-Maass sweep at the default size. Each factor runs in
its own process under the ``wflow`` command's allocator policy (``WFLOW_MALLOC=no-preload``:
without the aligned-reuse shim). Between its calls a block gives free memory back by the rules
of ``wflow.study._limit._Watch`` (``wflow._preflight.release_free_memory``): without the shim
when its heap grew and more than its estimate is free; with the shim when its heap grew by
more than its estimate since its first check. Here the estimate is multiplied by the factor
(1: the shipped behaviour, inf: never between calls; the trims between blocks of different
shapes stay). Printed per factor, from ``resource.getrusage``: wall time, user and system CPU
time, the kernel's share, minor page faults, peak resident memory, how often memory was given
back, the allocator policy and, with the shim, how many large aligned requests it served from
a freed hole. The study files are compared: none of this changes a number.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(factor: float, argv: list[str]) -> None:
    """One study in this process, the between-call threshold scaled by ``factor``."""
    sys.path.insert(0, ROOT)
    from _wflow_entry import aligned_reuse_counts, allocator_policy, guard

    guard()
    policy = allocator_policy()  # the command's: may restart this process with the shim
    import wflow.study._limit as limit

    release, counts = limit.release_free_memory, [0, 0]

    def scaled(keep=0.0):
        counts[0] += 1
        done = release(keep=keep * factor)
        counts[1] += done
        return done

    limit.release_free_memory = scaled
    from wflow.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    r = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r.ru_utime + r.ru_stime
    print(f"factor {factor:g}: exit {rc}, wall {time.perf_counter() - t0:.1f} s, user "
          f"{r.ru_utime:.1f} s, system {r.ru_stime:.1f} s, kernel {100 * r.ru_stime / cpu:.1f}%, "
          f"{r.ru_minflt / 1e6:.2f} million minor faults, peak {r.ru_maxrss * 1024 / 1e9:.2f} GB, "
          f"gave memory back {counts[1]} times (of {counts[0]} tries); allocator {policy}"
          + ("" if (reuse := aligned_reuse_counts()) is None else
             f", {reuse[0]} aligned requests reused a hole, {reuse[1]} passed on"), flush=True)


def float_datasets(path: str) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2000, help="M = D of the block and the reference")
    ap.add_argument("--memory", type=float, default=7.0, help="study.memory (GiB)")
    ap.add_argument("--factors", nargs="+", type=float, default=[1.0, float("inf")])
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child is not None:
        return child(args.child, rest)
    import numpy as np

    s, folder = args.size, tempfile.mkdtemp(prefix="wflow_ab_trims_")
    files = []
    for factor in args.factors:
        out = os.path.join(folder, f"study_{factor:g}.h5")
        study = ["study", "limit", os.path.join(ROOT, "configs", "shapes_tanh.toml"), "-o", out,
                 "--no-plot", "--set", f"study.M=[{s}]", "--set", f"study.dims=[{s}]",
                 "--set", "study.seeds=1", "--set", f"study.reference_M={s}",
                 "--set", f"study.reference_dim={s}", "--set", f"study.memory={args.memory}"]
        run = subprocess.run([sys.executable, __file__, "--child", str(factor), *study],
                             check=False, capture_output=True, text=True)
        print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:],
              flush=True)
        files.append(out)
    first = float_datasets(files[0])
    for path in files[1:]:
        other = float_datasets(path)
        same = sum(np.array_equal(first[k], other[k], equal_nan=True) for k in first)
        print(f"{os.path.basename(path)} against {os.path.basename(files[0])}: {same} of "
              f"{len(first)} floating-point datasets bit-identical")


if __name__ == "__main__":
    main()
