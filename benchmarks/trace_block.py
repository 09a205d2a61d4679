"""How long a study block's programs take to start: trace, lower and compile, in one process.

    python benchmarks/trace_block.py [CONFIG] [--block reference|sweep] [--rounds 2]

Builds the first block of the study CONFIG (default ``study_continuous_reference.toml``, beside
this script) as ``wflow study limit`` does (``ab_batch_loop.study_block``) and times, for its
Euler step and for its records' diagnostics, JAX's trace, the lowering to StableHLO and XLA's
compilation. Each round measures two settings, alternating: the continuous-depth field traced
once per shape (``_depth._blend`` through one ``jax.jit``, wflow's way) and traced at every
call (the stages of the solve, of the segments stepped again and of the recorded reverse pass),
forced by calling the field's body directly. JAX's caches are cleared before every measurement.
Prints the medians and checks that one step's results are the same to the bit. A layered
block has no such field: both settings are the same program.
"""

from __future__ import annotations

import statistics
import time

from ab_batch_loop import block_flow, block_parser  # first: sets the allocator policy


def main() -> None:
    ap = block_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from wflow import _depth

    _, _, batch, _, flow, h, key = block_flow(args)
    programs = {"step": lambda b: flow.step("euler", b, key, jnp.int32(0), h)[0].theta,
                "diagnostics": lambda b: flow.diagnostics(b, 0.0)}
    once = _depth._blend_once
    settings = {"traced once": once, "every call": once.__wrapped__}  # the body, not jitted
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
