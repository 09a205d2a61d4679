"""A/B: a study block's training step with its members vmapped against one after another.

    python benchmarks/ab_batch_loop.py [CONFIG] [--block reference|sweep] [--method euler|adaptive]
        [--repeats 5]

Builds the first block of the study CONFIG (default ``study_continuous_reference.toml``,
beside this script) as ``wflow study limit`` does (``plan``, ``make_batch``, the block's own
depth discretization) and times, in one process and interleaved, one Euler step (or, with
``--method adaptive``, the adaptive solve over ten steps' time, ``train.rtol``/``atol``) and
the diagnostics of a record with ``members_in_a_loop`` forced off (vmap) and on (the loop). Prints
the medians, their ratio, XLA's temporaries of each step program and the largest difference
of their results (0 when the two orders of work give the same numbers).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _wflow_entry import allocator_policy

ALLOCATOR = allocator_policy()


def study_block(path: str, reference: bool = True):
    """(config, setup, block, problem, batch, depth) of the study ``path``'s first reference
    block (or first other block) as ``wflow study limit`` builds it: ``plan``, ``make_batch``
    and the block's own depth discretization."""
    import wflow
    from wflow.study._keys import resolve_limit
    from wflow.study._limit import build_limit, make_batch, plan

    config = wflow.load_config(path)
    setup = build_limit(config, resolve_limit(config))
    block = next(b for b in plan(setup) if b.reference == reference)
    problem, batch = make_batch(setup, block)
    depth = setup.reference_depth() if block.reference else setup.depth
    return config, setup, block, problem, batch, depth


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """The median seconds of each zero-argument call in ``calls``, all of them called once per
    round, ``repeats`` rounds (interleaved: the VM's slow phases hit every call alike)."""
    import jax

    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(ts) for key, ts in times.items()}


def block_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of the scripts that time a study's block: CONFIG (default
    ``study_continuous_reference.toml``, beside this script) and ``--block``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("config", nargs="?",
                    default=os.path.join(HERE, "study_continuous_reference.toml"))
    ap.add_argument("--block", choices=("reference", "sweep"), default="reference")
    return ap


def block_flow(args):
    """(config, block, batch, depth, flow, h, key) for ``block_parser``'s ``args``: the block of
    ``study_block``, the flow ``integrate`` trains it with (its problem in the batch's dtype),
    h = train.dt and a PRNG key. Prints the block."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from wflow._flow import make_flow

    config, setup, block, problem, batch, depth = study_block(args.config,
                                                              args.block == "reference")
    flow = make_flow(problem, depth, batch, setup.regularization)
    flow = eqx.tree_at(lambda f: f.problem, flow, problem.astype(batch.theta.dtype))
    h = jnp.asarray(config["train"]["dt"], batch.theta.dtype)
    print(f"jax {jax.__version__}, allocator: {ALLOCATOR}; {type(depth).__name__}, block "
          f"L = {block.L}, M = {block.M}, D = {block.D}, {batch.theta.shape[1]} members "
          f"(theta {batch.theta.nbytes / 1e6:.1f} MB)")
    return config, block, batch, depth, flow, h, jax.random.PRNGKey(0)


def main() -> None:
    ap = block_parser(__doc__)
    ap.add_argument("--method", choices=("euler", "adaptive"), default="euler")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    config, block, batch, depth, flow, h, key = block_flow(args)

    cls = type(depth.inner) if hasattr(depth, "inner") else type(depth)
    own = cls.__dict__.get("members_in_a_loop")  # None: inherited
    programs = {}
    for name, loop in (("vmap", False), ("loop", True)):
        cls.members_in_a_loop = property(lambda self, v=loop: v)
        try:
            if args.method == "euler":
                step = jax.jit(lambda b: flow.step("euler", b, key, jnp.int32(0), h)[0].theta)
            else:
                step = jax.jit(lambda b: flow.adaptive(b, 0.0 * h, 10 * h, h,
                                                       config["train"]["rtol"],
                                                       config["train"]["atol"])[0].theta)
            diag = jax.jit(lambda b: flow.diagnostics(b, 0.0))
            programs[name] = (step.lower(batch).compile(), diag.lower(batch).compile())
        finally:
            if own is None:
                del cls.members_in_a_loop
            else:
                cls.members_in_a_loop = own
    outs = {n: jax.block_until_ready((s(batch), d(batch))) for n, (s, d) in programs.items()}
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(outs["vmap"]), jax.tree.leaves(outs["loop"]), strict=True))
    medians = interleaved_medians(
        {(n, part): functools.partial(fn, batch) for n, fns in programs.items()
         for part, fn in zip(("step", "diagnostics"), fns, strict=True)}, args.repeats)
    for part in ("step", "diagnostics"):
        med = {n: medians[n, part] for n in programs}
        print(f"{args.method if part == 'step' else part}: vmap {med['vmap']:.3f} s, loop {med['loop']:.3f} s, loop/vmap "
              f"{med['loop'] / med['vmap']:.2f}")
    for n, (s, _) in programs.items():
        stats = s.memory_analysis()
        if stats is not None:
            print(f"{n} step temporaries: {stats.temp_size_in_bytes / 1e6:.1f} MB")
    print(f"max |vmap - loop| over the step and the diagnostics: {diff:.2e}")


if __name__ == "__main__":
    main()
