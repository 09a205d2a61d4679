# %% [markdown]
# # A finite network trained with optax against its mean-field flow
#
# In the mean-field scaling a ResNet with L layers of M neurons is
#
#     z_{l+1} = z_l + (1 / L M) sum_m u_m tanh(w_m . z_l + b_m),
#
# and its parameters, seen as L M particles theta_{l,m}, follow the gradient flow with
# velocity -(L M) dE/dtheta: an O(1) speed whatever L and M. So plain gradient descent on
# the finite network with learning rate lr is the flow's explicit Euler step of size
# ds = lr / (L M), and the two are *one* trajectory. This notebook trains the same network
# from the same initial parameters with optax (SGD, heavy-ball momentum, minibatch SGD,
# Adam) and with the mean-field particle flow (`wflow.integrate`), all on one clock: the
# training time s each optimizer step stands for
# ([Finite networks side by side](../docs/compare.md)).
#
# What you should see: SGD on the flow's curve to round-off (the notebook asserts 1e-10 in
# float64), momentum and minibatch SGD close to it, Adam on a different path.

# %%
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64: the SGD = flow check is to round-off
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
# ## One network, one initialization
#
# A student ResNet (L = 8, M = 32, tanh neurons in d = 2) learning a random teacher of its
# own family from 128 samples. The flow runs to s = 40 with Euler steps h = 0.2 (200 steps).

# %%
feature = wflow.Neuron(d=2, activation="tanh")  # theta = (u, w, b), k = 5
x, y = wflow.make_dataset("teacher", n=128, dim=2, seed=0, feature=feature)
problem = wflow.Problem(feature, jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64))
depth = wflow.LayeredDepth()
L, M, S, h = 8, 32, 40.0, 0.2
theta0 = wflow.init_particles("gaussian", jax.random.PRNGKey(1), L=L, M=M, k=feature.k,
                              dtype=jnp.float64)
records = 40  # evaluation points along every run

# %% [markdown]
# ## The mean-field flow and four optax optimizers
#
# `wflow.meanfield_trajectory` runs `integrate` (the particle flow) and evaluates it at the
# record steps; `wflow.train_network` trains the finite network with an optax optimizer on
# the loss and gradient of the same depth discretization, mapping its step i to the
# training time s = i ds_step:
#
# | optimizer | learning rate | ds per step |
# |---|---|---|
# | `SGD(lr)` | L M h | lr / (L M) = h |
# | `Momentum(lr, momentum=0.9)` | (1 - 0.9) L M h | lr / ((1 - 0.9) L M) = h |
# | `Minibatch(lr, batch_size=16)` | L M h | h (each step an unbiased estimate of a full step) |
# | `Adam(lr)` | 0.02 | lr (Adam moves every coordinate by about lr per step) |

# %%
flow = wflow.meanfield_trajectory(problem, depth, wflow.Schedule(time=S, dt=h, method="euler"),
                                  theta0, records=records)
optimizers = {
    "SGD": wflow.SGD(L * M * h),
    "momentum": wflow.Momentum((1 - 0.9) * L * M * h, momentum=0.9),
    "minibatch": wflow.Minibatch(L * M * h, batch_size=16),
    "Adam": wflow.Adam(0.02),
}
runs = {name: wflow.train_network(problem, depth, theta0, opt, time=S, records=records)
        for name, opt in optimizers.items()}
for name, run in {"flow": flow, **runs}.items():
    print(f"{name:9s} {run.attrs['steps']:5d} steps, loss {run.values['loss'][0]:.3e} -> "
          f"{run.values['loss'][-1]:.3e}, relative movement {run.values['movement'][-1]:.3f}")

# %% [markdown]
# ## SGD is the flow
#
# Same evaluation times, same losses, same final parameters, to round-off.

# %%
sgd = runs["SGD"]
np.testing.assert_allclose(sgd.s, flow.s, rtol=1e-12)
loss_gap = np.max(np.abs(sgd.values["loss"] - flow.values["loss"]) / flow.values["loss"])
theta_gap = np.max(np.abs(sgd.theta - flow.theta)) / np.max(np.abs(flow.theta))
print(f"SGD against the Euler flow: loss {loss_gap:.1e}, parameters {theta_gap:.1e} (relative)")
assert loss_gap < 1e-10 and theta_gap < 1e-10
assert flow.values["loss"][-1] < 0.01 * flow.values["loss"][0]  # and the flow does learn

# %% [markdown]
# ## The figure
#
# Left: the loss against training time s, the flow in thick grey. Middle: how far each
# optimizer's loss is from the flow's, relative (SGD's difference is round-off at most, so
# it has no line on a log axis).
# Right: the relative parameter movement |Theta(s) - Theta(0)| / |Theta(0)|: the features
# themselves are learned (mean-field training, not a kernel regime), and Adam moves its
# parameters further for the same s, as a different (sign-like, preconditioned) flow.

# %%
fig, (ax_loss, ax_diff, ax_move) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
ax_loss.plot(flow.s, flow.values["loss"], color="0.7", lw=6, label="mean-field flow")
ax_move.plot(flow.s, flow.values["movement"], color="0.7", lw=6, label="mean-field flow")
styles = {"SGD": "k--", "momentum": "C0-", "minibatch": "C1-", "Adam": "C3-"}
for name, run in runs.items():
    ax_loss.plot(run.s, run.values["loss"], styles[name], label=name)
    ax_move.plot(run.s, run.values["movement"], styles[name], label=name)
    if name != "SGD":
        rel = np.abs(run.values["loss"] - flow.values["loss"]) / flow.values["loss"]
        ax_diff.plot(run.s[1:], rel[1:], styles[name], label=name)
sgd_text = "0 at every record" if loss_gap == 0 else f"at most {loss_gap:.0e}"
ax_diff.text(0.03, 0.04, f"SGD: {sgd_text} (float64)", transform=ax_diff.transAxes)
ax_loss.set(yscale="log", xlabel="training time s", ylabel="loss E", title="loss")
ax_diff.set(yscale="log", xlabel="training time s", ylabel="|E - E_flow| / E_flow",
            title="distance to the flow")
ax_move.set(xlabel="training time s", ylabel="|Theta(s) - Theta(0)| / |Theta(0)|",
            title="parameter movement")
for ax in (ax_loss, ax_diff, ax_move):
    ax.legend(fontsize=8)
fig.savefig(OUT / "finite_vs_mean_field.png", dpi=110)

# %% [markdown]
# At these step sizes the mean-field flow is what the finite network's gradient methods
# compute. Momentum overshoots during its first steps (its memory is 1 / (1 - 0.9) = 10
# steps) and keeps a lag of a few per cent after it; minibatches add noise of the batch
# gradient's size, about one per cent of the loss here. Adam is not a discretization of
# this flow: its curve is compared at an equal particle displacement budget, and it reaches
# a lower loss by moving its parameters three times as far.
#
# The same comparison from a config, with held-out data, the residual scale alpha (lazy
# against mean-field training) and block reordering: `wflow compare
# configs/compare_teacher.toml`.
