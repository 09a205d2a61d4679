# %% [markdown]
# # Bring your own block
#
# A residual block is the function f(z; theta) that one particle theta contributes to the
# depth ODE dz/dt = int f(z; theta) rho(theta, t) dtheta. wflow ships neurons and linear
# maps; any other block is a subclass of `wflow.AbstractFeatureMap` that says how many
# parameters a particle has (`k`) and computes f for one state and one particle in plain
# JAX (`__call__`). Batching, the reverse-mode rule, grad V anywhere and the grid solver's
# velocities are derived from it ([Bring your own block](../docs/blocks.md)).
#
# This notebook writes a two-layer block f(z; U, W, b) = U tanh(W z + b) / h with hidden
# width h, runs it through `wflow.integrate`, and checks two exact statements about it:
#
# 1. with h = 1 it *is* the shipped neuron u tanh(w . z + b): same trajectory to round-off;
# 2. a block of h neurons is h neurons whose flow runs h times slower: M / h blocks trained
#    to time h s equal M neurons trained to time s, step for step.
#
# What you should see: the assertions pass, and in the figure the h = 4 curve lies on the
# neuron curve once its time axis is divided by h.

# %%
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64: the checks are to round-off
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # figures go to files
import matplotlib.pyplot as plt
import numpy as np

import wflow

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WFLOW_EXAMPLES_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The block
#
# theta is laid out as [U row-major (d h), W row-major (h d), b (h)], so k = h (2d + 1);
# with h = 1 this is the neuron's layout [u, w, b]. `hidden` is a hyperparameter (a static
# field: in a config it comes from `[model.params] hidden = ...`); `d` is given by wflow.
# `reflection` is optional: the signs R with f(z; R theta) = -f(z; theta), which lets
# `init.symmetric` start the network at the identity map.

# %%
class TwoLayer(wflow.AbstractFeatureMap):
    hidden: int = 4  # h

    @property
    def k(self):
        return self.hidden * (2 * self.d + 1)

    def __call__(self, z, theta):  # z (d,), theta (k,) -> (d,)
        d, h = self.d, self.hidden
        U = theta[: d * h].reshape(d, h)
        W = theta[d * h : 2 * d * h].reshape(h, d)
        b = theta[2 * d * h :]
        return U @ jnp.tanh(W @ z + b) / h

    @property
    def reflection(self):
        d, h = self.d, self.hidden
        return np.concatenate([-np.ones(d * h), np.ones(self.k - d * h)])


# %% [markdown]
# ## A problem, and the shipped neuron as the yardstick
#
# Teacher data in d = 2, a 4-layer ResNet of 32 neurons per layer, Euler steps of the flow.

# %%
d, L, M = 2, 4, 32
neuron = wflow.Neuron(d=d, activation="tanh")  # theta = (u, w, b), k = 2d + 1 = 5
x, y = wflow.make_dataset("teacher", n=64, dim=d, seed=0, feature=neuron)
x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
depth = wflow.LayeredDepth()
theta0 = wflow.init_particles("gaussian", jax.random.PRNGKey(1), L=L, M=M, k=neuron.k,
                              dtype=jnp.float64)
dt, S = 0.1, 10.0


def train(feature, theta, time, step):
    schedule = wflow.Schedule(time=time, dt=step, method="euler", record_every=5)
    result = wflow.integrate(wflow.Problem(feature, x, y), depth, schedule, theta0=theta)
    assert result.status == "complete"
    return result


reference = train(neuron, theta0, S, dt)
print(f"neuron: loss {reference.history['loss'][0]:.3e} -> {reference.history['loss'][-1]:.3e}")

# %% [markdown]
# ## Check 1: with h = 1 the block is the neuron
#
# The same particles, the same steps: the loss history and the final particles agree to
# round-off (the block goes through wflow's generic path, vmap of `__call__` with JAX's
# derivative, the neuron through its hand-written kernel).

# %%
one = train(TwoLayer(d=d, hidden=1), theta0, S, dt)
gap_one = np.max(np.abs(one.history["loss"] - reference.history["loss"])
                 / reference.history["loss"])
theta_one = np.max(np.abs(np.asarray(one.state.measure) - np.asarray(reference.state.measure)))
print(f"h = 1 against the neuron: loss {gap_one:.1e} (relative), particles {theta_one:.1e}")
assert gap_one < 1e-10 and theta_one < 1e-10

# %% [markdown]
# ## Check 2: a block of h neurons is h slower neurons
#
# Group the 32 neurons of every layer into 8 blocks of h = 4. The network is the same
# function: (1/8) sum over blocks of (1/4) sum over their units = (1/32) sum over neurons.
# But a block is *one* particle. The flow moves a particle with velocity -(L M_particles)
# dE/dtheta, and each unit's share of its block's gradient carries the factor 1/h, so every
# unit moves h times slower than the same neuron moves as a particle of its own. Hence the
# blocks trained with steps h dt up to time h S give exactly the neurons' trajectory.

# %%
h = 4


def to_blocks(theta, h):
    """(L, M, 2d+1) neurons [u, w, b] -> (L, M/h, h(2d+1)) blocks [U (d, h), W (h, d), b]."""
    units = theta.reshape(theta.shape[0], -1, h, 2 * d + 1)  # (L, blocks, unit, coord)
    U = jnp.swapaxes(units[..., :d], -1, -2).reshape(*units.shape[:2], d * h)
    W = units[..., d : 2 * d].reshape(*units.shape[:2], h * d)
    return jnp.concatenate([U, W, units[..., 2 * d]], axis=-1)


def to_neurons(theta, h):
    """The inverse of to_blocks."""
    n, blocks = theta.shape[:2]
    U = theta[..., : d * h].reshape(n, blocks, d, h).swapaxes(-1, -2)
    W = theta[..., d * h : 2 * d * h].reshape(n, blocks, h, d)
    b = theta[..., 2 * d * h :, None]
    return jnp.concatenate([U, W, b], axis=-1).reshape(n, blocks * h, 2 * d + 1)


block = TwoLayer(d=d, hidden=h)
blocks0 = to_blocks(theta0, h)
np.testing.assert_array_equal(to_neurons(blocks0, h), theta0)
same_net = depth.predict(wflow.Problem(block, x, y), blocks0)
np.testing.assert_allclose(same_net, depth.predict(wflow.Problem(neuron, x, y), theta0),
                           rtol=0, atol=1e-13)  # the same function at s = 0

grouped = train(block, blocks0, h * S, h * dt)
np.testing.assert_allclose(grouped.history["s"], h * reference.history["s"], rtol=1e-12)
gap_h = np.max(np.abs(grouped.history["loss"] - reference.history["loss"])
               / reference.history["loss"])
theta_h = np.max(np.abs(np.asarray(to_neurons(grouped.state.measure, h))
                        - np.asarray(reference.state.measure)))
print(f"h = {h}, time x {h}, against the neuron: loss {gap_h:.1e} (relative), "
      f"particles {theta_h:.1e}")
assert gap_h < 1e-10 and theta_h < 1e-10

# %% [markdown]
# On the neurons' clock the blocks are far behind: at s = S they are where the neurons were
# at s = S / h.

# %%
at_S = float(np.interp(S, grouped.history["s"], grouped.history["loss"]))
print(f"at s = {S:g}: blocks {at_S:.3e}, neurons {reference.history['loss'][-1]:.3e}")
assert at_S > 1.5 * reference.history["loss"][-1]

# %% [markdown]
# ## The figure
#
# Left: the loss against training time s. The h = 1 block (circles) lies on the neuron
# (line); the blocks of h = 4 neurons (dashed) learn the same thing more slowly. Right: the
# same curves against s / h, where all three coincide.

# %%
fig, (ax_s, ax_sh) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
curves = [("neuron, M = 32", reference, 1, "k-", {}),
          ("two-layer block, h = 1, M = 32", one, 1, "o", {"mfc": "none", "color": "C0"}),
          (f"two-layer block, h = {h}, M = {M // h}", grouped, h, "--", {"color": "C3"})]
for label, run, scale, style, kw in curves:
    keep = run.history["s"] <= S + 1e-9
    ax_s.plot(run.history["s"][keep], run.history["loss"][keep], style, label=label, **kw)
    ax_sh.plot(run.history["s"] / scale, run.history["loss"], style, label=label, **kw)
ax_s.set(yscale="log", xlabel="training time s", ylabel="loss E", title="loss against s")
ax_sh.set(yscale="log", xlabel="training time s / h", ylabel="loss E",
          title="against s / h: one trajectory")
ax_sh.text(0.03, 0.04, f"max relative difference to the neuron:\nh = 1: {gap_one:.0e},  "
           f"h = {h}: {gap_h:.0e}", transform=ax_sh.transAxes, fontsize=8)
for ax in (ax_s, ax_sh):
    ax.legend(fontsize=8)
fig.savefig(OUT / "block_vs_neuron.png", dpi=110)

# %% [markdown]
# The block is now a model like any other: in a file, `model.feature =
# "two_layer_block.py:TwoLayer"` with `[model.params] hidden = 4` runs it with `wflow run`,
# `wflow study limit` and `wflow compare` (`examples/two_layer_block.py` and
# `examples/two_layer.toml` hold this block and such a config). With k <= 3 (h = 1 and
# d = 1) the grid solver takes it too.
