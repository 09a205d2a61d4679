"""A/B: one training step of wflow at a git revision against the working tree, in one process.

    python benchmarks/ab_step.py REV [--sizes N,d,L,M ...] [--repeats 9]

``git archive REV wflow`` is extracted to a temporary folder and imported as the package
``wflow_old`` (every import inside wflow is relative, so the copy is self-contained). The
step is the flow's Euler step theta + h v with v from ``LayeredDepth.evaluate`` (loss,
forward, adjoint, velocities), float32, Neuron features; the two versions run in interleaved
rounds so that load from other processes affects both alike. Prints the medians, their ratio
and max |theta_old - theta_new| after one step (0 when the refactor changed no arithmetic).
The process runs under the ``wflow`` command's allocator policy (``WFLOW_MALLOC=default``:
glibc's), as a user's run does: without it a step at theta = 1.6 GB spent a third of its time
faulting in its fresh buffers (1499 against 953 ms at N, d, L, M = 10, 2000, 50, 2000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _wflow_entry import allocator_policy

# the allocator policy of the ``wflow`` command, before JAX starts (WFLOW_MALLOC=default: glibc's)
ALLOCATOR = allocator_policy()


def old_package(rev: str) -> str:
    """Extract wflow at ``rev`` as ``wflow_old`` into a temporary folder; return the folder."""
    folder = tempfile.mkdtemp(prefix="wflow_ab_")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "wflow"], check=True,
                             capture_output=True).stdout
    tar = os.path.join(folder, "old.tar")
    with open(tar, "wb") as f:
        f.write(archive)
    with tarfile.open(tar) as t:
        t.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "wflow"), os.path.join(folder, "wflow_old"))
    return folder


def step_program(pkg, N: int, d: int, L: int, M: int):
    """(step, theta): the jitted Euler step theta + 0.1 v (and the loss) of the package
    ``pkg`` (``wflow`` or an old copy) at (N, d, L, M), and its particles (float32, seeded)."""
    import jax
    import jax.numpy as jnp

    feat = pkg.Neuron(d=d)
    x = jax.random.normal(jax.random.PRNGKey(0), (N, d), jnp.float32)
    problem = pkg.Problem(feat, x, jnp.tanh(x[:, :1]))
    theta = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (L, M, feat.k), jnp.float32)
    depth = pkg.LayeredDepth()

    @jax.jit
    def step(theta):
        ev = depth.evaluate(problem, theta)
        return theta + 0.1 * ev.velocity, ev.loss

    return step, theta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision of the old version (e.g. HEAD~10)")
    ap.add_argument("--sizes", nargs="+", default=["256,2,32,512", "1024,2,64,2048"])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    sys.path.insert(0, old_package(args.rev))
    import jax
    import jax.numpy as jnp
    import wflow_old

    import wflow

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, old = {args.rev}, "
          f"allocator: {ALLOCATOR}")
    for text in args.sizes:
        size = tuple(int(v) for v in text.split(","))
        fns = {name: step_program(pkg, *size) for name, pkg in (("old", wflow_old), ("new", wflow))}
        outs = {n: jax.block_until_ready(f(t)) for n, (f, t) in fns.items()}
        diff = float(jnp.max(jnp.abs(outs["old"][0] - outs["new"][0])))
        times = {n: [] for n in fns}
        for _ in range(args.repeats):
            for n, (f, t) in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(t))
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        print(f"N,d,L,M = {size}: old {med['old']:.2f} ms, new {med['new']:.2f} ms, "
              f"new/old {med['new'] / med['old']:.3f}, max |theta_old - theta_new| = {diff:.2e}")


if __name__ == "__main__":
    main()
