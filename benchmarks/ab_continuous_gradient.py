"""A/B: the continuous-depth gradient from recorded steps against diffrax's backprop.

    python benchmarks/ab_continuous_gradient.py [CONFIG] [--repeats 15]

Builds the reference block of the study CONFIG (default ``study_continuous_reference.toml``,
beside this script) as ``wflow study limit`` does (``ab_batch_loop.study_block``), takes its
first member (one seed's reference measure in continuous depth) and times, in one process and
interleaved, the forward solve z(1) and the value and gradient of the training loss, through
``ContinuousDepth.final_state`` (the reverse pass from recorded steps, ``wflow/_rk_adjoint.py``)
and through ``ContinuousDepth._diffrax_final_state`` (diffrax's RecursiveCheckpointAdjoint).
Prints the medians, their ratios and the largest differences (the forward values are the same
to the bit; the gradients differ by round-off).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _wflow_entry import allocator_policy

ALLOCATOR = allocator_policy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?",
                    default=os.path.join(HERE, "study_continuous_reference.toml"))
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from ab_batch_loop import interleaved_medians, study_block

    _, _, block, problem, batch, depth = study_block(args.config)
    problem = problem.astype(batch.theta.dtype)
    theta = batch.theta[:, 0]
    x = problem.embed(problem.x)
    print(f"jax {jax.__version__}, allocator: {ALLOCATOR}; {depth}, one member: L = {block.L}, "
          f"M = {theta.shape[1]}, N = {x.shape[0]}, d = {x.shape[1]}, {theta.dtype}")

    programs = {}
    for name, solve in (("diffrax", depth._diffrax_final_state), ("recorded", depth.final_state)):
        def loss(th, solve=solve):
            return problem.loss(solve(problem, th, x))
        programs[name] = {
            "forward": jax.jit(lambda th, solve=solve: solve(problem, th, x)),
            "gradient": jax.jit(jax.value_and_grad(loss)),
        }
    outs = {n: {p: jax.block_until_ready(f(theta)) for p, f in fs.items()}
            for n, fs in programs.items()}
    medians = interleaved_medians({(n, p): functools.partial(f, theta)
                                   for n, fs in programs.items() for p, f in fs.items()},
                                  args.repeats)
    for p in ("forward", "gradient"):
        med = {n: medians[n, p] for n in programs}
        print(f"{p}: diffrax {1e3 * med['diffrax']:.1f} ms, recorded {1e3 * med['recorded']:.1f} "
              f"ms, recorded/diffrax {med['recorded'] / med['diffrax']:.2f}")
    fwd = float(jnp.max(jnp.abs(outs["diffrax"]["forward"] - outs["recorded"]["forward"])))
    (v_d, g_d), (v_r, g_r) = outs["diffrax"]["gradient"], outs["recorded"]["gradient"]
    rel = float(jnp.max(jnp.abs(g_d - g_r)) / jnp.max(jnp.abs(g_d)))
    print(f"max |forward difference| {fwd:.2e}; loss {float(v_d):.9g} / {float(v_r):.9g}; "
          f"max |gradient difference| / max |gradient| {rel:.2e}")


if __name__ == "__main__":
    main()
