"""The particle gradient flow in training time s (``integrate``), against mathematics.

Closed form (docs/theory.md, "Closed form: linear, d = 1"), degenerate stationary point
(docs/theory.md, "Degenerate start"), energy identity,
symmetries, convergence orders of the time steppers, regularization, seeding,
dtype, compilation and divergence handling. Float64 unless a test says otherwise.
"""

import contextlib
import logging
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import wflow

# One small teacher problem and particle shape shared by many tests, so that the
# compiled steps (keyed on shapes and static settings) are reused across tests.
L_STD, M_STD = 2, 8


def _teacher_problem(n=8, d=2, activation="tanh", seed=0):
    feat = wflow.make_feature("neuron", d, activation=activation)
    x, y = wflow.make_dataset("teacher", n=n, dim=d, feature=feat, seed=seed)
    return wflow.Problem(feat, jnp.asarray(x), jnp.asarray(y))


def _gaussian(problem, L=L_STD, M=M_STD, seed=0, std=1.0, dtype=jnp.float64):
    return wflow.init_particles("gaussian", jax.random.PRNGKey(seed), L, M, problem.feature.k,
                                std=std, dtype=dtype)


def _run(problem, theta0, depth=None, **schedule):
    schedule.setdefault("record_every", 1)
    depth = wflow.LayeredDepth() if depth is None else depth
    reg = schedule.pop("regularization", wflow.Regularization())
    key = schedule.pop("key", None)
    return wflow.integrate(problem, depth, wflow.Schedule(**schedule), theta0=theta0,
                           regularization=reg, key=key)


def test_zero_horizon_is_the_initial_network_only():
    """train.time = 0: no step is taken; one history record and one snapshot at s = 0 hold the
    initial measure's loss and particles, status complete."""
    x = jnp.linspace(-1, 1, 8)[:, None]
    problem = wflow.Problem(wflow.Neuron(d=2), x, jnp.sin(3 * x))
    theta0 = _gaussian(problem, L=3, M=4)
    schedule = wflow.Schedule(time=0.0, dt=0.1)
    assert schedule.n_steps == 0 and schedule.record_steps().tolist() == [0]
    res = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0)
    assert res.status == "complete" and res.state.step == 0
    assert res.history["s"].tolist() == [0.0]
    np.testing.assert_array_equal(res.history["loss"],
                                  [wflow.LayeredDepth().loss(problem, theta0)])
    np.testing.assert_array_equal(res.snapshots[0], theta0)
    with pytest.raises(ValueError, match="train.time = -1"):
        wflow.Schedule(time=-1.0, dt=0.1)


# ---------------------------------------------------------------------------------------
# docs/theory.md, "Closed form: linear, d = 1": linear features, y = a x


A_TARGET = 1.5


def _linear_problem(a=A_TARGET, n=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 1))
    problem = wflow.Problem(wflow.make_feature("linear", 1), jnp.asarray(x), jnp.asarray(a * x))
    return problem, float(np.mean(x ** 2))


def _closed_form_energy(A0, X2, s, a=A_TARGET):
    """E(s) = (X2/2)(e^{A(s)} - a)^2 with dA/ds = -X2 (e^A - a) e^A (scipy, rtol 1e-12)."""
    sol = solve_ivp(lambda _, A: -X2 * (np.exp(A) - a) * np.exp(A), (0.0, float(s[-1])), [A0],
                    t_eval=s, method="DOP853", rtol=1e-12, atol=1e-14)
    return X2 / 2 * (np.exp(sol.y[0]) - a) ** 2


def _closed_form_gap(L, theta0, S=0.5, dt=2e-3):
    """max_s |E_L(s) - E(s)| / E(s) for the layered flow (Heun, small ds) and the moves."""
    problem, X2 = _linear_problem()
    res = _run(problem, theta0, time=S, dt=dt, method="heun", record_every=25)
    assert res.status == "complete"
    E = res.history["loss"]
    exact = _closed_form_energy(float(jnp.mean(theta0)), X2, res.history["s"])
    return np.max(np.abs(E - exact) / exact), np.asarray(res.state.measure - theta0)


def test_closed_form_layered_flow_large_L():
    """L = 256, independent Gaussian particles per layer: E(s) within 1e-3 of the ODE."""
    theta0 = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (256, 4, 1))
    gap, moved = _closed_form_gap(256, theta0)
    assert gap <= 1e-3, gap
    # the layered velocity is -X2 (P - a) P / (1 + m_l / L): rigid within each layer ...
    assert np.max(np.ptp(moved, axis=1)) <= 1e-14
    # ... and the same for every layer up to O(1/L)
    assert np.ptp(moved) <= 0.05 * np.max(np.abs(moved))


@pytest.mark.parametrize("Ls", [pytest.param((32, 64, 128), id="default"),
                                pytest.param((8, 16, 32, 64, 128, 256, 512), id="sweep",
                                             marks=pytest.mark.slow)])
def test_closed_form_gap_is_first_order_in_L(Ls):
    """The finite ResNet differs from the limit by O(1/L): fitted log-log slope -1 +- 0.1."""
    base = 0.3 * np.random.default_rng(1).normal(size=(1, 4, 1))  # same particles in every layer
    gaps = [_closed_form_gap(L, jnp.asarray(np.tile(base, (L, 1, 1))))[0] for L in Ls]
    slope = np.polyfit(np.log(Ls), np.log(gaps), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1), (slope, gaps)


@pytest.mark.slow
@pytest.mark.parametrize("L", [1, 3, 6])
def test_closed_form_continuous_flow_any_L(L):
    """ContinuousDepth's velocity is exactly the closed-form one: the particle Euler run is the
    Euler recursion A_{n+1} = A_n - ds X2 (e^A_n - a) e^A_n, and every particle moves rigidly."""
    problem, X2 = _linear_problem()
    theta0 = 0.3 * jax.random.normal(jax.random.PRNGKey(L), (L, 4, 1))
    S, ds = 0.5, 0.05
    res = _run(problem, theta0, wflow.ContinuousDepth(rtol=1e-10, atol=1e-10), time=S, dt=ds)
    A = [float(jnp.mean(theta0))]
    for _ in range(10):
        A.append(A[-1] - ds * X2 * (np.exp(A[-1]) - A_TARGET) * np.exp(A[-1]))
    expected = X2 / 2 * (np.exp(np.array(A)) - A_TARGET) ** 2
    np.testing.assert_allclose(res.history["loss"], expected, rtol=1e-8)
    moved = np.asarray(res.state.measure - theta0)
    assert np.ptp(moved) <= 1e-8 * np.max(np.abs(moved))
    # and the Euler run is within O(ds) of the exact flow
    exact = _closed_form_energy(A[0], X2, res.history["s"])
    assert np.max(np.abs(res.history["loss"] - exact) / exact) <= 0.05


# ---------------------------------------------------------------------------------------
# docs/theory.md, "Degenerate start": degenerate point vs full support


# Layered depth in the default run, continuous depth (5-10 s of compilation each) in -m slow.
DEPTHS_CONTINUOUS_SLOW = [
    pytest.param(wflow.LayeredDepth(), id="layers"),
    pytest.param(wflow.ContinuousDepth(), id="continuous", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("depth", DEPTHS_CONTINUOUS_SLOW)
def test_point_mass_at_zero_never_moves(depth):
    problem = _teacher_problem()
    theta0 = wflow.init_particles("point", jax.random.PRNGKey(0), L_STD, M_STD,
                                  problem.feature.k, mean=0.0, dtype=jnp.float64)
    res = _run(problem, theta0, depth, time=10.0, dt=0.05)  # 200 steps, all recorded
    loss = res.history["loss"]
    assert res.status == "complete" and len(loss) == 201
    assert loss[0] > 0
    assert np.all(loss == loss[0])
    assert np.all(res.history["stationarity"] == 0.0)
    assert np.array_equal(np.asarray(res.state.measure), np.zeros(theta0.shape))


def test_full_support_start_reaches_the_global_minimum():
    """Gaussian start on teacher data (a zero-loss problem): E drops below 1e-3 E(0)."""
    problem = _teacher_problem(n=8)
    theta0 = _gaussian(problem, L=4, M=32)
    res = _run(problem, theta0, time=150.0, dt=2.0, record_every=5)
    loss = res.history["loss"]
    assert res.status == "complete"
    assert loss[-1] <= 1e-3 * loss[0], loss[-1] / loss[0]
    assert np.all(np.diff(loss) <= 0)


# ---------------------------------------------------------------------------------------
# energy identity


@pytest.mark.parametrize("depth", [
    pytest.param(wflow.LayeredDepth(), id="layers"),
    pytest.param(wflow.ContinuousDepth(rtol=1e-10, atol=1e-10), id="continuous",
                 marks=pytest.mark.slow),
])
def test_energy_identity(depth):
    """dE/ds = -(stationarity residual) along the flow, and E decreases at every record."""
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    ds = 0.01
    res = _run(problem, theta0, depth, time=1.0, dt=ds, method="heun")
    E, stat = res.history["loss"], res.history["stationarity"]
    assert np.all(np.diff(E) < 0)
    dEds = (E[2:] - E[:-2]) / (2 * ds)  # centred, O(ds^2) like Heun itself
    rel = np.abs(dEds + stat[1:-1]) / stat[1:-1]
    assert np.max(rel) <= 0.01, np.max(rel)


@pytest.mark.parametrize("method", wflow.METHODS)
def test_energy_decreases_monotonically(method):
    problem = _teacher_problem()
    res = _run(problem, _gaussian(problem), time=2.0, dt=0.05, method=method)
    assert res.status == "complete"
    assert np.all(np.diff(res.history["loss"]) < 0)


def test_l2_regularized_energy_decreases():
    """With lambda > 0 the flow is the gradient flow of E + (lambda/2) sum_l w_l mean_m |theta|^2."""
    problem = _teacher_problem()
    l2, n = 0.5, 40
    res = _run(problem, _gaussian(problem), time=2.0, dt=2.0 / n, snapshots=n + 1,
               regularization=wflow.Regularization(l2=l2))
    assert res.snapshots.shape[0] == n + 1
    penalty = l2 / 2 * np.mean(np.sum(res.snapshots ** 2, axis=3), axis=2).sum(axis=1) / L_STD
    total = res.history["loss"] + penalty
    assert np.all(np.diff(total) < 0)


@pytest.mark.parametrize("schedule", ["constant", "inverse", "exponential"])
def test_l2_without_data_gradient_is_exponential_decay(schedule):
    """x = 0 and linear features: z(1) = 0 whatever theta is, so E is constant and
    d theta / ds = -lambda(s) theta, i.e. theta(S) = theta(0) exp(-int_0^S lambda)."""
    n = 6
    problem = wflow.Problem(wflow.make_feature("linear", 1), jnp.zeros((n, 1)), jnp.ones((n, 1)))
    theta0 = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 1))
    l2, c, S = 0.8, 0.5, 1.0
    reg = wflow.Regularization(l2=l2, l2_schedule=schedule, l2_decay=c)
    res = _run(problem, theta0, time=S, dt=0.005, method="heun", regularization=reg,
               record_every=50)
    integral = {"constant": l2 * S,
                "inverse": l2 * c * math.log1p(S / c),
                "exponential": l2 * c * (1 - math.exp(-S / c))}[schedule]
    np.testing.assert_allclose(res.state.measure, theta0 * math.exp(-integral), rtol=1e-5)
    assert np.all(res.history["loss"] == 0.5)


# ---------------------------------------------------------------------------------------
# symmetries: exchangeability and duplication


def _permute_within_layers(theta, seed=0):
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(theta.shape[1]) for _ in range(theta.shape[0])])
    return perms, theta[np.arange(theta.shape[0])[:, None], perms]


@pytest.mark.parametrize("depth", DEPTHS_CONTINUOUS_SLOW)
def test_permuting_particles_changes_nothing(depth):
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    perms, theta_p = _permute_within_layers(theta0)
    rows = np.arange(L_STD)[:, None]
    ev, ev_p = depth.evaluate(problem, theta0), depth.evaluate(problem, theta_p)
    assert float(ev_p.loss) == pytest.approx(float(ev.loss), rel=1e-13)
    np.testing.assert_allclose(ev_p.velocity, ev.velocity[rows, perms], rtol=1e-11, atol=1e-14)

    kw = {"time": 1.0, "dt": 0.05, "snapshots": 5}
    a, b = _run(problem, theta0, depth, **kw), _run(problem, theta_p, depth, **kw)
    np.testing.assert_allclose(b.history["loss"], a.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(b.snapshots, a.snapshots[:, rows, perms], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("depth", DEPTHS_CONTINUOUS_SLOW)
def test_duplicating_particles_changes_nothing(depth):
    """M -> 2M with every particle twice is the same empirical measure: same flow."""
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    kw = {"time": 1.0, "dt": 0.05, "snapshots": 5}
    a = _run(problem, theta0, depth, **kw)
    b = _run(problem, jnp.concatenate([theta0, theta0], axis=1), depth, **kw)
    np.testing.assert_allclose(b.history["loss"], a.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(b.snapshots[:, :, :M_STD], a.snapshots, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(b.snapshots[:, :, M_STD:], a.snapshots, rtol=1e-11, atol=1e-13)


# ---------------------------------------------------------------------------------------
# time steppers: orders and the adaptive method


S_ORDER = 2.0


def _order_reference(problem, theta0):
    return _run(problem, theta0, time=S_ORDER, dt=S_ORDER / 8, method="adaptive", rtol=1e-12,
                atol=1e-12, record_every=8).state.measure


@pytest.mark.parametrize("method, order", [(name, s.order) for name, s in wflow.STEPPERS.items()])
@pytest.mark.parametrize("n_steps", [pytest.param((8, 16, 32), id="default"),
                                     pytest.param((4, 8, 16, 32, 64, 128), id="sweep",
                                                  marks=pytest.mark.slow)])
def test_time_stepper_order(method, order, n_steps):
    """max |theta_ds(S) - theta(S)| ~ ds^order (reference: adaptive Tsit5 at 1e-12)."""
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    ref = _order_reference(problem, theta0)
    ds = S_ORDER / np.asarray(n_steps)
    err = [float(jnp.max(jnp.abs(_run(problem, theta0, time=S_ORDER, dt=h, method=method,
                                      record_every=1000).state.measure - ref))) for h in ds]
    slope = np.polyfit(np.log(ds), np.log(err), 1)[0]
    assert slope == pytest.approx(order, abs=0.15 if order == 1 else 0.2), (slope, err)
    assert max(err) < 0.1  # in the asymptotic range (not merely a slope of large errors)


def test_adaptive_agrees_with_fine_heun():
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    ada = _run(problem, theta0, time=S_ORDER, dt=0.25, method="adaptive", record_every=8)
    heun = _run(problem, theta0, time=S_ORDER, dt=S_ORDER / 1024, method="heun",
                record_every=1024)
    assert float(jnp.max(jnp.abs(ada.state.measure - theta0))) > 0.1  # the particles did move
    np.testing.assert_allclose(ada.state.measure, heun.state.measure, atol=1e-6)
    assert ada.history["loss"][-1] == pytest.approx(heun.history["loss"][-1], rel=1e-6)


# ---------------------------------------------------------------------------------------
# Langevin noise, determinism, dtype, compilation


def test_langevin_is_seeded():
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    reg = wflow.Regularization(temperature=0.01)
    kw = {"time": 0.5, "dt": 0.05, "regularization": reg}
    a = _run(problem, theta0, key=jax.random.PRNGKey(1), **kw)
    b = _run(problem, theta0, key=jax.random.PRNGKey(1), **kw)
    c = _run(problem, theta0, key=jax.random.PRNGKey(2), **kw)
    assert np.array_equal(np.asarray(a.state.measure), np.asarray(b.state.measure))
    assert np.array_equal(a.history["loss"], b.history["loss"])
    assert np.array_equal(np.asarray(a.state.key), np.asarray(b.state.key))
    assert not np.allclose(np.asarray(a.state.measure), np.asarray(c.state.measure))
    # the noise has the Brownian size sqrt(2 tau S) (the drift over S = 0.5 is much smaller)
    det = _run(problem, theta0, time=0.5, dt=0.05)
    spread = float(jnp.std(a.state.measure - det.state.measure))
    assert spread == pytest.approx(math.sqrt(2 * 0.01 * 0.5), rel=0.3)


def test_langevin_with_adaptive_is_refused():
    problem = _teacher_problem()
    with pytest.raises(ValueError, match="temperature"):
        _run(problem, _gaussian(problem), time=0.5, dt=0.05, method="adaptive",
             regularization=wflow.Regularization(temperature=0.1))


def test_same_seed_gives_bit_identical_runs():
    problem = _teacher_problem()
    th_a = _gaussian(problem, seed=3)
    th_b = _gaussian(problem, seed=3)
    assert np.array_equal(np.asarray(th_a), np.asarray(th_b))
    assert not np.array_equal(np.asarray(th_a), np.asarray(_gaussian(problem, seed=4)))
    for kind in ("uniform", "point"):
        u = [wflow.init_particles(kind, jax.random.PRNGKey(3), 2, 3, 5, mean=0.5) for _ in range(2)]
        assert np.array_equal(np.asarray(u[0]), np.asarray(u[1]))
    a = _run(problem, th_a, time=0.5, dt=0.05, method="heun")
    b = _run(problem, th_b, time=0.5, dt=0.05, method="heun")
    assert np.array_equal(np.asarray(a.state.measure), np.asarray(b.state.measure))
    assert np.array_equal(a.history["loss"], b.history["loss"])
    assert np.array_equal(a.snapshots, b.snapshots)


@pytest.mark.parametrize("method", wflow.METHODS)
def test_float32_particles_stay_float32(method):
    """float32 Theta in (float64 data, x64 enabled) -> float32 state and snapshots out."""
    problem = _teacher_problem()
    theta0 = _gaussian(problem, dtype=jnp.float32)
    res = _run(problem, theta0, time=0.2, dt=0.05, method=method,
               regularization=wflow.Regularization(l2=0.1))
    assert res.status == "complete"
    assert res.state.measure.dtype == jnp.float32
    assert res.snapshots.dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("adjoint", wflow.ADJOINTS)
def test_float32_particles_stay_float32_continuous(adjoint):
    problem = _teacher_problem()
    theta0 = _gaussian(problem, dtype=jnp.float32)
    res = _run(problem, theta0, wflow.ContinuousDepth(adjoint=adjoint), time=0.1, dt=0.05)
    assert res.status == "complete"
    assert res.state.measure.dtype == jnp.float32


@contextlib.contextmanager
def _compile_log():
    """The "Compiling ..." lines JAX logs while the block runs, as (thread name, line).
    JAX logs them only where ``jax.log_compiles()`` is in force, a per-thread setting."""
    compiles = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "Compiling" in record.getMessage():
                compiles.append((threading.current_thread().name, record.getMessage()))

    handler = Catch()
    logging.getLogger("jax").addHandler(handler)
    try:
        yield compiles
    finally:
        logging.getLogger("jax").removeHandler(handler)


def test_second_integrate_call_does_not_recompile():
    """Same shapes, different values: no new trace of the step or the diagnostics, and no
    XLA compilation at all on the second call."""
    traces = []

    class CountingDepth(wflow.LayeredDepth):  # a fresh class: fresh compilation cache keys
        def evaluate(self, problem, Theta):
            traces.append(None)  # Python side effect: runs once per trace
            return super().evaluate(problem, Theta)

    problem = _teacher_problem()
    schedule = wflow.Schedule(time=1.0, dt=0.05, method="heun", record_every=3)
    with _compile_log() as compiles, jax.log_compiles():
        wflow.integrate(problem, CountingDepth(), schedule, theta0=_gaussian(problem, seed=5))
        first_traces, first_compiles = len(traces), len(compiles)
        wflow.integrate(problem, CountingDepth(), schedule, theta0=_gaussian(problem, seed=6))
    assert first_traces >= 2 and first_compiles >= 2  # the counters do see the first call
    assert len(traces) == first_traces
    assert compiles[first_compiles:] == []


@pytest.mark.parametrize("method,donate", [("euler", True), ("heun", False),
                                           ("adaptive", False)])
def test_compile_ahead_leaves_integrate_nothing_to_compile(method, donate):
    """``compile_ahead`` in another thread compiles what ``integrate`` with the same
    arguments runs: the integrate call then compiles nothing, and its numbers are those of a
    run that compiled for itself."""
    from wflow._integrate import compile_ahead

    class FreshDepth(wflow.LayeredDepth):  # a fresh class: fresh compilation cache keys
        pass

    problem = _teacher_problem()
    schedule = wflow.Schedule(time=0.4, dt=0.05, method=method, record_every=3)
    key = jax.random.PRNGKey(3)
    # the reference first: it also compiles the small eager operations on these shapes
    ref = wflow.integrate(problem, wflow.LayeredDepth(), schedule, key=key,
                          theta0=_gaussian(problem, seed=5))

    def ahead():
        with jax.log_compiles():  # a per-thread setting
            compile_ahead(problem, FreshDepth(), schedule, theta0=_gaussian(problem, seed=5),
                          key=key, donate=donate)

    with _compile_log() as compiles:
        thread = threading.Thread(target=ahead, name="ahead")
        thread.start()
        thread.join()
        first = len(compiles)
        with jax.log_compiles():
            res = wflow.integrate(problem, FreshDepth(), schedule, key=key, donate=donate,
                                  theta0=_gaussian(problem, seed=5))
    assert first >= 2 and all(name == "ahead" for name, _ in compiles[:first]), compiles
    assert compiles[first:] == [], compiles[first:]
    assert np.array_equal(np.asarray(res.state.measure), np.asarray(ref.state.measure))
    assert np.array_equal(res.history["loss"], ref.history["loss"])


# ---------------------------------------------------------------------------------------
# divergence, records, interruption


@pytest.mark.parametrize("dt", [100.0, 1e300])
def test_divergence_is_a_status_not_an_exception(dt):
    problem, _ = _linear_problem(n=16)
    theta0 = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (4, 4, 1))
    res = _run(problem, theta0, time=100 * dt, dt=dt, record_every=10)
    assert res.status == "diverged"
    assert np.all(np.isfinite(np.asarray(res.state.measure)))
    assert res.state.step < 100
    assert res.history["s"][0] == 0.0


def test_records_and_snapshots_follow_the_schedule():
    problem = _teacher_problem()
    res = _run(problem, _gaussian(problem), time=1.0, dt=0.1, record_every=4, snapshots=3)
    np.testing.assert_allclose(res.history["s"], [0.0, 0.4, 0.8, 1.0], atol=1e-12)
    np.testing.assert_allclose(res.snapshot_s, [0.0, 0.5, 1.0], atol=1e-12)
    assert res.snapshots.shape == (3, L_STD, M_STD, problem.feature.k)
    np.testing.assert_array_equal(res.snapshots[-1], np.asarray(res.state.measure))
    assert res.state.step == 10


def test_interrupted_run_resumes_to_the_same_state():
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    schedule = wflow.Schedule(time=1.0, dt=0.05, record_every=2)
    full = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0)
    part = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0,
                           callback=lambda rec: rec.step >= 8)
    assert part.status == "interrupted" and part.state.step == 8
    rest = wflow.integrate(problem, wflow.LayeredDepth(), schedule, state=part.state,
                           initial_loss=part.history["loss"][0])
    assert rest.status == "complete"
    assert np.array_equal(np.asarray(rest.state.measure), np.asarray(full.state.measure))
    np.testing.assert_array_equal(np.concatenate([part.history["loss"], rest.history["loss"]]),
                                  full.history["loss"])


@pytest.mark.parametrize("temperature", [0.0, 0.01])
def test_poll_between_records_changes_no_number_and_stops_resumably(monkeypatch, temperature):
    """``integrate(poll=...)`` runs a chunk between two records in pieces (here: one step
    each) and asks ``poll`` between them: the same steps, so the same numbers bit for bit
    (Langevin noise included); a stop there is resumable from the returned state."""
    import wflow._integrate as integ

    monkeypatch.setattr(integ, "POLL_SECONDS", 1e-12)  # a piece is one step
    problem = _teacher_problem()
    theta0 = _gaussian(problem)
    schedule = wflow.Schedule(time=1.0, dt=0.05, record_every=10)
    kw = {"regularization": wflow.Regularization(temperature=temperature),
          "key": jax.random.PRNGKey(5)}
    full = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0, **kw)
    polled = []
    paced = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0,
                            poll=lambda step: polled.append(step), **kw)
    boundaries = set(schedule.boundaries().tolist())  # records and snapshots: 5, 10, 15, 20
    assert polled == [s for s in range(1, 20) if s not in boundaries]
    assert np.array_equal(np.asarray(paced.state.measure), np.asarray(full.state.measure))
    assert np.array_equal(paced.history["loss"], full.history["loss"])
    part = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0,
                           poll=lambda step: step >= 13, **kw)
    assert part.status == "interrupted" and part.state.step == 13  # between boundaries 10, 15
    assert part.history["s"].tolist() == [0.0, 0.5]  # no record at the stop
    rest = wflow.integrate(problem, wflow.LayeredDepth(), schedule, state=part.state,
                           initial_loss=part.history["loss"][0],
                           regularization=kw["regularization"])
    assert rest.status == "complete"
    assert np.array_equal(np.asarray(rest.state.measure), np.asarray(full.state.measure))
    np.testing.assert_array_equal(np.concatenate([part.history["loss"], rest.history["loss"]]),
                                  full.history["loss"])
