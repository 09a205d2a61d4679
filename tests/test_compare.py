"""``wflow compare``, the residual scale alpha, held-out data, the shallow ensemble, block reordering.

Numerics in float64 (conftest). Shapes are shared so that most tests reuse
one compilation.
"""

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wflow
from wflow._blocks import Reordering, block_fields, ensemble_gap, shallow_ensemble
from wflow._compare import SGD, Adam, Minibatch, Momentum, evaluation_steps, train_network
from wflow.cli import main

L, M, N, D = 4, 8, 32, 2


@eqx.filter_jit
def evaluate(depth, problem, th):
    return depth.evaluate(problem, th)


@eqx.filter_jit
def gap_of(depth, problem, th):
    return ensemble_gap(problem, depth, th)


@eqx.filter_jit
def predict(depth, problem, th):
    return depth.predict(problem, th)


def teacher_problem(scale=1.0, n=N, seed=0, test_n=0):
    feature = wflow.Neuron(d=D, activation="tanh")
    x, y = wflow.make_dataset("teacher", n=n, dim=D, seed=seed, feature=feature)
    xt = yt = None
    if test_n:
        xt, yt = (jnp.asarray(a) for a in wflow.make_test_set(
            "teacher", n=n, dim=D, seed=seed, feature=feature, test_n=test_n))
    return wflow.Problem(feature, jnp.asarray(x), jnp.asarray(y), scale, xt, yt)


def theta0(seed=1, symmetric=False, L=L, M=M):
    feature = wflow.Neuron(d=D)
    return wflow.init_particles("gaussian", jax.random.PRNGKey(seed), L, M, feature.k,
                                dtype=jnp.float64,
                                reflection=feature.reflection if symmetric else None)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


# ----------------------------------------------------------------------------- SGD = the flow


@pytest.mark.parametrize("case", ["plain", "alpha_l2_reorder"])
def test_sgd_is_the_particle_flow(case):
    """optax.sgd with lr = L M h and the Euler particle flow: one trajectory, 200 steps, float64.

    The two differ only in the order of floating-point operations (lr * g against
    h * ((M / w) g)), i.e. by ~1e-16 per step; 1e-10 leaves room for the
    amplification of those round-off errors over 200 steps and nothing more.
    """
    h, n = 0.05, 200
    reg, reorder, scale = None, None, 1.0
    if case != "plain":
        reg = wflow.Regularization(l2=0.1, l2_schedule="inverse", l2_decay=2.0)
        reorder = Reordering("random", 7, seed=3)
        scale = 2.0
    problem = teacher_problem(scale)
    th0 = theta0()
    schedule = wflow.Schedule(time=n * h, dt=h, record_every=n, snapshots=5)
    flow = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=th0,
                           regularization=reg, reordering=reorder)
    assert flow.state.step == n
    sgd = train_network(problem, wflow.LayeredDepth(), th0, SGD(L * M * schedule.step),
                        time=schedule.time, records=4, regularization=reg, reordering=reorder)
    assert sgd.status == "complete" and sgd.step[-1] == n
    moved = rel(flow.state.measure, th0)
    assert moved > 0.05  # the trajectory goes somewhere
    err = rel(sgd.theta, flow.state.measure)
    print(f"{case}: SGD vs Euler flow after {n} steps: max relative difference {err:.2e}")
    assert err < 1e-10
    np.testing.assert_allclose(sgd.s, flow.snapshot_s, rtol=1e-12)


# ----------------------------------------------------------------------------- Adam, momentum


def direct_optax(problem, th0, tx, n):
    """The textbook optax loop, written out: loss_and_grad, update, apply_updates."""
    depth = wflow.LayeredDepth()

    @jax.jit
    def step(theta, state):
        _, g = depth.loss_and_grad(problem, theta)
        updates, state = tx.update(g, state, theta)
        return optax.apply_updates(theta, updates), state

    theta, state = th0, tx.init(th0)
    for _ in range(n):
        theta, state = step(theta, state)
    return theta


@pytest.mark.parametrize("opt", [Adam(0.05), Momentum(0.3, momentum=0.9),
                                 Momentum(0.3, momentum=0.5, nesterov=True)],
                         ids=["adam", "momentum", "nesterov"])
def test_adam_momentum_match_direct_optax_loop_and_decrease_loss(opt):
    problem, th0 = teacher_problem(), theta0()
    n = 60
    traj = train_network(problem, wflow.LayeredDepth(), th0, opt,
                         time=n * opt.ds_per_step(L, M), records=3)
    assert traj.step[-1] == n and traj.status == "complete"
    direct = direct_optax(problem, th0, opt.transform(), n)
    # Same operations in the same order, inside a while_loop instead of a Python loop.
    err = rel(traj.theta, direct)
    assert err < 1e-13, err
    loss = traj.values["loss"]
    assert loss[-1] < 0.5 * loss[0], loss


def test_minibatch_steps_epochs_and_shuffling():
    problem, th0 = teacher_problem(), theta0()
    opt = Minibatch(L * M * 0.05, batch_size=10, epochs=3)
    assert opt.n_steps(1.0, L, M, N) == 3 * (N // 10)
    a = train_network(problem, wflow.LayeredDepth(), th0, opt, time=1.0, records=2,
                      key=jax.random.PRNGKey(5))
    b = train_network(problem, wflow.LayeredDepth(), th0, opt, time=1.0, records=2,
                      key=jax.random.PRNGKey(5))
    c = train_network(problem, wflow.LayeredDepth(), th0, opt, time=1.0, records=2,
                      key=jax.random.PRNGKey(6))
    np.testing.assert_array_equal(a.theta, b.theta)  # seeded: reproducible
    assert rel(a.theta, c.theta) > 1e-6  # another shuffle, another trajectory
    np.testing.assert_allclose(a.s[-1], 9 * 0.05, rtol=1e-12)  # s = step * lr / (L M)
    # A batch that is the whole data set, unshuffled, is full-batch SGD.
    full = Minibatch(L * M * 0.05, batch_size=N, shuffle=False)
    x = train_network(problem, wflow.LayeredDepth(), th0, full, time=1.0, records=2)
    y = train_network(problem, wflow.LayeredDepth(), th0, SGD(L * M * 0.05), time=1.0, records=2)
    assert rel(x.theta, y.theta) < 1e-13


def test_evaluation_steps_match_snapshot_rule():
    for n, records in ((200, 4), (7, 10), (1000, 50), (3, 1)):
        sched = wflow.Schedule(time=float(n), dt=1.0, snapshots=records + 1)
        np.testing.assert_array_equal(evaluation_steps(n, records), sched.snapshot_steps())


# ----------------------------------------------------------------------------- alpha


def test_alpha_one_is_todays_model_bit_for_bit():
    th0 = theta0()
    sched = wflow.Schedule(time=1.0, dt=0.1, record_every=5, snapshots=2)
    a = wflow.integrate(teacher_problem(), wflow.LayeredDepth(), sched, theta0=th0)
    feature = wflow.Neuron(d=D, activation="tanh")
    x, y = wflow.make_dataset("teacher", n=N, dim=D, seed=0, feature=feature)
    b = wflow.integrate(wflow.Problem(feature, jnp.asarray(x), jnp.asarray(y)),
                        wflow.LayeredDepth(), sched, theta0=th0)
    np.testing.assert_array_equal(a.state.measure, b.state.measure)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


@pytest.mark.parametrize("depth", [wflow.LayeredDepth(),
                                   wflow.ContinuousDepth(rtol=1e-11, atol=1e-12)],
                         ids=["layers", "continuous"])
def test_alpha_scales_the_field(depth):
    """alpha f(z; u, w, b) = f(z; alpha u, w, b): the alpha-network is the network with u scaled."""
    alpha = 2.5
    th = theta0()
    th_u = th.at[..., :D].multiply(alpha)
    a = predict(depth, teacher_problem(alpha), th)
    b = predict(depth, teacher_problem(), th_u)
    assert rel(a, b) < (1e-14 if isinstance(depth, wflow.LayeredDepth) else 1e-9)


def test_alpha_velocity_is_the_gradient_of_E_over_alpha_squared():
    alpha = 3.0
    problem, th = teacher_problem(alpha), theta0()
    depth = wflow.LayeredDepth()
    loss, dE = eqx.filter_jit(depth.loss_and_grad)(problem, th)
    # dE is the gradient of the data fit E of the alpha-network: centred differences
    rng = np.random.default_rng(0)
    direction = jnp.asarray(rng.normal(size=th.shape))
    eps = 1e-6
    E = eqx.filter_jit(depth.loss)
    fd = (E(problem, th + eps * direction) - E(problem, th - eps * direction)) / (2 * eps)
    assert abs(float(fd - jnp.sum(dE * direction))) < 1e-8 * abs(float(fd))
    ev = evaluate(depth, problem, th)
    assert float(ev.loss) == float(loss)  # the recorded loss is E, not E / alpha^2
    np.testing.assert_allclose(ev.velocity, -(L * M / alpha**2) * dE, rtol=1e-13)
    _, G = eqx.filter_jit(depth.first_variation_gradient)(problem, th, th)
    np.testing.assert_allclose(G, -ev.velocity, rtol=1e-10, atol=1e-14)


def test_alpha_output_rate_is_alpha_independent_from_a_symmetric_start():
    """Symmetric start: z(t) = x and d_z F = 0 at s = 0, so the output Jacobian is alpha J0.

    Then v = -(1/alpha) J0^T r exactly: |v| ~ 1/alpha and dE/ds = -alpha^2 R is
    the same for every alpha (the lazy-training time scaling of Chizat et al.).
    """
    th = theta0(symmetric=True)
    depth = wflow.LayeredDepth()
    rates, speeds = [], []
    for alpha in (1.0, 4.0, 16.0):
        problem = teacher_problem(alpha)
        ev = evaluate(depth, problem, th)
        np.testing.assert_allclose(predict(depth, problem, th), problem.x[:, :1], atol=1e-14)
        rates.append(alpha**2 * float(ev.stationarity))
        speeds.append(alpha * float(jnp.linalg.norm(ev.velocity)))
    np.testing.assert_allclose(rates, rates[0], rtol=1e-12)
    np.testing.assert_allclose(speeds, speeds[0], rtol=1e-12)


@pytest.mark.slow
def test_alpha_parameter_movement_slope_is_minus_one():
    """Relative movement at a fixed s against alpha: log-log slope near -1 (lazy regime).

    Symmetric start (zero field for every alpha), teacher data, euler steps of
    the flow of E / alpha^2 up to s = 20. Movement ~ C/alpha + O(1/alpha^2):
    alpha = 4..64 gives a slope within 0.1 of -1.
    """
    th = theta0(symmetric=True, M=32)
    alphas = [4.0, 8.0, 16.0, 32.0, 64.0]
    moves = []
    for alpha in alphas:
        problem = teacher_problem(alpha)
        sched = wflow.Schedule(time=20.0, dt=0.1, record_every=200, snapshots=2)
        res = wflow.integrate(problem, wflow.LayeredDepth(), sched, theta0=th)
        assert res.status == "complete"
        moves.append(float(jnp.linalg.norm(res.state.measure - th) / jnp.linalg.norm(th)))
    slope = np.polyfit(np.log(alphas), np.log(moves), 1)[0]
    print(f"movement {moves}, slope {slope:.3f}")
    assert abs(slope + 1.0) < 0.1


# ----------------------------------------------------------------------------- shallow ensemble


@pytest.mark.parametrize("depth", [
    wflow.LayeredDepth(),
    pytest.param(wflow.ContinuousDepth(rtol=1e-12, atol=1e-14), marks=pytest.mark.slow)],
    ids=["layers", "continuous"])
def test_shallow_ensemble_gap_scales_as_alpha_squared(depth):
    th = theta0()
    alphas = np.array([0.01, 0.02, 0.04, 0.08])
    out, loss = [], []
    for alpha in alphas:
        gap = gap_of(depth, teacher_problem(float(alpha)), th)
        out.append(float(gap.output))
        loss.append(abs(float(gap.loss)))
    p_out = np.polyfit(np.log(alphas), np.log(out), 1)[0]
    p_loss = np.polyfit(np.log(alphas), np.log(loss), 1)[0]
    print(f"gap exponents: output {p_out:.3f}, loss {p_loss:.3f}")
    assert abs(p_out - 2) < 0.2 and abs(p_loss - 2) < 0.2


def test_shallow_ensemble_gap_is_zero_for_one_slice_of_z_independent_features():
    th = theta0(L=1).at[..., D : 2 * D].set(0.0)  # w = 0: f(z; u, 0, b) = u tanh(b)
    problem = teacher_problem(1.5)
    for depth in (wflow.LayeredDepth(), wflow.ContinuousDepth(rtol=1e-12, atol=1e-14)):
        gap = gap_of(depth, problem, th)
        assert float(gap.output) < 1e-14 and abs(float(gap.loss)) < 1e-14
    # ... and not with z-dependent features under the continuous flow (the test can fail)
    gap = gap_of(wflow.ContinuousDepth(rtol=1e-12, atol=1e-14), problem, theta0(L=1))
    assert float(gap.output) > 1e-3


def test_shallow_ensemble_definition_and_weights():
    problem, th = teacher_problem(2.0), theta0()
    depth = wflow.LayeredDepth()
    F = block_fields(problem, th)  # (L, N, d): alpha F_l(x)
    assert F.shape == (L, N, D)
    expected = problem.x + jnp.sum(F, axis=0)[:, :D] / L
    np.testing.assert_allclose(shallow_ensemble(problem, depth, th), expected[:, :1], rtol=1e-14)
    w = jnp.full((L, M), 1.0 / M)
    np.testing.assert_allclose(shallow_ensemble(problem, depth, th, weights=w),
                               shallow_ensemble(problem, depth, th), rtol=1e-14)


# ----------------------------------------------------------------------------- reordering


def test_reordering_identity_permutation_changes_nothing():
    """One depth slice: every permutation is the identity; the run is bit-identical."""
    problem, th = teacher_problem(), theta0(L=1)
    sched = wflow.Schedule(time=2.0, dt=0.1, record_every=5, snapshots=3)
    plain = wflow.integrate(problem, wflow.LayeredDepth(), sched, theta0=th)
    for mode in ("random", "sort"):
        res = wflow.integrate(problem, wflow.LayeredDepth(), sched, theta0=th,
                              reordering=Reordering(mode, 1, seed=0))
        np.testing.assert_array_equal(res.state.measure, plain.state.measure)
        for name in plain.history:
            if name != "wall_time":
                np.testing.assert_array_equal(res.history[name], plain.history[name])


def test_reordering_step_permutes_then_steps():
    problem, th = teacher_problem(), theta0()
    depth = wflow.LayeredDepth()
    plain = wflow.ParticleFlow(problem, depth, wflow.Regularization())
    key, h = jax.random.PRNGKey(0), jnp.asarray(0.1)
    step = eqx.filter_jit(lambda flow, th, n: flow.step("heun", th, key, n, h)[0])
    perm = eqx.filter_jit(lambda reo, th, n: reo.permutation(problem, th, n))
    for mode in ("random", "sort"):
        reo = Reordering(mode, 3, seed=7)
        flow = wflow.ParticleFlow(problem, depth, wflow.Regularization(), reo)
        for n in (0, 1, 2, 3, 6):
            got = step(flow, th, jnp.int32(n))
            start = th[perm(reo, th, jnp.int32(n))] if n in (3, 6) else th
            np.testing.assert_array_equal(got, step(plain, start, jnp.int32(n)))
    # random: a permutation, deterministic in (seed, n), different for different n
    reo = Reordering("random", 1, seed=7)
    p3 = np.asarray(reo.permutation(problem, theta0(L=16), 3))
    np.testing.assert_array_equal(np.sort(p3), np.arange(16))
    np.testing.assert_array_equal(p3, reo.permutation(problem, theta0(L=16), 3))
    assert not np.array_equal(p3, reo.permutation(problem, theta0(L=16), 4))
    # sort: the statistic is ascending after the permutation
    srt = Reordering("sort", 1)
    stat = np.asarray(srt.statistic(problem, th))
    assert np.all(np.diff(stat[np.asarray(srt.permutation(problem, th, 1))]) >= 0)
    assert len(set(stat.tolist())) == L


def test_reordering_rejected_for_adaptive():
    with pytest.raises(ValueError, match="train.reorder"):
        wflow.integrate(teacher_problem(), wflow.LayeredDepth(),
                        wflow.Schedule(time=1.0, dt=0.1, method="adaptive"), theta0=theta0(),
                        reordering=Reordering("random", 2))


# ----------------------------------------------------------------------------- CLI


CONFIG = """
seed = 0
[data]
kind = "teacher"
n = 32
dim = 2
test_n = 16
[solver]
L = 4
M = 8
precision = "float64"
[train]
time = 2.0
dt = 0.05
{train}
[compare]
{compare}
"""


def write(tmp_path, train="", compare="", name="c.toml"):
    path = tmp_path / name
    if "records" not in compare:
        compare = "records = 8\n" + compare
    path.write_text(CONFIG.format(train=train, compare=compare))
    return str(path)


def test_compare_file_and_figures(tmp_path, capsys):
    cfg = write(tmp_path, compare='optimizers = ["sgd", "adam", "minibatch", "momentum"]\n'
                                  "scales = [1.0, 2.0]\n[compare.minibatch]\nbatch_size = 8")
    out = tmp_path / "cmp.h5"
    rc = main(["compare", cfg, "-o", str(out), "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "wflow-compare"
        assert list(f.attrs["runs"]) == ["meanfield", "sgd", "adam", "minibatch", "momentum"]
        for run in f.attrs["runs"]:
            for name in ("s", "loss", "test_loss", "movement", "gap_output", "gap_loss",
                         "prediction", "test_prediction"):
                assert name in f[run], (run, name)
            assert f[run]["s"][-1] == pytest.approx(2.0)
            assert f[run].attrs["status"] == "complete"
        # the SGD run is the particle flow (float64 config, default learning rate)
        np.testing.assert_allclose(f["sgd/loss"][()], f["meanfield/loss"][()], rtol=1e-10)
        np.testing.assert_allclose(f["sgd/s"][()], f["meanfield/s"][()], rtol=1e-12)
        assert f["sgd"].attrs["learning_rate"] == pytest.approx(L * M * 0.05)
        assert f["scales/loss"].shape == (2, 9)
        assert f["data/x_test"].shape == (16, 2)
    plots = sorted(p.name for p in (tmp_path / "cmp_plots").iterdir())
    assert plots == ["compare_gap.png", "compare_loss.png", "compare_movement.png",
                     "compare_predictions.png", "compare_scales.png"]


@pytest.mark.parametrize("compare, message", [
    ("optimizer = [\"sgd\"]", "compare.optimizer = "),
    ("optimizers = [\"sgd\", \"lbfgs\"]", "compare.optimizers = "),
    ("optimizers = [\"sgd\"]\n[compare.sgd]\nlearning_rate = -1.0", "compare.sgd.learning_rate"),
    ("optimizers = [\"sgd\"]\n[compare.adam]\nb1 = 0.5", "[compare.adam]: not used"),
    ("optimizers = [\"minibatch\"]\n[compare.minibatch]\nbatch_size = 64",
     "compare.minibatch.batch_size = 64"),
    ("optimizers = [\"momentum\"]\n[compare.momentum]\nmomentum = 1.0",
     "compare.momentum.momentum = 1.0"),
    ("records = 0", "compare.records = 0"),
    ("scales = [1.0, -2.0]", "compare.scales = "),
    ("reorder = [\"shuffle\"]", "compare.reorder = "),
    ("[compare.sgdd]\nlearning_rate = 1.0", "compare.sgdd"),
])
def test_bad_compare_keys_exit_2_one_line(tmp_path, capsys, compare, message):
    cfg = write(tmp_path, compare=compare)
    out = tmp_path / "cmp.h5"
    rc = main(["compare", cfg, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("wflow: error: ") and message in err, err
    assert err[len("wflow: error: ")] not in "'\"", err  # the message itself, not its repr
    assert not out.exists() and not (tmp_path / "cmp_plots").exists()


def test_compare_needs_a_compare_section_and_run_accepts_one(tmp_path, capsys):
    cfg = tmp_path / "plain.toml"
    cfg.write_text(CONFIG.format(train="", compare="").replace("[compare]\n", ""))
    rc = main(["compare", str(cfg), "-o", str(tmp_path / "x.h5")])
    assert rc == 2 and "[compare]" in capsys.readouterr().err
    # wflow run runs the mean-field part of a comparison config
    rc = main(["run", write(tmp_path), "-o", str(tmp_path / "run.h5"), "-q"])
    assert rc == 0, capsys.readouterr().err


def test_run_file_records_test_loss_and_accuracy(tmp_path, capsys):
    path = tmp_path / "circ.toml"
    path.write_text('[data]\nkind = "circles"\nn = 32\ntest_n = 24\n[solver]\nL = 2\nM = 8\n'
                    "[train]\ntime = 0.5\ndt = 0.1\nrecord_every = 1\n")
    out = tmp_path / "circ.h5"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    with h5py.File(out, "r") as f:
        names = set(f["history"])
        assert {"loss", "stationarity", "accuracy", "test_loss", "test_accuracy"} <= names
        assert f["data/x_test"].shape == (24, 2) and f["data/y_test"].shape == (24, 1)
        acc = f["history/test_accuracy"][()]
        assert np.all((acc >= 0) & (acc <= 1)) and len(acc) == 6
        # the recorded test loss is the data fit of the final predictions on the test set
        assert f["history/test_loss"][-1] > 0


def test_reorder_resume_is_bit_identical(tmp_path, capsys):
    train = 'reorder = "random"\nreorder_every = 3\nrecord_every = 4\nsnapshots = 11'
    cfg = write(tmp_path, train=train)
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert main(["run", cfg, "-o", str(full), "-q"]) == 0
    assert main(["run", cfg, "-o", str(part), "-q", "--stop-after-records", "7"]) == 130
    assert main(["run", cfg, "-o", str(part), "-q", "--resume"]) == 0, capsys.readouterr().err
    with h5py.File(full, "r") as a, h5py.File(part, "r") as b:
        for name in ("state/theta", "snapshots/theta", "history/loss", "history/test_loss",
                     "final/prediction"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    # and the reordering did something: a plain run ends elsewhere
    plain = tmp_path / "plain.h5"
    assert main(["run", write(tmp_path, name="p.toml"), "-o", str(plain), "-q"]) == 0
    with h5py.File(full, "r") as a, h5py.File(plain, "r") as b:
        assert not np.array_equal(a["state/theta"][()], b["state/theta"][()])


def test_reorder_config_rules(tmp_path, capsys):
    cfg = write(tmp_path, train="reorder_every = 3")
    assert main(["run", cfg, "-o", str(tmp_path / "r.h5")]) == 2
    assert "train.reorder_every = 3: only used with" in capsys.readouterr().err
    cfg = write(tmp_path, train='reorder = "sort"\nmethod = "adaptive"')
    assert main(["run", cfg, "-o", str(tmp_path / "r.h5")]) == 2
    assert "train.reorder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- held-out data


@pytest.mark.parametrize("kind", ["teacher", "sine", "circles", "digits"])
def test_test_set_is_deterministic_and_leaves_the_training_set_alone(kind):
    args = {"n": 40, "dim": 64 if kind == "digits" else 2, "seed": 3,
            "feature": wflow.Neuron(d=64 if kind == "digits" else 2), "noise": 0.1}
    x0, y0 = wflow.make_dataset(kind, **args)
    x1, y1 = wflow.make_dataset(kind, test_n=25, **args)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
    xt, yt = wflow.make_test_set(kind, test_n=25, **args)
    xt2, yt2 = wflow.make_test_set(kind, test_n=25, **args)
    np.testing.assert_array_equal(xt, xt2)
    np.testing.assert_array_equal(yt, yt2)
    assert xt.shape == (25, x0.shape[1]) and yt.shape == (25, y0.shape[1])
    if kind != "digits":  # (digits are checked by index below: the pool holds duplicate images)
        assert not (xt[:, None, :] == x0[None, :, :]).all(axis=2).any()
    other = wflow.make_test_set(kind, test_n=25, **{**args, "seed": 4})[0]
    assert not np.array_equal(xt, other)


def test_digits_test_set_bounds(tmp_path):
    with pytest.raises(wflow.DataError, match="data.test_n = 100"):
        wflow.make_dataset("digits", n=300, test_n=100, classes=(0, 1))  # 360 images
    # the training and test draws are disjoint slices of one permutation
    x, _ = wflow.make_dataset("digits", n=200, test_n=160, classes=(0, 1))
    xt, _ = wflow.make_test_set("digits", n=200, test_n=160, classes=(0, 1))
    both = np.concatenate([x, xt])
    allx, _ = wflow.make_dataset("digits", n=360, classes=(0, 1))
    # the union is the whole pool of the two classes, as a multiset of rows
    key = lambda a: sorted(map(bytes, np.ascontiguousarray(a)))
    assert key(both) == key(allx)


def test_file_test_set_is_a_seeded_disjoint_split(tmp_path):
    x = np.arange(30.0)[:, None] * np.ones((1, 2))
    y = np.where(np.arange(30) % 2 == 0, 1.0, -1.0)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    xa, _ = wflow.make_dataset("file", path=str(path), test_n=7, seed=1)
    xt, _ = wflow.make_test_set("file", path=str(path), test_n=7, seed=1)
    assert len(xa) == 23 and len(xt) == 7
    assert sorted(np.concatenate([xa, xt])[:, 0].tolist()) == list(range(30))
    assert np.all(np.diff(xa[:, 0]) > 0)  # training rows keep the file's order
    from wflow._data import is_labelled
    assert is_labelled("file", y[:, None]) and not is_labelled("file", x[:, :1])
    # the config resolves data.n = rows - test_n and checks test_n
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'[data]\nkind = "file"\npath = "{path}"\ntest_n = 30\n')
    with pytest.raises(wflow.ConfigError, match="data.test_n = 30"):
        wflow.load_config(cfg)
    cfg.write_text(f'[data]\nkind = "file"\npath = "{path}"\ntest_n = 7\n')
    assert wflow.load_config(cfg)["data"]["n"] == 23


def test_symmetric_init_rules(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(CONFIG.format(train="", compare="").replace("[compare]\n", "")
                    + "[init]\nsymmetric = true\n")
    setup = wflow.build_run(wflow.load_config(path))
    th = np.asarray(setup.measure0)
    np.testing.assert_array_equal(th[:, M // 2:, :D], -th[:, : M // 2, :D])
    np.testing.assert_array_equal(th[:, M // 2:, D:], th[:, : M // 2, D:])
    assert main(["run", str(path), "-o", str(tmp_path / "o.h5"), "--set", "solver.M=7"]) == 2
    assert "needs an even solver.M" in capsys.readouterr().err


def test_block_movement_ignores_relocation():
    from wflow._compare import block_movement

    th0 = np.asarray(theta0())
    perm = np.array([2, 0, 3, 1])
    assert block_movement(th0[perm], th0) == 0.0
    moved = th0 + 0.01 * np.random.default_rng(0).normal(size=th0.shape)
    plain = np.linalg.norm(moved - th0) / np.linalg.norm(th0)
    assert block_movement(moved, th0) == pytest.approx(plain, rel=1e-12)
    assert block_movement(moved[perm], th0) == pytest.approx(plain, rel=1e-12)


def test_compare_diverged_meanfield_exit_3(tmp_path, capsys):
    """Euler steps far beyond stability: the flow diverges (exit 3), Adam (s = step lr) does not."""
    path = tmp_path / "d.toml"
    path.write_text(CONFIG.format(train="", compare='records = 4\noptimizers = ["adam"]')
                    .replace("dt = 0.05", "dt = 20.0").replace("time = 2.0", "time = 200.0"))
    out = tmp_path / "d.h5"
    rc = main(["compare", str(path), "-o", str(out), "-q", "--no-plots"])
    assert rc == 3, capsys.readouterr().err
    with h5py.File(out, "r") as f:
        assert f["meanfield"].attrs["status"] == "diverged"
        assert f["adam"].attrs["status"] == "complete"
