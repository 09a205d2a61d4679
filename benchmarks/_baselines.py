"""Shared pieces of the benchmarks: inputs, the wflow step, and the two baselines.

All three implementations compute the same finite mean-field ResNet with
``neuron`` features (tanh, bias), state dimension d, d_in = d, d_out = 1:

    z_0 = x,   z_{l+1} = z_l + (1/L)(1/M) sum_m u_{l,m} tanh(w_{l,m} . z_l + b_{l,m}),
    E = (1/2N) sum_i (z_L[i, 0] - y_i)^2,

with particles Theta (L, M, k), k = 2d + 1, laid out as theta = (u (d), w (d), b)
(the layout of ``wflow.Neuron``). One training step is the loss, the full
gradient dE/dTheta and the explicit Euler update of the gradient flow, which is
plain gradient descent with learning rate lr = L * M * ds:

    Theta <- Theta - lr * dE/dTheta  =  Theta + ds * v,   v = -(M L) dE/dTheta.

* wflow:  ``LayeredDepth().evaluate`` (hand-written discrete adjoint with
  rematerialization) plus the Euler update, jitted as one function.
* PyTorch eager: a Python loop over layers, autograd ``loss.backward()``, manual
  SGD update under ``no_grad`` (per-layer parameter tensors, as an ``nn.Module``
  with L pairs of linear layers would hold them).
* NumPy: forward that stores each layer's input z_l and tanh activations
  S_l = tanh(A_l) (what a textbook implementation keeps), backward by hand.

``grad_theta`` of every implementation returns dE/dTheta in the (L, M, k)
layout so that the benchmarks can compare them element for element.
"""

from __future__ import annotations

import numpy as np

DS = 0.1  # Euler step in training time s; lr = L * M * DS


# --------------------------------------------------------------------------- inputs
def make_inputs(N: int, d: int, L: int, M: int, seed: int = 0, dtype=np.float32):
    """Random data and particles, identical for every implementation.

    x ~ N(0, I_d) (N, d); y = sin(2 x_0) + 0.5 x_1 (N, 1) (just a smooth target);
    Theta ~ N(0, 1) (L, M, 2d+1): u, w, b all O(1) as in the mean-field scaling.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, d))
    y = np.sin(2.0 * x[:, :1])
    if d > 1:
        y = y + 0.5 * x[:, 1:2]
    Theta = rng.standard_normal((L, M, 2 * d + 1))
    return x.astype(dtype), y.astype(dtype), Theta.astype(dtype)


def split_theta(Theta: np.ndarray, d: int):
    """(L, M, 2d+1) -> u (L, M, d), w (L, M, d), b (L, M) (copies, C-contiguous)."""
    return (np.ascontiguousarray(Theta[..., :d]), np.ascontiguousarray(Theta[..., d:2 * d]),
            np.ascontiguousarray(Theta[..., 2 * d]))


def join_theta(u, w, b) -> np.ndarray:
    """Inverse of ``split_theta``."""
    return np.concatenate([u, w, b[..., None]], axis=-1)


def max_rel_diff(g: np.ndarray, ref: np.ndarray) -> float:
    """max_j |g_j - ref_j| / max_j |ref_j|: a norm-wise relative error (inf-norm).

    Element-wise relative errors are meaningless for entries that are ~0, so the
    difference is measured relative to the largest reference entry.
    """
    g = np.asarray(g, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))


# --------------------------------------------------------------------------- wflow
def wflow_problem(x: np.ndarray, y: np.ndarray, device=None, tile: int | None = None):
    """The ``wflow.Problem`` for these inputs (neuron features, tanh, bias), on ``device``.

    ``tile``: largest (N, M) block of the kernel (elements; default wflow's).
    """
    import jax

    import wflow

    x, y = jax.device_put((x, y), device)
    feature = wflow.Neuron(d=x.shape[1]) if tile is None else wflow.Neuron(d=x.shape[1], tile=tile)
    return wflow.Problem(feature, x, y)


def wflow_step(ds: float = DS, depth=None):
    """(problem, Theta) -> (loss, Theta + ds * v): one Euler step of the flow (not jitted).

    ``depth``: the depth discretization (default ``LayeredDepth()``; e.g.
    ``ContinuousDepth()`` for the diffrax step).
    """
    import wflow

    depth = wflow.LayeredDepth() if depth is None else depth

    def step(problem, Theta):
        ev = depth.evaluate(problem, Theta)
        return ev.loss, Theta + ds * ev.velocity

    return step


def wflow_forward():
    """(problem, Theta) -> loss: the forward pass alone (not jitted)."""
    import wflow

    depth = wflow.LayeredDepth()
    return lambda problem, Theta: depth.loss(problem, Theta)


def wflow_loss_and_grad_theta(problem, Theta):
    """Loss and dE/dTheta (L, M, k) from ``evaluate``: dE/dTheta = -v / (M L)."""
    import jax

    import wflow

    L, M, _ = Theta.shape
    ev = jax.jit(wflow.LayeredDepth().evaluate)(problem, Theta)
    return float(ev.loss), np.asarray(ev.velocity) / (-(M * L))


def naive_scan_loss(Theta, x, y):
    """The same loss written as a plain ``lax.scan`` (no remat, no hand adjoint).

    ``jax.grad`` of this is what a user gets by differentiating the forward pass
    directly: reverse-mode stores every layer's (N, M) activations.
    """
    import jax.numpy as jnp
    from jax import lax

    L, M, k = Theta.shape
    d = (k - 1) // 2
    c = 1.0 / (L * M)

    def layer(z, th):
        u, w, b = th[:, :d], th[:, d:2 * d], th[:, 2 * d]
        return z + c * (jnp.tanh(z @ w.T + b) @ u), None

    zL, _ = lax.scan(layer, x, Theta)
    r = zL[:, 0] - y[:, 0]
    return 0.5 * jnp.mean(r * r)


# --------------------------------------------------------------------------- NumPy
class NumpyResNet:
    """Hand-written forward and backward in NumPy (dtype of the inputs, float32 here)."""

    def __init__(self, x, y, Theta):
        self.x, self.y = x, y
        self.L, self.M, k = Theta.shape
        self.d = (k - 1) // 2
        self.u, self.w, self.b = split_theta(Theta, self.d)
        self.c = self.x.dtype.type(1.0 / (self.L * self.M))  # (1/L)(1/M)

    def loss(self) -> float:
        """Forward only (nothing stored)."""
        z = self.x.copy()
        for l in range(self.L):
            a = z @ self.w[l].T
            a += self.b[l]
            np.tanh(a, out=a)
            z += self.c * (a @ self.u[l])
        r = z[:, 0] - self.y[:, 0]
        return 0.5 * float(np.mean(r * r))

    def loss_and_grad(self):
        """Loss and (du, dw, db), each shaped like the parameters."""
        L, c = self.L, self.c
        z = self.x.copy()
        zs, S = [], []
        for l in range(L):
            a = z @ self.w[l].T
            a += self.b[l]
            s = np.tanh(a, out=a)  # (N, M), kept for the backward pass
            zs.append(z)
            S.append(s)
            z = z + c * (s @ self.u[l])
        N = z.shape[0]
        r = z[:, 0] - self.y[:, 0]
        loss = 0.5 * float(np.mean(r * r))

        g = np.zeros_like(z)  # dE/dz_L
        g[:, 0] = r / N
        du = np.empty_like(self.u)
        dw = np.empty_like(self.w)
        db = np.empty_like(self.b)
        for l in reversed(range(L)):
            s = S[l]
            du[l] = c * (s.T @ g)
            ga = g @ self.u[l].T  # dE/ds_l / c, (N, M)
            ga *= c
            s *= s
            np.subtract(1, s, out=s)  # tanh' = 1 - tanh^2 (overwrites S_l: no longer needed)
            ga *= s  # dE/da_l
            dw[l] = ga.T @ zs[l]
            db[l] = ga.sum(axis=0)
            g = g + ga @ self.w[l]
            S[l] = None
        return loss, (du, dw, db)

    def grad_theta(self):
        loss, (du, dw, db) = self.loss_and_grad()
        return loss, join_theta(du, dw, db)

    def step(self, lr) -> float:
        """One gradient-descent step Theta <- Theta - lr dE/dTheta (in place)."""
        loss, (du, dw, db) = self.loss_and_grad()
        lr = self.x.dtype.type(lr)
        self.u -= lr * du
        self.w -= lr * dw
        self.b -= lr * db
        return loss


# --------------------------------------------------------------------------- PyTorch
class TorchResNet:
    """PyTorch eager (or ``torch.compile``d): loop over layers, autograd backward, manual SGD."""

    def __init__(self, x, y, Theta, device: str = "cpu", compile: bool = False):
        import torch

        self.torch = torch
        # torch.compile: the forward loop (unrolled over the L layers) becomes one graph,
        # and AOTAutograd compiles its backward; recompiled for every new shape.
        self._loss = torch.compile(self._loss) if compile else self._loss
        self.device = torch.device(device)
        self.L, self.M, k = Theta.shape
        self.d = (k - 1) // 2
        self.x = torch.as_tensor(x, device=self.device)
        self.y = torch.as_tensor(y, device=self.device)
        u, w, b = split_theta(Theta, self.d)
        # One leaf tensor per layer and role, like nn.Linear weights: slicing one big
        # (L, M, k) leaf would make autograd scatter L full-size gradients.
        mk = lambda a: torch.as_tensor(a, device=self.device).clone().requires_grad_(True)
        self.layers = [(mk(u[l]), mk(w[l]), mk(b[l])) for l in range(self.L)]
        self.params = [p for layer in self.layers for p in layer]
        self.c = 1.0 / (self.L * self.M)

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _loss(self):
        z = self.x
        for u, w, b in self.layers:
            z = z + self.c * (self.torch.tanh(self.torch.addmm(b, z, w.T)) @ u)
        return 0.5 * ((z[:, :1] - self.y) ** 2).mean()

    def loss(self) -> float:
        """Forward only, under ``no_grad`` (an inference pass)."""
        with self.torch.no_grad():
            return self._loss().item()

    def step(self, lr) -> float:
        """loss.backward(), then p <- p - lr * p.grad under no_grad; grads set to None."""
        loss = self._loss()
        loss.backward()
        with self.torch.no_grad():
            for p in self.params:
                p.add_(p.grad, alpha=-lr)
                p.grad = None
        return loss.item()  # .item() synchronizes on CUDA

    def grad_theta(self):
        loss = self._loss()
        loss.backward()
        g = np.stack([
            np.concatenate([u.grad.cpu().numpy(), w.grad.cpu().numpy(),
                            b.grad.cpu().numpy()[:, None]], axis=1)
            for u, w, b in self.layers
        ])
        for p in self.params:
            p.grad = None
        return loss.item(), g
