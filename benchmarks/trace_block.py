"""How long a study block's programs take to start: trace, lower and compile, in one process.

    python benchmarks/trace_block.py [CONFIG] [--block reference|sweep] [--rounds 2]

Builds the first block of the study CONFIG (default ``study_continuous_reference.toml``, beside
this script) as ``wflow study limit`` does (``ab_batch_loop.study_block``) and times, for its
Euler step and for its records' diagnostics, JAX's trace, the lowering to StableHLO and XLA's
compilation. Each round measures two settings, alternating: the continuous-depth field traced
once per shape (``_depth._blend`` through one ``jax.jit``, wflow's way) and traced at every
call (the stages of the solve, of diffrax's adjoint and of the recorded reverse pass), forced
by calling the field's body directly. JAX's caches are cleared before every measurement.
Prints the medians and checks that one step's results are the same to the bit. A layered
block has no such field: both settings are the same program.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _wflow_entry import allocator_policy

ALLOCATOR = allocator_policy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?",
                    default=os.path.join(HERE, "study_continuous_reference.toml"))
    ap.add_argument("--block", choices=("reference", "sweep"), default="reference")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ab_batch_loop import study_block
    from wflow import _depth
    from wflow._flow import make_flow

    config, setup, block, problem, batch, depth = study_block(args.config,
                                                              args.block == "reference")
    flow = make_flow(problem, depth, batch, setup.regularization)
    flow = eqx.tree_at(lambda f: f.problem, flow, problem.astype(batch.theta.dtype))
    h = jnp.asarray(config["train"]["dt"], batch.theta.dtype)
    key = jax.random.PRNGKey(0)
    programs = {"step": lambda b: flow.step("euler", b, key, jnp.int32(0), h)[0].theta,
                "diagnostics": lambda b: flow.diagnostics(b, 0.0)}
    print(f"jax {jax.__version__}, allocator: {ALLOCATOR}; {type(depth).__name__}, block "
          f"L = {block.L}, M = {block.M}, D = {block.D}, {batch.theta.shape[1]} members")
    once = _depth._blend_once
    settings = {"traced once": once,
                "every call": lambda static, fd, z, a, pair: _depth._blend_body(
                    _depth._view(static, fd), z, a, pair)}
    times, outs = {}, {}
    for _ in range(args.rounds):
        for name, blend in settings.items():
            _depth._blend_once = blend
            try:
                for prog, fn in programs.items():
                    jax.clear_caches()
                    t0 = time.perf_counter()
                    traced = jax.jit(fn).trace(batch)
                    t1 = time.perf_counter()
                    lowered = traced.lower()
                    t2 = time.perf_counter()
                    compiled = lowered.compile()
                    t3 = time.perf_counter()
                    for part, t in (("trace", t1 - t0), ("lower", t2 - t1), ("compile", t3 - t2)):
                        times.setdefault((name, prog, part), []).append(t)
                    if prog == "step":
                        outs[name] = np.asarray(compiled(batch))
            finally:
                _depth._blend_once = once
    for prog in programs:
        for name in settings:
            parts = {part: statistics.median(times[name, prog, part])
                     for part in ("trace", "lower", "compile")}
            print(f"{prog:<12} {name:<12} " + ", ".join(f"{p} {t:.2f} s"
                                                         for p, t in parts.items())
                  + f", in all {sum(parts.values()):.2f} s")
    a, b = outs.values()
    print(f"max |traced once - every call| after one step: {np.max(np.abs(a - b)):.2e}")


if __name__ == "__main__":
    main()
