"""Speed of the grid solver: cell-updates per second, scaling with the number of cells, and
where the time goes (forward/adjoint versus the finite-volume flux update).

One *substep* is what ``GridFlow.march`` repeats: an SSP-RK2 (``heun``) step of the
finite-volume scheme (MUSCL, van Leer) with the velocities of both stages, i.e. two
``first_variation_gradient`` calls (one forward and one reverse pass of the layered ResNet,
with zero-mass probes at every interior face) and two flux updates. Per size, in one process:

1. correctness first: after one substep every slice keeps its mass (printed: the largest
   |mass - 1|) and rho >= 0 (printed: min rho);
2. trace+lower and XLA compile times of the jitted substep, apart from run times;
3. median and min over ``--repeats`` timed calls (``block_until_ready``) after ``--warmup``
   untimed calls, for the whole substep and for its parts: ``face_velocities`` (the
   forward/adjoint: first_variation_gradient at the faces), ``tendency`` (the flux update:
   limited reconstruction, upwind fluxes, divergence) and ``max_rate`` (the CFL rate);
4. cell-updates per second = n_t * cells / (substep time), and the share of the substep
   spent in the forward/adjoint (2 face_velocities) and in the flux update (2 tendency);
5. over the timed substeps (``resource.getrusage``): minor page faults per substep and the
   kernel's (system) share of the CPU time (goal <= 3%).

The scaling run times the substep for growing grids at fixed N and n_t; the fitted log-log
slope of time against cells is the result (goal 1 +- 0.1: the cost is linear in the cells).

    python benchmarks/bench_grid.py                 # 256^2 x 16 slices and 64^3 x 8, scaling
    python benchmarks/bench_grid.py --quick         # small sizes, under a minute on 2 cores
    python benchmarks/bench_grid.py --n 256 --json grid.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from _wflow_entry import allocator_policy

# the allocator policy of the ``wflow`` command, before JAX starts (WFLOW_MALLOC=default: glibc's)
ALLOCATOR = allocator_policy()

# scaling: (k, cells per axis, slices n_t); the goal's largest grids are 256^2 x 16 and 96^3 x 4
FULL = {"sizes": [(2, 256, 16), (3, 64, 8)],
        "scaling": [(2, [64, 128, 256], 16), (3, [16, 32, 64], 8), (3, [24, 48, 96], 4)]}
QUICK = {"sizes": [(2, 96, 4), (3, 24, 2)],
         "scaling": [(2, [48, 96, 192], 4), (3, [12, 24], 2)]}


def machine_info() -> dict:
    import jax
    import jaxlib

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        cpu = platform.processor() or cpu
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu_model": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "allocator": ALLOCATOR,
        "jax_devices": [str(d) for d in jax.devices()],
    }


def setup(k: int, cells: int, n_t: int, n_data: int, seed: int = 0):
    """Teacher data (d = 1), neuron features with k = 2 (no bias) or 3 (bias), a Gaussian
    density on [-4, 4]^k with ``cells`` per axis and n_t slices, float32."""
    import jax.numpy as jnp

    import wflow

    feature = wflow.make_feature("neuron", 1, bias=(k == 3))
    x, y = wflow.make_dataset("teacher", n=n_data, dim=1, seed=seed, feature=feature,
                              teacher_std=2.0)
    problem = wflow.Problem(feature, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    grid = wflow.Grid.box(cells, [-4.0, 4.0], k)
    density = wflow.init_density("gaussian", grid, n_t, std=1.0)
    flow = wflow.make_flow(problem, wflow.LayeredDepth(), density)
    return flow, density


def _timed(fn, args, repeats: int, warmup: int):
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bench_size(k, cells, n_t, n_data, repeats, warmup, parts=True) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from wflow._grid import max_rate, tendency

    flow, density = setup(k, cells, n_t, n_data)
    grid, fv, rho = density.grid, density.fv, density.rho
    tau = flow.regularization.temperature

    @jax.jit
    def velocities(rho):
        return flow.face_velocities(grid, rho, 0.0)

    @jax.jit
    def flux_update(rho, v):
        return tendency(grid, fv, tau, rho, v)

    @jax.jit
    def rate(v):
        return max_rate(grid, tau, v)

    @jax.jit
    def substep(rho, dt):
        first = flow.face_velocities(grid, rho, 0.0)
        new, stage_rate, ok = flow.substep("heun", grid, fv, rho, 0.0, dt, first)
        return new, stage_rate, ok

    # compile apart from run
    dt = jnp.float32(fv.cfl) / rate(velocities(rho)[1])
    t0 = time.perf_counter()
    lowered = substep.lower(rho, dt)
    t_lower = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t0

    # correctness of what is timed
    new, stage_rate, ok = compiled(rho, dt)
    mass_err = float(jnp.max(jnp.abs(eqx.tree_at(lambda d: d.rho, density, new).mass() - 1.0)))
    min_rho = float(jnp.min(new))
    assert bool(ok) and float(dt * stage_rate) <= fv.limit, "substep outside its CFL bound"

    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t_sub, t_sub_min = _timed(compiled, (rho, dt), repeats, warmup)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    n_upd = n_t * grid.n_cells
    out = {"k": k, "cells_per_axis": cells, "n_t": n_t, "N": n_data, "cells": grid.n_cells,
           "faces": sum(int(np.prod(grid.face_shape(a))) for a in range(k)),
           "lower_s": t_lower, "compile_s": t_compile,
           "substep_median_s": t_sub, "substep_min_s": t_sub_min,
           "cell_updates_per_s": n_upd / t_sub, "mass_error": mass_err, "min_rho": min_rho,
           "minor_faults_per_substep": (r1.ru_minflt - r0.ru_minflt) / (repeats + warmup),
           "kernel_share": system / max(user + system, 1e-12)}
    if parts:
        v = velocities(rho)[1]
        t_vel, _ = _timed(velocities, (rho,), repeats, warmup)
        t_flux, _ = _timed(flux_update, (rho, v), repeats, warmup)
        t_rate, _ = _timed(rate, (v,), repeats, warmup)
        parts_total = 2 * (t_vel + t_flux + t_rate)
        out.update({"face_velocities_s": t_vel, "tendency_s": t_flux, "max_rate_s": t_rate,
                    "share_forward_adjoint": 2 * t_vel / parts_total,
                    "share_flux_update": 2 * t_flux / parts_total,
                    "share_rate": 2 * t_rate / parts_total,
                    "substep_over_parts": t_sub / parts_total})
    # the particle kernel alone: one slice's field F(z) = sum_c omega_c f(z; theta_c) over the
    # cells, per (data point, cell) pair; its cost per pair should not depend on the cells
    Z = flow.problem.embed(flow.problem.x)
    Theta, w = flow.weighted(density)
    field = jax.jit(lambda Z, th, om: flow.problem.feature.field(Z, th, om))
    t_field, _ = _timed(field, (Z, Theta[0], w[0]), repeats, warmup)
    out.update({"field_s": t_field, "field_ns_per_pair": t_field / (n_data * grid.n_cells) * 1e9})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    p.add_argument("--n", type=int, default=64, help="data points N (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (>= 3, default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls (default 1)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 3 or args.n < 1:
        p.error("--repeats must be >= 3 and --n >= 1")
    plan = QUICK if args.quick else FULL
    info = machine_info()
    print(f"# bench_grid  {info['date_utc']} UTC  {info['cpu_model']}  "
          f"cpus={info['cpus_usable']}  load={info['load_average']}")
    print(f"# jax {info['jax']} ({info['jax_backend']}), float32, neuron d = 1 (k = 2 no bias, "
          f"k = 3 bias), layered depth, teacher N = {args.n}, MUSCL van Leer, heun substeps; "
          f"allocator {ALLOCATOR}")
    results = {"machine": info, "args": vars(args), "sizes": [], "scaling": {}}

    print("\n## one substep (2 stages: 2 forward/adjoint + 2 flux updates); shares of the parts "
          "timed one by one")
    head = (f"{'k':>2} {'grid':>10} {'n_t':>4} {'cells*n_t':>10} {'compile':>8} {'substep':>9} "
            f"{'cell-upd/s':>11} {'fwd/adj':>8} {'flux':>6} {'rate':>6} {'mass err':>9} "
            f"{'min rho':>8} {'faults':>8} {'kernel':>7}")
    print(head)
    for k, cells, n_t in plan["sizes"]:
        r = bench_size(k, cells, n_t, args.n, args.repeats, args.warmup)
        results["sizes"].append(r)
        print(f"{k:>2} {str(cells) + '^' + str(k):>10} {n_t:>4} {r['cells'] * n_t:>10} "
              f"{r['compile_s']:>7.2f}s {r['substep_median_s'] * 1e3:>7.1f}ms "
              f"{r['cell_updates_per_s']:>11.3g} {r['share_forward_adjoint']:>7.0%} "
              f"{r['share_flux_update']:>6.0%} {r['share_rate']:>6.0%} {r['mass_error']:>9.1e} "
              f"{r['min_rho']:>8.1e} {r['minor_faults_per_substep']:>8.0f} "
              f"{r['kernel_share']:>7.1%}", flush=True)

    if not args.no_scaling:
        print("\n## substep time against the number of cells (log-log slope; goal 1 +- 0.1)")
        for k, cells_list, n_t in plan["scaling"]:
            rows = [bench_size(k, c, n_t, args.n, args.repeats, args.warmup, parts=False)
                    for c in cells_list]
            n = np.array([r["cells"] for r in rows], float)
            t = np.array([r["substep_median_s"] for r in rows])
            slope = float(np.polyfit(np.log(n), np.log(t), 1)[0])
            field_slope = float(np.polyfit(np.log(n), np.log([r["field_s"] for r in rows]), 1)[0])
            results["scaling"][f"k={k}, n_t={n_t}"] = {"k": k, "n_t": n_t, "rows": rows,
                                                       "slope": slope, "field_slope": field_slope}
            print(f"k = {k}, n_t = {n_t}:   substep slope {slope:.2f}   "
                  f"(one slice's forward field kernel alone: slope {field_slope:.2f})")
            for c, r in zip(cells_list, rows):
                print(f"    {c:>4}^{k} = {r['cells']:>7} cells: substep {r['substep_median_s'] * 1e3:9.1f}"
                      f" ms   field kernel {r['field_ns_per_pair']:6.2f} ns per (x_i, cell) pair",
                      flush=True)
    print("\n# timings are noisy on a shared machine: compare ratios and slopes, not absolutes")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
