"""Time one training step of a finite mean-field transformer: wflow vs PyTorch eager.

The network: L layers of M softmax attention heads on sequences of n tokens of dimension d,
Z_{l+1} = Z_l + (1/L)(1/M) sum_m softmax(beta (Z Q_m^T)(Z K_m^T)^T / r) Z V_m^T, read at the
last token, loss (1/2N) sum_i |y_hat_i - y_i|^2 (docs/theory.md, "Sequences and attention").
A step is the loss, its gradient in every head's (Q, K, V) and the Euler update
Theta <- Theta - L M ds dE/dTheta (SGD at learning rate L M ds).

* wflow: ``LayeredDepth().evaluate`` (the adjoint scan, the attention block's kernel), jitted.
* torch: the same network in eager mode, heads batched as one (N, M, n, r) tensor through
  ``torch.nn.functional.scaled_dot_product_attention`` (same float32), autograd backward,
  manual SGD. ``torch.set_num_threads`` is left at its default (every core).

For every size, in one process: first the two losses and gradients are compared (the script
stops if they differ by more than ``--tol``: timing different computations is worthless),
then both steps are timed in interleaved rounds (``bench_step.time_interleaved``). Then
wflow's step time is measured while doubling N, M and L and for n = 16, 32, 64 from the
smallest size, and the log-log slopes printed (the work is O(L M N n^2 d): slopes 1, 1, 1
and 2 once the sizes dominate the fixed costs).

    python benchmarks/bench_attention.py                  # n in {16, 64} x M in {16, 256}
    python benchmarks/bench_attention.py --json out.json --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _baselines as B  # noqa: E402
from bench_step import machine_info, time_interleaved  # noqa: E402

DS = 0.01
GOAL_SPEEDUP = 2.0


def make_inputs(N, n, d, L, M, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, n, d)) / np.sqrt(d)).astype(np.float32)
    y = rng.normal(size=(N, 1)).astype(np.float32)
    Theta = (0.5 * rng.normal(size=(L, M, 3 * d * d))).astype(np.float32)  # r = d
    return x, y, Theta


# --------------------------------------------------------------------------- wflow
def wflow_setup(x, y, beta, tile=None):
    import jax
    import jax.numpy as jnp

    import wflow
    from wflow._problem import sequence_maps

    N, n, d = x.shape
    feature = wflow.make_feature("attention", d, tokens=n, params={"beta": beta}, tile=tile)
    A, C = sequence_maps(n, d, d, 1)
    problem = wflow.Problem(feature, jnp.asarray(x.reshape(N, -1)), jnp.asarray(y),
                            embedding=jnp.asarray(A, jnp.float32),
                            readout_matrix=jnp.asarray(C, jnp.float32))
    depth = wflow.LayeredDepth()

    @jax.jit
    def step(problem, Theta):
        ev = depth.evaluate(problem, Theta)
        return ev.loss, Theta + DS * ev.velocity

    def grad(Theta):
        L, M, _ = Theta.shape
        ev = jax.jit(depth.evaluate)(problem, jnp.asarray(Theta))
        return float(ev.loss), np.asarray(ev.velocity) / (-(M * L))

    return problem, step, grad


# --------------------------------------------------------------------------- torch
class TorchTransformer:
    """Eager PyTorch: per layer one (Q, K, V) leaf of shape (M, d, d) each; all heads of a layer
    in one ``scaled_dot_product_attention`` call on (N, M, n, d) tensors."""

    def __init__(self, x, y, Theta, beta):
        import torch

        self.torch = torch
        self.F = torch.nn.functional
        self.x = torch.as_tensor(x)
        self.y = torch.as_tensor(y)
        self.L, self.M, k = Theta.shape
        d = self.d = x.shape[2]
        mk = lambda a: torch.as_tensor(np.ascontiguousarray(a)).clone().requires_grad_(True)  # noqa: E731
        self.layers = [tuple(mk(Theta[l, :, i * d * d:(i + 1) * d * d].reshape(self.M, d, d))
                             for i in range(3)) for l in range(self.L)]
        self.params = [p for layer in self.layers for p in layer]
        self.scale = beta / d

    def _loss(self):
        t = self.torch
        z = self.x  # (N, n, d)
        for Q, K, V in self.layers:
            q = t.einsum("bnd,mrd->bmnr", z, Q)
            k = t.einsum("bnd,mrd->bmnr", z, K)
            v = t.einsum("bnd,med->bmne", z, V)
            heads = self.F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            z = z + heads.mean(dim=1) / self.L
        return 0.5 * ((z[:, -1, :1] - self.y) ** 2).mean()

    # loss.backward(), then p <- p - lr * p.grad: the ResNet baseline's step, on these params
    step = B.TorchResNet.step

    def grad_theta(self):
        loss = self._loss()
        loss.backward()
        g = np.stack([np.concatenate([p.grad.numpy().reshape(self.M, -1) for p in layer], axis=1)
                      for layer in self.layers])
        for p in self.params:
            p.grad = None
        return loss.item(), g


def max_rel_diff(g, ref):
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))


def measure(N, n, d, L, M, beta, repeats, warmup, tol, with_torch=True, tile=None):
    import jax

    x, y, Theta = make_inputs(N, n, d, L, M)
    problem, step, grad = wflow_setup(x, y, beta, tile)
    Theta_j = jax.numpy.asarray(Theta)
    row = {"N": N, "n": n, "d": d, "L": L, "M": M}
    fns = {"wflow": lambda: jax.block_until_ready(step(problem, Theta_j))}
    if with_torch:
        net = TorchTransformer(x, y, Theta, beta)
        loss_w, g_w = grad(Theta)
        loss_t, g_t = net.grad_theta()
        row["loss_rel_diff"] = abs(loss_w - loss_t) / abs(loss_t)
        row["grad_rel_diff"] = max_rel_diff(g_w, g_t)
        if not (row["grad_rel_diff"] < tol and row["loss_rel_diff"] < tol):
            raise SystemExit(f"size {row}: wflow and torch disagree (loss "
                             f"{row['loss_rel_diff']:.2e}, gradient {row['grad_rel_diff']:.2e} > --tol {tol})")
        lr = L * M * DS
        fns["torch"] = lambda: net.step(0.0 * lr)  # lr 0: every round times the same inputs
    times = time_interleaved(fns, repeats, warmup)
    row.update({f"{k}_ms": v["median_ms"] for k, v in times.items()})
    if with_torch:
        row["speedup_vs_torch"] = row["torch_ms"] / row["wflow_ms"]
    return row


def slope(xs, ts):
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--N", type=int, default=32, help="prompts")
    p.add_argument("--d", type=int, default=8, help="token dimension (rank r = d)")
    p.add_argument("--L", type=int, default=4, help="layers")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    p.add_argument("--heads", type=int, nargs="+", default=[16, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tol", type=float, default=2e-4,
                   help="largest relative difference of loss and gradient (float32 round-off)")
    p.add_argument("--tile", type=int, default=None,
                   help="wflow's solver.tile (elements; default the backend's)")
    p.add_argument("--no-scaling", action="store_true", help="skip the slope measurements")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch

    info = machine_info("cpu")
    print(f"# {info['cpu_model']}, {info['cpus_usable']} usable cores; jax {info['jax']}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load {info['load_average_1min']}")
    rows = []
    print(f"{'N':>5} {'n':>4} {'d':>3} {'L':>3} {'M':>5} | {'wflow ms':>9} {'torch ms':>9} "
          f"{'speed-up':>8} | {'grad diff':>9}")
    for n in args.tokens:
        for M in args.heads:
            r = measure(args.N, n, args.d, args.L, M, args.beta, args.repeats, args.warmup,
                        args.tol, tile=args.tile)
            rows.append(r)
            print(f"{r['N']:>5} {n:>4} {args.d:>3} {args.L:>3} {M:>5} | {r['wflow_ms']:9.2f} "
                  f"{r['torch_ms']:9.2f} {r['speedup_vs_torch']:8.2f} | {r['grad_rel_diff']:9.1e}",
                  flush=True)
    worst = min(r["speedup_vs_torch"] for r in rows)
    print(f"smallest speed-up over torch eager: {worst:.2f} (goal >= {GOAL_SPEEDUP})")

    slopes = {}
    if not args.no_scaling:
        base = {"N": args.N, "n": min(args.tokens), "L": args.L, "M": max(args.heads)}
        sweeps = {"N": [base["N"], 2 * base["N"], 4 * base["N"]],
                  "M": [base["M"] // 4, base["M"] // 2, base["M"]],
                  "L": [base["L"], 2 * base["L"], 4 * base["L"]],
                  "n": [base["n"], 2 * base["n"], 4 * base["n"]]}
        for name, values in sweeps.items():
            ts = []
            for v in values:
                size = {**base, name: v}
                r = measure(size["N"], size["n"], args.d, size["L"], size["M"], args.beta,
                            args.repeats, args.warmup, args.tol, with_torch=False,
                            tile=args.tile)
                ts.append(r["wflow_ms"])
            slopes[name] = {"values": values, "ms": ts, "slope": slope(values, ts)}
            print(f"wflow step vs {name} in {values}: {', '.join(f'{t:.1f}' for t in ts)} ms, "
                  f"log-log slope {slopes[name]['slope']:.2f} "
                  f"(expected {2 if name == 'n' else 1})", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": rows, "slopes": slopes}, fh, indent=1)


if __name__ == "__main__":
    main()
