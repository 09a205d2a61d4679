# %% [markdown]
# # The grid solver against particles
#
# The mean-field limit of a ResNet is a density rho(theta, t) of neuron parameters over
# depth t, moved by a Wasserstein gradient flow. wflow has two ways to compute it:
#
# * **particles**: M samples of rho in every layer, moved with velocity -grad V (a finite
#   network: the limit as M grows, with a sampling error of order M^-1/2);
# * **the grid solver**: rho itself as cell averages on a theta-grid, moved by a
#   finite-volume scheme (no sampling error; a discretization error in the cell width).
#
# Both share one forward pass, adjoint and loss: a grid cell is a particle at its centre
# with weight rho_c |C| ([The grid solver](../docs/grid.md)). Here both solve the same
# problem from the same rho_ini: a neuron without bias in d = 1, f(z; u, w) = u tanh(w z),
# so theta = (u, w) has k = 2 coordinates and rho of each layer is a picture.
#
# What you should see: the particles' loss curves approaching the grid's as M grows, at
# the rate M^-1/2; their histograms matching the grid's marginals; and, in the animation,
# the particles riding on the density as it moves.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.ticker import NullLocator

import wflow

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WFLOW_EXAMPLES_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The problem
#
# Teacher data from a network of the same family (so zero loss is attainable), 64 samples
# in d = 1; a 4-layer ResNet in the layered depth discretization; rho_ini = N(0, I) in
# every layer; training time s up to 10 with Heun steps of 0.1 and 11 snapshots.

# %%
feature = wflow.Neuron(d=1, activation="tanh", bias=False)  # theta = (u, w), k = 2
x, y = wflow.make_dataset("teacher", n=64, dim=1, seed=0, feature=feature, teacher_std=3.0)
problem = wflow.Problem(feature, jnp.asarray(x, "float32"), jnp.asarray(y, "float32"))
depth = wflow.LayeredDepth()
L = 4
schedule = wflow.Schedule(time=10.0, dt=0.1, method="heun", record_every=5, snapshots=11)

# %% [markdown]
# ## The grid solver
#
# 65 x 65 cells on [-4, 4]^2 (an odd count puts a cell centre at theta = 0), second-order
# MUSCL reconstruction with the van Leer limiter. The initial density is the exact cell
# average of the Gaussian. The flux form keeps the mass of every layer at 1 to round-off,
# and `wall_mass` (the mass in the cells touching the box) says whether the box is large
# enough.

# %%
grid = wflow.Grid.box(cells=65, bounds=[-4.0, 4.0], k=2)
rho0 = wflow.init_density("gaussian", grid, n_t=L, std=1.0,
                          fv=wflow.FiniteVolume("muscl", "vanleer", cfl=0.4))
on_grid = wflow.integrate(problem, depth, schedule, theta0=rho0)
s = on_grid.history["s"]
loss_grid = on_grid.history["loss"]
rho = on_grid.snapshots  # (snapshot, layer, cell_u, cell_w)
u_axis, w_axis = grid.axes  # cell centres along u and along w
du, dw = grid.widths
cell = grid.volume
print(f"grid: loss {loss_grid[0]:.3e} -> {loss_grid[-1]:.3e}, "
      f"wall mass {on_grid.history['wall_mass'].max():.1e}")
assert on_grid.status == "complete" and loss_grid[-1] < 0.05 * loss_grid[0]
np.testing.assert_allclose(rho.sum(axis=(2, 3)) * cell, 1.0, rtol=1e-5)  # mass per layer
assert on_grid.history["wall_mass"].max() < 1e-3  # the box holds the density

# %% [markdown]
# ## Particles from the same rho_ini
#
# For each width M, six independent draws of M particles per layer from N(0, I), trained
# by the same flow with the same steps. The gap between the two loss curves, RMS over the
# records and the draws, is the particles' sampling error (the grid's own error is far
# below it at these widths).

# %%
widths, seeds = [128, 512, 2048], range(6)
runs = {}
for M in widths:
    for seed in seeds:
        theta0 = wflow.init_particles("gaussian", jax.random.PRNGKey(seed), L=L, M=M, k=2)
        runs[M, seed] = wflow.integrate(problem, depth, schedule, theta0=theta0)
        assert runs[M, seed].status == "complete"
        np.testing.assert_array_equal(runs[M, seed].history["s"], s)

# E_particles(s) - E_grid(s), RMS over the records s and the draws
gap = np.array([np.sqrt(np.mean([(runs[M, r].history["loss"] - loss_grid) ** 2 for r in seeds]))
                for M in widths])
rate = np.polyfit(np.log(widths), np.log(gap), 1)[0]
for M, g in zip(widths, gap, strict=True):
    print(f"M = {M:5d}: loss gap {g:.2e}")
print(f"log-log slope of the gap against M: {rate:.2f} (sampling error: -1/2)")
assert -0.8 < rate < -0.3, rate

# %% [markdown]
# ## Loss curves and marginals
#
# Left: the loss of the grid (black) and of one draw at every width. Middle: the gap
# against M on log-log axes, with the slope -1/2 of Monte Carlo sampling. Right: the
# marginals of the first layer's density at the end of training, rho(w) = int rho(u, w) du
# and rho(u), from the grid (lines; dotted grey: the Gaussian start) and as histograms of
# the 6 x 2048 particles (dashed steps). Training opens a dip at w = 0; rho(u) widens a
# little.

# %%
fig, (ax_loss, ax_gap, ax_marg) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
for M in widths:
    ax_loss.plot(s, runs[M, 0].history["loss"], label=f"particles, M = {M}")
ax_loss.plot(s, loss_grid, "k", lw=2, label="grid, 65 x 65 cells")
ax_loss.set(yscale="log", xlabel="training time s", ylabel="loss E(s)", title="loss")
ax_loss.legend()

ax_gap.plot(widths, gap, "o-", label=f"particles vs grid, slope {rate:.2f}")
ax_gap.plot(widths, gap[0] * (np.asarray(widths) / widths[0]) ** -0.5, "k:", label="slope -1/2")
ax_gap.set(xscale="log", yscale="log", xlabel="particles per layer M",
           ylabel="RMS of E(s) - E_grid(s)", title="loss gap against M")
ax_gap.set_xticks(widths, [str(M) for M in widths])
ax_gap.xaxis.set_minor_locator(NullLocator())
ax_gap.legend()

final = np.concatenate([np.asarray(runs[2048, r].state.measure)[0] for r in seeds])  # layer 0
rho_end = rho[-1, 0]  # (u, w)
edges = lambda a, h: np.append(a - h / 2, a[-1] + h / 2)
for axis, (name, centres, h, marginal, values) in enumerate([
        ("w", w_axis, dw, rho_end.sum(axis=0) * du, final[:, 1]),
        ("u", u_axis, du, rho_end.sum(axis=1) * dw, final[:, 0])]):
    if axis == 0:  # the start: the same Gaussian marginal in u and w
        ax_marg.plot(centres, rho[0, 0].sum(axis=0) * du, ":", color="grey", label="s = 0")
    line, = ax_marg.plot(centres, marginal, label=f"rho({name}), grid")
    ax_marg.hist(values, bins=edges(centres[::2], 2 * h), density=True, histtype="step",
                 color=line.get_color(), ls="--", label=f"{name}, particles")
ax_marg.set(xlabel="parameter value", ylabel="density", xlim=(-4, 4),
            title=f"layer 1 marginals at s = {s[-1]:g}")
ax_marg.legend()
fig.savefig(OUT / "grid_vs_particles.png", dpi=110)

# %% [markdown]
# ## The density over training time
#
# Each frame shows rho(u, w) of the four layers at one snapshot (w across, u up), with the
# particles of one M = 512 draw at the same time as white dots. The round Gaussian is
# sheared into a ridge along u w < 0: for small z a neuron contributes u tanh(w z) ~ u w z,
# and the teacher's map contracts (y is close to 0.84 x), so the layers together must make
# the residual field F(z) negative for z > 0. The layers move alike here, and the particles
# stay on the density.

# %%
snap_s = on_grid.snapshot_s
dots = runs[512, 0].snapshots  # (snapshot, layer, particle, 2)
np.testing.assert_allclose(runs[512, 0].snapshot_s, snap_s)
fig, axes = plt.subplots(1, L, figsize=(3.2 * L, 3.4), constrained_layout=True)
vmax = float(np.percentile(rho, 99.9))
images, clouds = [], []
for layer, ax in enumerate(axes):
    images.append(ax.imshow(rho[0, layer], origin="lower", cmap="viridis", vmin=0, vmax=vmax,
                            extent=(w_axis[0] - dw / 2, w_axis[-1] + dw / 2,
                                    u_axis[0] - du / 2, u_axis[-1] + du / 2)))
    clouds.append(ax.plot(dots[0, layer, :, 1], dots[0, layer, :, 0], ".", color="w",
                          ms=1.5, alpha=0.6)[0])
    ax.set(xlabel="w (input weight)", title=f"layer {layer + 1}")
axes[0].set_ylabel("u (output weight)")
title = fig.suptitle("")


def frame(i):
    for layer in range(L):
        images[layer].set_data(rho[i, layer])
        clouds[layer].set_data(dots[i, layer, :, 1], dots[i, layer, :, 0])
    title.set_text(f"rho(u, w) and 512 particles per layer, s = {snap_s[i]:.1f}")
    return [*images, *clouds, title]


animation = FuncAnimation(fig, frame, frames=len(snap_s), blit=False)
animation.save(OUT / "rho_over_training.gif", writer=PillowWriter(fps=3), dpi=64)

# %% [markdown]
# With more cells the grid's own error falls (second order for MUSCL); with more particles
# the sampling error falls like M^-1/2, until it meets the grid's error
# (`tests/test_grid.py` measures M^-0.52 over M = 256 .. 16384). The same computation from
# a config: `wflow run configs/grid_neuron_2d.toml`, whose `wflow plot` draws the density
# before and after training.
