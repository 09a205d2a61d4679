"""The Sinkhorn metric's cross solve OT_eps(mu_l, nu_l), slice by slice (what the metric does,
``wflow/study/_metrics/sinkhorn.py``) against one solve vmapped over the L slices (what it did),
in one process, min of 3 after a warm-up; float64, eps = 0.05, N(0, 0.5^2) points in 2-d.
A vmapped while loop steps every slice until the slowest has converged: it costs about
L x (max iterations), the slices one by one the sum of their iterations (both printed).

    python benchmarks/ab_sinkhorn.py
"""

import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from ott.geometry import pointcloud  # noqa: E402
from ott.solvers import linear  # noqa: E402

from wflow.study._metrics import sinkhorn  # noqa: E402

OPTS = sinkhorn.SOLVE_OPTIONS  # the metric's


def iterations(x, y, a, b, eps):
    return linear.solve(pointcloud.PointCloud(x, y, epsilon=eps), a, b, **OPTS).n_iters


def main():
    rng = np.random.default_rng(0)
    one = sinkhorn._solvers()[0]
    # the metric's own solve (the function it jits), vmapped over slices as it was before
    vmapped = jax.jit(jax.vmap(one.__wrapped__, in_axes=(0, 0, 0, 0, None)))
    counts = jax.jit(jax.vmap(iterations, in_axes=(0, 0, 0, 0, None)))
    for L, M, Mr in ((16, 64, 64), (64, 4, 64), (128, 8, 256), (16, 256, 4096)):
        x, y = rng.normal(0, 0.5, (L, M, 2)), rng.normal(0, 0.5, (L, Mr, 2))
        a, b = np.full((L, M), 1 / M), np.full((L, Mr), 1 / Mr)
        runs = {"per slice": lambda: sinkhorn._values([one(x[l], y[l], a[l], b[l], 0.05)
                                                       for l in range(L)]),
                "vmapped": lambda: np.asarray(vmapped(x, y, a, b, 0.05))}
        times = {k: [] for k in runs}
        values = {k: f() for k, f in runs.items()}
        for _ in range(3):
            for k, f in runs.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        n = np.asarray(counts(x, y, a, b, 0.05))
        d = np.max(np.abs(values["per slice"] - values["vmapped"]) / np.abs(values["vmapped"]))
        tp, tv = min(times["per slice"]), min(times["vmapped"])
        print(f"L = {L:3d}, M = {M:3d}, M' = {Mr:4d}: per slice {tp * 1e3:8.1f} ms, vmapped "
              f"{tv * 1e3:8.1f} ms, ratio {tp / tv:.2f}, max rel. difference {d:.1e}; "
              f"iterations per slice: mean {n.mean():.0f}, max {n.max()}")


if __name__ == "__main__":
    main()
