"""Kernel variants of the layered step, side by side on the current JAX backend.

Compares wflow's neuron adjoint (the hand-written ``Neuron.field_vjp`` on CPU,
JAX's VJP of the fused forward on other platforms, chosen by
``lax.platform_dependent``) with JAX's reverse-mode VJP of the same forward
everywhere, for the full training step and the forward pass, and checks they
agree.

    python benchmarks/bench_kernels.py [--sizes N,d,L,M ...] [--repeats 9]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import wflow
from wflow import FeatureMap


class AutodiffNeuron(wflow.Neuron):
    """The same neuron feature map with JAX's VJP in place of the hand-written adjoint."""

    def field(self, Z, Theta):
        return self.field_value(Z, Theta)

    def field_vjp(self, Z, Theta, P):
        return FeatureMap.field_vjp(self, Z, Theta, P)


def _time(f, *args, repeats):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts)), 1e3 * float(np.min(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256,2,32,512", "1024,2,64,2048"])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    depth = wflow.LayeredDepth()
    for size in args.sizes:
        N, d, L, M = (int(v) for v in size.split(","))
        x = jax.random.normal(jax.random.PRNGKey(0), (N, d))
        y = jnp.sin(2 * x[:, :1])
        rows = {}
        for cls in (wflow.Neuron, AutodiffNeuron):
            feat = cls(d=d)
            problem = wflow.Problem(feat, x, y)
            theta = jax.random.normal(jax.random.PRNGKey(1), (L, M, feat.k))
            step = jax.jit(lambda p, th: th + 0.1 * depth.evaluate(p, th).velocity)
            fwd = jax.jit(depth.loss)
            rows[cls.__name__] = (_time(step, problem, theta, repeats=args.repeats),
                                  _time(fwd, problem, theta, repeats=args.repeats),
                                  np.asarray(step(problem, theta)))
        (s_h, _, out_h), (s_a, _, out_a) = rows["Neuron"], rows["AutodiffNeuron"]
        diff = float(np.max(np.abs(out_h - out_a)) / np.max(np.abs(out_a)))
        print(f"\n(N, d, L, M) = ({N}, {d}, {L}, {M})   steps agree to {diff:.1e} (relative)")
        print(f"  {'adjoint':<22}{'step ms (med/min)':>20}{'fwd ms (med/min)':>20}{'step/fwd':>10}")
        for name, (st, fw, _) in (("wflow (per platform)", rows["Neuron"]),
                                  ("JAX autodiff VJP", rows["AutodiffNeuron"])):
            print(f"  {name:<22}{st[0]:>11.3f}/{st[1]:<8.3f}{fw[0]:>11.3f}/{fw[1]:<8.3f}"
                  f"{st[0] / fw[0]:>10.2f}")
        print(f"  wflow speed-up over autodiff: {s_a[0] / s_h[0]:.2f}x")


if __name__ == "__main__":
    main()
