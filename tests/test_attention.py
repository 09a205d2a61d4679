"""Sequence states and attention heads as particles (wflow/_features/attention.py;
docs/theory.md, "Sequences and attention").

The head is checked against the formula written out in NumPy, its reverse-mode derivative
against central finite differences (float64), grad V anywhere against the derivative of the
loss in a particle of vanishing mass, tokenwise blocks against the generic path, SGD
against the Euler flow, and the command line's handling of sequence configs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import datasets

import wflow
from wflow._compare import SGD, train_network
from wflow._features import make_feature
from wflow._features.base import generic_field
from wflow._problem import sequence_maps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TOK, D_TOK, D_IN = 5, 3, 2


def _block(kind="attention", **params):
    return make_feature(kind, D_TOK, tokens=N_TOK, params=params)


def _random(shape, seed, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float64)


def _head_numpy(Z, theta, r, beta, softmax=True):
    """f(Z; theta)_i = sum_j softmax_j(beta (Q z_i).(K z_j) / r) V z_j, written out."""
    d = Z.shape[1]
    Q = theta[: r * d].reshape(r, d)
    K = theta[r * d: 2 * r * d].reshape(r, d)
    V = theta[2 * r * d:].reshape(d, d)
    n = Z.shape[0]
    out = np.zeros_like(Z)
    for i in range(n):
        s = np.array([beta * (Q @ Z[i]) @ (K @ Z[j]) / r for j in range(n)])
        a = np.exp(s - s.max()) / np.exp(s - s.max()).sum() if softmax else s / n
        out[i] = sum(a[j] * (V @ Z[j]) for j in range(n))
    return out


@pytest.mark.parametrize("kind", ["attention", "linear_attention"])
def test_head_is_the_formula(kind):
    f = _block(kind, rank=2, beta=1.7)
    assert f.d == N_TOK * D_TOK and f.k == 2 * 2 * D_TOK + D_TOK ** 2
    Z = np.asarray(_random((N_TOK, D_TOK), 0))
    theta = np.asarray(_random((f.k,), 1))
    got = np.asarray(f(jnp.asarray(Z.reshape(-1)), jnp.asarray(theta))).reshape(N_TOK, D_TOK)
    want = _head_numpy(Z, theta, 2, 1.7, softmax=kind == "attention")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    # the reflection V -> -V flips the head
    R = jnp.asarray(f.reflection)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(Z.reshape(-1)), R * theta)),
                               -got.reshape(-1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", ["attention", "linear_attention", "attention_mlp"])
def test_field_vjp_equals_finite_differences(kind):
    """<P, F(Z + e dZ, Theta + e dT)> by central differences (e = 1e-5, error O(e^2) ~ 1e-10
    relative) against the reverse-mode derivative (gZ, gTheta) of the tiled field."""
    f = _block(kind, rank=2, beta=0.8)
    N, M = 6, 7
    Z, Theta = _random((N, f.d), 2, 0.7), _random((M, f.k), 3, 0.5)
    P, dZ, dT = _random((N, f.d), 4), _random((N, f.d), 5), _random((M, f.k), 6)
    w = jax.nn.softmax(_random((M,), 7))
    gZ, gT, gw = jax.jit(f.field_vjp)(Z, Theta, P, w)

    def phi(e):
        return float(jnp.sum(P * f.field(Z + e * dZ, Theta + e * dT, w)))

    eps = 1e-5
    fd = (phi(eps) - phi(-eps)) / (2 * eps)
    ad = float(jnp.sum(gZ * dZ) + jnp.sum(gT * dT))
    assert abs(fd - ad) <= 1e-8 * max(1.0, abs(ad)), (fd, ad)
    # the weights' derivative: sum_i P_i . f(Z_i; Theta_m)
    values = jax.vmap(lambda t: jax.vmap(lambda z: f(z, t))(Z))(Theta)  # (M, N, d)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(jnp.einsum("mnd,nd->m", values, P)),
                               rtol=1e-12, atol=1e-12)
    # the tiled field equals the untiled one (a tile of one (sample, head) pair per block)
    tiny = make_feature(kind, D_TOK, tokens=N_TOK, params={"rank": 2, "beta": 0.8}, tile=1)
    assert tiny.blocks(N, M)[0] * tiny.blocks(N, M)[2] == N * M
    np.testing.assert_allclose(np.asarray(tiny.field(Z, Theta, w)),
                               np.asarray(f.field_value(Z, Theta, w)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["neuron", "linear"])
def test_tokenwise_blocks_act_on_every_token(kind):
    """A block of vectors on a sequence is the block applied to each token: its fast kernel on
    the N n token rows equals the generic path of the flat block to 1e-12."""
    f = make_feature(kind, D_TOK, tokens=N_TOK)
    inner = make_feature(kind, D_TOK)
    assert type(f).__name__ == "Tokenwise" and f.k == inner.k and f.d == N_TOK * D_TOK
    Z, Theta = _random((4, f.d), 8), _random((6, f.k), 9)
    F = f.field(Z, Theta)
    np.testing.assert_allclose(np.asarray(F), np.asarray(generic_field(f, Z, Theta)),
                               rtol=1e-12, atol=1e-13)
    rows = inner.field(Z.reshape(-1, D_TOK), Theta).reshape(Z.shape)
    np.testing.assert_array_equal(np.asarray(F), np.asarray(rows))


def _sequence_problem(kind="attention", readout_token="last", n=24, seed=0):
    f = _block(kind, rank=2, beta=1.0) if kind != "neuron" else make_feature("neuron", D_TOK,
                                                                             tokens=N_TOK)
    x, y = wflow.make_dataset("in_context_regression", n=n, dim=D_IN + 1, tokens=N_TOK,
                              seed=seed)
    assert x.shape == (n, N_TOK, D_IN + 1) and y.shape == (n, 1)
    A, C = sequence_maps(N_TOK, D_TOK, D_IN + 1, 1, readout_token)
    problem = wflow.Problem(f, jnp.asarray(x.reshape(n, -1)), jnp.asarray(y),
                            embedding=jnp.asarray(A), readout_matrix=jnp.asarray(C))
    return problem


@pytest.mark.parametrize("readout_token", ["last", "mean", 1])
def test_sequence_maps_embed_each_token_and_read_one(readout_token):
    problem = _sequence_problem(readout_token=readout_token)
    x = np.asarray(problem.x).reshape(-1, N_TOK, D_IN + 1)
    z0 = np.asarray(problem.embed(problem.x)).reshape(-1, N_TOK, D_TOK)
    np.testing.assert_array_equal(z0, x)  # d = d_in: padding is the identity here
    g = np.asarray(problem.readout(jnp.asarray(z0.reshape(len(x), -1))))
    token = {"last": z0[:, -1, :1], "mean": z0.mean(axis=1)[:, :1], 1: z0[:, 1, :1]}
    np.testing.assert_allclose(g, token[readout_token], rtol=1e-15, atol=1e-15)


def test_in_context_regression_prompts():
    """Context tokens (x_j, w . x_j), query (x_n, 0), target w . x_n, with one w per prompt."""
    x, y = wflow.make_dataset("in_context_regression", n=200, dim=4, tokens=6, seed=3)
    xs, labels = x[:, :, :3], x[:, :, 3]
    assert np.all(labels[:, -1] == 0.0)
    w = np.stack([np.linalg.lstsq(xs[i, :-1], labels[i, :-1], rcond=None)[0] for i in range(200)])
    np.testing.assert_allclose(y[:, 0], np.einsum("ip,ip->i", xs[:, -1], w), rtol=1e-10,
                               atol=1e-10)
    assert abs(np.mean(np.sum(w ** 2, axis=1)) - 1.0) < 0.15  # w ~ N(0, I_p / p)
    xt, _ = wflow.make_test_set("in_context_regression", n=200, dim=4, tokens=6, seed=3,
                                test_n=50)
    assert xt.shape == (50, 6, 4) and not np.allclose(xt[:50], x[:50])


@pytest.mark.parametrize("kind", ["attention", "neuron"])
def test_grad_v_anywhere_is_the_gradient_of_a_vanishing_head(kind):
    """grad_theta V_l(q) = lim (1 / (w_l omega)) dE/dq for a head of weight omega added at q."""
    problem = _sequence_problem(kind)
    depth = wflow.LayeredDepth()
    L, M, k = 3, 4, problem.feature.k
    theta = _random((L, M, k), 10, 0.6)
    weights = jnp.full((L, M), 1.0 / M)
    query = _random((L, 2, k), 11, 0.8)
    G = eqx.filter_jit(lambda q: depth.first_variation_gradient(problem, theta, q, weights)[1])(
        query)
    omega = 1e-9

    @eqx.filter_jit
    @jax.grad
    def dE_dq(q):
        th = jnp.concatenate([theta, q], axis=1)
        w = jnp.concatenate([weights, jnp.full((L, 2), omega)], axis=1)
        return depth.loss(problem, th, w)

    expected = dE_dq(query) / (depth.weights(L, jnp.float64)[:, None, None] * omega)
    scale = float(jnp.max(jnp.abs(expected)))
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(G), np.asarray(expected), rtol=0, atol=1e-7 * scale)


def test_sgd_on_a_finite_transformer_is_the_euler_flow():
    """optax.sgd with learning rate L M h on the heads = the Euler flow of the particles, up to
    the order of floating-point operations (as for neurons, tests/test_compare.py)."""
    problem = _sequence_problem("attention")
    L, M, h, n = 2, 4, 0.05, 60
    th0 = _random((L, M, problem.feature.k), 12, 0.5)
    schedule = wflow.Schedule(time=n * h, dt=h, record_every=n, snapshots=3)
    flow = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=th0)
    sgd = train_network(problem, wflow.LayeredDepth(), th0, SGD(L * M * h), time=schedule.time,
                        records=2)
    moved = float(jnp.max(jnp.abs(flow.state.measure - th0)))
    assert moved > 0.02
    err = float(np.max(np.abs(np.asarray(sgd.theta) - np.asarray(flow.state.measure))))
    assert err < 1e-10 * max(1.0, moved), err
    assert flow.history["loss"][-1] < flow.history["loss"][0]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "_wflow_entry", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=ROOT)


ICL = """seed = 0
[data]
kind = "in_context_regression"
n = 32
dim = 3
tokens = 5
[model]
feature = "attention"
[model.params]
rank = 2
[solver]
L = 2
M = 8
precision = "float64"
[train]
time = 0.5
dt = 0.05
"""


def test_bad_sequence_inputs_exit_2_with_one_line(tmp_path):
    cfg = tmp_path / "icl.toml"
    cfg.write_text(ICL)
    out = tmp_path / "o.h5"
    cases = [(["--set", "data.tokens=0"], "data.tokens = 0: must be an integer >= 1"),
             (["--set", "model.params.rank=0"], "model.params.rank = 0: must be an integer"),
             (["--set", "model.readout_token=5"], "model.readout_token = 5: out of range"),
             (["--set", "data.kind=sine", "--set", "data.tokens=4"],
              "data.tokens = 4: only used with sequence data"),
             (["--set", "data.kind=sine", "--set", "data.tokens=4", "--set",
               "model.feature=neuron"], "data.tokens = 4: only used with sequence data"),
             (["--set", "data.kind=teacher", "--set", "data.tokens=-1"], "data.tokens = -1"),
             ]
    for extra, needle in cases:
        res = _cli("run", cfg, "-o", out, "-q", *extra)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], (extra, res.stderr)
        assert not out.exists() and "Traceback" not in res.stderr
    vector = tmp_path / "vec.toml"
    vector.write_text(ICL.replace('kind = "in_context_regression"', 'kind = "sine"')
                      .replace("tokens = 5\n", ""))
    res = _cli("run", vector, "-o", out, "-q")
    assert res.returncode == 2 and "needs sequence data" in res.stderr, res.stderr
    res = _cli("run", vector, "-o", out, "-q", "--set", "model.feature=neuron",
               "--set", "model.readout_token=mean")
    assert res.returncode == 2 and "only used with sequence data" in res.stderr, res.stderr


def test_icl_runs_reruns_and_splits_over_devices(tmp_path):
    """``wflow run`` on sequences: the run file, a rerun from it bit for bit, and the same run
    split over 4 forced CPU devices (samples, then heads) within 1e-12."""
    cfg = tmp_path / "icl.toml"
    cfg.write_text(ICL)
    one = tmp_path / "one.h5"
    res = _cli("run", cfg, "-o", one, "-q")
    assert res.returncode == 0, res.stderr
    ref = datasets(one)
    assert ref["data/x"].shape == (32, 5 * 3)
    again = tmp_path / "again.h5"
    assert _cli("run", one, "-o", again, "-q").returncode == 0
    for name, value in datasets(again).items():
        if not name.endswith("wall_time"):
            np.testing.assert_array_equal(value, ref[name], err_msg=name)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    for shard in ("data", "particles"):
        out = tmp_path / f"{shard}.h5"
        res = _cli("run", cfg, "-o", out, "-q", "--set", "solver.devices=4",
                   "--set", f"solver.shard={shard}", env=env)
        assert res.returncode == 0, res.stderr
        got = datasets(out)
        for name in ("history/loss", "state/theta", "snapshots/theta"):
            a, b = got[name], ref[name]
            assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(b)), (shard, name)
