"""Depth discretizations: gradients, adjoints, depth limits, closed forms, structure.

Numerics in float64 (tests/conftest.py). The ContinuousDepth cases each compile a
diffrax solve and its gradient (several seconds on CPU), so the default run
checks a representative subset and ``-m slow`` sweeps the whole registry.
"""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wflow

TIGHT = {"rtol": 1e-10, "atol": 1e-10}
FD_EPS = 1e-5
N_ENTRIES = 6  # random entries of Theta checked one by one


@eqx.filter_jit
def _evaluate(depth, problem, theta):
    return depth.evaluate(problem, theta)


@eqx.filter_jit
def _loss(depth, problem, theta):
    return depth.loss(problem, theta)


def _make_depth(name):
    if name == "layers":
        return wflow.LayeredDepth()
    return wflow.ContinuousDepth(adjoint=name.split("-")[1], **TIGHT)


def _random_problem(kind, activation, bias, *, d=3, n=6, seed=0):
    """x (n, 2), y (n, 2) in R^d with d = 3: exercises embedding padding and the readout."""
    feat = wflow.make_feature(kind, d, activation=activation, bias=bias)
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return wflow.Problem(feat, jax.random.normal(kx, (n, 2)), jax.random.normal(ky, (n, 2)))


def _random_theta(problem, L=3, M=4, seed=1):
    return 0.7 * jax.random.normal(jax.random.PRNGKey(seed), (L, M, problem.feature.k))


@eqx.filter_jit
def _relu_signs(problem, theta):
    """Sign pattern of every pre-activation w.z + b met by the layered forward pass."""
    _, zs = wflow.LayeredDepth().trajectory(problem, theta, problem.embed(problem.x))
    _, w, b = problem.feature.split(theta)
    return jnp.einsum("lnd,lmd->lnm", zs, w) + b[:, None, :] > 0


@functools.cache
def _gradient_check(kind, activation, bias, depth_name):
    """Analytic vs centred-difference derivatives of ``depth.loss`` (cached: reused by tests)."""
    problem = _random_problem(kind, activation, bias)
    theta = _random_theta(problem)
    depth = _make_depth(depth_name)
    L, M, k = theta.shape
    ev = _evaluate(depth, problem, theta)
    # the velocity rule v = -(M / w_l) dE/dtheta turned back into dE/dtheta
    w = depth.weights(L, theta.dtype)
    grad = -(w / M)[:, None, None] * ev.velocity

    rng = np.random.default_rng(2)
    directions = [jnp.asarray(rng.normal(size=theta.shape)) for _ in range(3)]
    flat = rng.choice(L * M * k, size=N_ENTRIES, replace=False)
    for idx in flat:
        e = np.zeros(L * M * k)
        e[idx] = 1.0
        directions.append(jnp.asarray(e.reshape(theta.shape)))

    probes = []
    for v in directions:
        plus, minus = theta + FD_EPS * v, theta - FD_EPS * v
        if activation == "relu":
            # relu is piecewise smooth: the difference quotient is only valid when the
            # perturbation crosses no kink, which we check rather than assume.
            base = np.asarray(_relu_signs(problem, theta))
            assert np.array_equal(base, np.asarray(_relu_signs(problem, plus)))
            assert np.array_equal(base, np.asarray(_relu_signs(problem, minus)))
        fd = (_loss(depth, problem, plus) - _loss(depth, problem, minus)) / (2 * FD_EPS)
        probes.append((float(fd), float(jnp.vdot(grad, v))))
    fd, an = np.array(probes).T
    directional = np.max(np.abs(fd[:3] - an[:3]) / np.abs(an[:3]))
    # per entry: v_{l,m,j} = -(M / w_l) dE/dtheta_{l,m,j} against the same rule applied to FD
    scale = (M / np.asarray(w))[flat // (M * k)]
    v_fd, v_an = -scale * fd[3:], -scale * an[3:]
    entrywise = np.linalg.norm(v_fd - v_an) / np.linalg.norm(v_an)
    return {"loss": float(ev.loss), "velocity": np.asarray(ev.velocity),
            "stationarity": float(ev.stationarity), "directional": directional,
            "entrywise": entrywise}


def _feature_cases():
    cases = [("neuron", act, bias) for bias in (True, False) for act in wflow.ACTIVATIONS]
    return cases + [("linear", "tanh", True)]


def _case_id(case):
    kind, act, bias = case
    return "linear" if kind == "linear" else f"neuron-{act}-{'bias' if bias else 'nobias'}"


# The default run checks LayeredDepth on every activation (with bias; tanh also without)
# and ContinuousDepth on one neuron case and the linear map; the slow run sweeps every
# activation with and without bias for all three.
_CONTINUOUS_DEFAULT = {("neuron", "tanh", True), ("linear", "tanh", True)}


def _gradient_params():
    params = []
    for case in _feature_cases():
        # default: every activation with bias, one without; slow: the full cross product
        marks = [pytest.mark.slow] if (not case[2] and case[1] != "tanh") else []
        params.append(pytest.param(*case, "layers", id=f"layers-{_case_id(case)}", marks=marks))
    for adjoint in wflow.ADJOINTS:
        for case in _feature_cases():
            name = f"continuous-{adjoint}"
            marks = []
            if case[1] == "relu" and case[0] == "neuron":
                marks.append(pytest.mark.skip(reason="not smooth: relu is outside the theory and "
                                                     "the adaptive solver's error control"))
            elif case not in _CONTINUOUS_DEFAULT:
                marks.append(pytest.mark.slow)
            params.append(pytest.param(*case, name, id=f"{name}-{_case_id(case)}", marks=marks))
    return params


@pytest.mark.parametrize("kind, activation, bias, depth_name", _gradient_params())
def test_gradient_matches_centred_differences(kind, activation, bias, depth_name):
    """dE/dTheta (as the velocity rule -(M/w_l) dE/dtheta) vs centred differences of the loss."""
    res = _gradient_check(kind, activation, bias, depth_name)
    tol = 1e-6 if depth_name == "layers" else 1e-5
    assert res["directional"] <= tol, res["directional"]
    assert res["entrywise"] <= tol, res["entrywise"]


@pytest.mark.parametrize("kind, activation, bias", [("neuron", "tanh", True), ("linear", "tanh", True)])
def test_layered_loss_and_grad_is_evaluate(kind, activation, bias):
    """``evaluate`` is loss_and_grad + the velocity rule + the stationarity sum."""
    problem = _random_problem(kind, activation, bias)
    theta = _random_theta(problem)
    depth = wflow.LayeredDepth()
    L, M, _ = theta.shape
    loss, grad = depth.loss_and_grad(problem, theta)
    ev = depth.evaluate(problem, theta)
    np.testing.assert_allclose(ev.loss, loss, rtol=1e-15)
    np.testing.assert_allclose(ev.loss, depth.loss(problem, theta), rtol=1e-14)
    np.testing.assert_allclose(ev.velocity, -L * M * grad, rtol=1e-14)
    stat = np.sum(np.mean(np.sum(np.asarray(ev.velocity) ** 2, axis=2), axis=1)) / L
    np.testing.assert_allclose(ev.stationarity, stat, rtol=1e-13)
    # the hand-written discrete adjoint (reverse scan) equals reverse-mode autodiff of the scan
    auto = jax.grad(lambda th: depth.loss(problem, th))(theta)
    np.testing.assert_allclose(grad, auto, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind, activation, bias", sorted(_CONTINUOUS_DEFAULT))
def test_adjoints_agree(kind, activation, bias):
    """Backprop through the solver and the continuous backsolve adjoint give one gradient."""
    a = _gradient_check(kind, activation, bias, "continuous-checkpoint")
    b = _gradient_check(kind, activation, bias, "continuous-backsolve")
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-14)
    rel = np.linalg.norm(a["velocity"] - b["velocity"]) / np.linalg.norm(a["velocity"])
    assert rel <= 1e-6, rel


def test_velocity_is_independent_of_width_and_depth_scaling():
    """Copying every layer's particles (M -> 2M) leaves each particle's velocity unchanged."""
    problem = _random_problem("neuron", "tanh", True)
    theta = _random_theta(problem)
    depth = wflow.LayeredDepth()
    v1 = depth.evaluate(problem, theta).velocity
    v2 = depth.evaluate(problem, jnp.concatenate([theta, theta], axis=1)).velocity
    np.testing.assert_allclose(v2[:, :4], v1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v2[:, 4:], v1, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------
# depth times, weights and the continuous interpolant


@pytest.mark.parametrize("L", [1, 2, 7])
def test_times_and_weights(L):
    np.testing.assert_allclose(wflow.LayeredDepth().times(L), np.arange(L) / L)
    np.testing.assert_allclose(wflow.ContinuousDepth().times(L), (np.arange(L) + 0.5) / L)
    for depth in (wflow.LayeredDepth(), wflow.ContinuousDepth()):
        w = depth.weights(L, jnp.float64)
        assert w.shape == (L,)
        assert float(jnp.sum(w)) == pytest.approx(1.0, rel=1e-15)


def test_continuous_field_interpolates_the_slices(key):
    """F(z, t) equals F_l at node t_l, the average halfway, and is constant beyond the ends."""
    problem = _random_problem("neuron", "tanh", True)
    theta = _random_theta(problem, L=4)
    depth = wflow.ContinuousDepth()
    z = jax.random.normal(key, (5, 3))
    nodes = depth.times(4)
    slices = [problem.feature.field(z, theta[l]) for l in range(4)]
    for l in range(4):
        np.testing.assert_allclose(depth.field(problem, theta, nodes[l], z), slices[l], rtol=1e-13)
    mid = 0.5 * (nodes[1] + nodes[2])
    np.testing.assert_allclose(depth.field(problem, theta, mid, z),
                               0.5 * (slices[1] + slices[2]), rtol=1e-12)
    np.testing.assert_allclose(depth.field(problem, theta, 0.0, z), slices[0], rtol=1e-13)
    np.testing.assert_allclose(depth.field(problem, theta, 1.0, z), slices[3], rtol=1e-13)
    one = theta[:1]
    np.testing.assert_allclose(depth.field(problem, one, 0.7, z), slices[0], rtol=1e-13)


def test_layered_forward_is_the_finite_resnet():
    """z_{l+1} = z_l + (1/L)(1/M) sum_m f(z_l; theta_{l,m}), written out as a Python loop."""
    problem = _random_problem("neuron", "silu", True)
    theta = _random_theta(problem, L=5)
    z = problem.embed(problem.x)
    for l in range(5):
        f = jnp.mean(jnp.stack([jax.vmap(problem.feature, in_axes=(0, None))(z, th)
                                for th in theta[l]]), axis=0)
        z = z + f / 5
    np.testing.assert_allclose(wflow.LayeredDepth().predict(problem, theta), z[:, :2], rtol=1e-13)
    loss = 0.5 * np.mean(np.sum((np.asarray(z[:, :2]) - np.asarray(problem.y)) ** 2, axis=1))
    assert float(wflow.LayeredDepth().loss(problem, theta)) == pytest.approx(loss, rel=1e-13)


# ---------------------------------------------------------------------------------------
# layered depth -> continuous depth as L grows


def _smooth_in_t_measure(d=2, M=3, seed=0):
    """Particles theta_m(t) = a_m + b_m t (a smooth-in-t measure) and the exact field."""
    feat = wflow.make_feature("neuron", d)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    problem = wflow.Problem(feat, jax.random.normal(k1, (5, d)), jnp.zeros((5, 1)))
    a = jax.random.normal(k2, (M, feat.k))
    b = jax.random.normal(k3, (M, feat.k))
    return problem, a, b


def _reference_z1(problem, a, b):
    """z(1) of dz/dt = F(z, t) = (1/M) sum_m f(z; a_m + b_m t) to 1e-12 (diffrax, Tsit5)."""
    term = diffrax.ODETerm(lambda t, z, _: problem.feature.field(z, a + b * t))
    sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, None, problem.embed(problem.x),
                              stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
                              max_steps=100_000)
    return sol.ys[-1]


def _sampled(depth, a, b, L):
    """Theta (L, M, k) with layer/node l holding theta(t_l), t_l = depth.times(L)[l]."""
    return a[None] + b[None] * depth.times(L)[:, None, None]


def _depth_errors(depth, Ls):
    problem, a, b = _smooth_in_t_measure()
    z1 = _reference_z1(problem, a, b)
    x = problem.embed(problem.x)
    return np.array([float(jnp.linalg.norm(depth.final_state(problem, _sampled(depth, a, b, L), x)
                                           - z1)) for L in Ls])


def test_layered_converges_to_continuous_at_first_order():
    """The layered ResNet is forward Euler in depth: |z_L - z(1)| ~ C / L."""
    Ls = np.array([16, 32, 64, 128, 256])
    err = _depth_errors(wflow.LayeredDepth(), Ls)
    slope = np.polyfit(np.log(Ls), np.log(err), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1), (slope, err)


def test_continuous_depth_is_second_order_in_its_nodes():
    """Piecewise-linear interpolation between nodes (l + 1/2)/L: the error drops ~4x per doubling."""
    err = _depth_errors(wflow.ContinuousDepth(rtol=1e-12, atol=1e-12), [16, 32])
    assert err[0] / err[1] == pytest.approx(4.0, rel=0.1), err


@pytest.mark.slow
def test_continuous_depth_order_sweep():
    Ls = np.array([8, 16, 32, 64, 128])
    err = _depth_errors(wflow.ContinuousDepth(rtol=1e-12, atol=1e-12), Ls)
    slope = np.polyfit(np.log(Ls), np.log(err), 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.1), (slope, err)


# ---------------------------------------------------------------------------------------
# docs/theory.md, "Closed form: linear, d = 1", at the level of one evaluation


def _linear_problem(a=1.5, n=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 1))
    problem = wflow.Problem(wflow.make_feature("linear", 1), jnp.asarray(x), jnp.asarray(a * x))
    return problem, float(np.mean(x ** 2))


@pytest.mark.parametrize("L", [1, 3, pytest.param(6, marks=pytest.mark.slow)])
def test_continuous_linear_velocity_is_rigid_translation(L):
    """Linear, d = 1, y = a x: v = -X2 (e^A - a) e^A for every particle, E = (X2/2)(e^A - a)^2."""
    a = 1.5
    problem, X2 = _linear_problem(a)
    theta = 0.3 * jax.random.normal(jax.random.PRNGKey(L), (L, 4, 1))
    ev = _evaluate(wflow.ContinuousDepth(**TIGHT), problem, theta)
    A = float(jnp.mean(theta))
    np.testing.assert_allclose(ev.loss, X2 / 2 * (np.exp(A) - a) ** 2, rtol=1e-9)
    np.testing.assert_allclose(ev.velocity, -X2 * (np.exp(A) - a) * np.exp(A) * np.ones_like(theta),
                               rtol=1e-8)


def test_layered_linear_closed_form():
    """The finite ResNet: z_L = x P, P = prod_l (1 + m_l / L), v_{l,m} = -X2 (P - a) P / (1 + m_l/L)."""
    a, L = 1.5, 5
    problem, X2 = _linear_problem(a)
    theta = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (L, 4, 1))
    m = np.asarray(jnp.mean(theta, axis=(1, 2)))
    P = np.prod(1 + m / L)
    ev = wflow.LayeredDepth().evaluate(problem, theta)
    np.testing.assert_allclose(ev.loss, X2 / 2 * (P - a) ** 2, rtol=1e-13)
    expected = -X2 * (P - a) * P / (1 + m / L)
    np.testing.assert_allclose(ev.velocity, np.broadcast_to(expected[:, None, None], theta.shape),
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------
# grad_theta V anywhere: first_variation_gradient


VANISHING = 1e-9  # weight of the added particles: the agreement is O(weight) relative


@pytest.mark.parametrize("kind, depth_name", [
    ("neuron", "layers"), ("linear", "layers"),
    pytest.param("neuron", "continuous-checkpoint", marks=pytest.mark.slow),
    pytest.param("neuron", "continuous-backsolve", marks=pytest.mark.slow),
    pytest.param("linear", "continuous-checkpoint", marks=pytest.mark.slow),
])
def test_first_variation_gradient_is_the_gradient_of_a_vanishing_particle(kind, depth_name):
    """grad_theta V_l(q) = lim_{omega -> 0} (1 / (w_l omega)) dE/dq, where a particle of weight
    omega is added at q in slice l (jax.grad of the loss): the first variation by definition.

    The measure is weighted (non-uniform omega), and Q query points per slice are added at once;
    their mutual influence and their effect on the other particles are O(omega).
    """
    problem = _random_problem(kind, "tanh", True)
    depth = _make_depth(depth_name)
    theta = _random_theta(problem)
    L, M, k = theta.shape
    weights = jax.random.uniform(jax.random.PRNGKey(3), (L, M), minval=0.5, maxval=1.5)
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    Q = 3
    query = 1.3 * jax.random.normal(jax.random.PRNGKey(4), (L, Q, k))

    fvg = eqx.filter_jit(lambda q: depth.first_variation_gradient(problem, theta, q, weights)[1])
    G = fvg(query)
    assert G.shape == (L, Q, k)

    @eqx.filter_jit
    @jax.grad
    def dE_dq(q):
        th = jnp.concatenate([theta, q], axis=1)
        w = jnp.concatenate([weights, jnp.full((L, Q), VANISHING)], axis=1)
        return depth.loss(problem, th, w)

    dE = dE_dq(query)
    expected = dE / (depth.weights(L, dE.dtype)[:, None, None] * VANISHING)
    scale = float(jnp.max(jnp.abs(expected)))
    assert scale > 1e-3  # a non-trivial field
    np.testing.assert_allclose(np.asarray(G), np.asarray(expected), rtol=0, atol=1e-7 * scale)
    # the same query for every slice as (Q, k)
    G_shared, G_each = fvg(query[0]), fvg(jnp.broadcast_to(query[0], (L, Q, k)))
    np.testing.assert_allclose(np.asarray(G_shared), np.asarray(G_each), rtol=1e-14, atol=0)


def test_first_variation_gradient_is_the_particle_velocity():
    """At the particles themselves, -grad V equals evaluate's velocity -(1/(w_l omega)) dE/dtheta."""
    problem = _random_problem("neuron", "tanh", True)
    theta = _random_theta(problem)
    depth = wflow.LayeredDepth()
    ev = depth.evaluate(problem, theta)
    loss, G = depth.first_variation_gradient(problem, theta, theta)
    np.testing.assert_allclose(float(loss), float(ev.loss), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(-G), np.asarray(ev.velocity), rtol=0,
                               atol=1e-13 * float(jnp.max(jnp.abs(ev.velocity))))


def test_first_variation_gradient_rejects_bad_query_shapes():
    problem = _random_problem("neuron", "tanh", True)
    theta = _random_theta(problem)
    with pytest.raises(ValueError, match="query has shape"):
        wflow.LayeredDepth().first_variation_gradient(problem, theta, jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------------------
# docs/theory.md, "Degenerate start": the degenerate stationary point


@pytest.mark.parametrize("activation", wflow.ACTIVATIONS)
def test_point_mass_at_zero_has_zero_velocity_iff_sigma_vanishes_at_zero(activation):
    problem = _random_problem("neuron", activation, True)
    theta = wflow.init_particles("point", jax.random.PRNGKey(0), 3, 4, problem.feature.k,
                                 mean=0.0, dtype=jnp.float64)
    ev = wflow.LayeredDepth().evaluate(problem, theta)
    assert float(ev.loss) > 0
    if wflow.get_activation(activation).zero_at_zero:
        assert np.array_equal(np.asarray(ev.velocity), np.zeros(theta.shape))
        assert float(ev.stationarity) == 0.0
    else:  # sigma(0) != 0: dE/du = sigma(0) (.) is not zero, the point mass moves
        assert float(jnp.max(jnp.abs(ev.velocity))) > 1e-3


@pytest.mark.parametrize("adjoint", wflow.ADJOINTS)
def test_continuous_point_mass_at_zero_is_stationary(adjoint):
    problem = _random_problem("neuron", "tanh", True)
    theta = jnp.zeros((3, 4, problem.feature.k))  # shapes of the gradient cases: compiled once
    ev = _evaluate(_make_depth(f"continuous-{adjoint}"), problem, theta)
    assert float(ev.loss) > 0
    assert np.array_equal(np.asarray(ev.velocity), np.zeros(theta.shape))


# ---------------------------------------------------------------------------------------
# compilation, dtype, memory


def _counting(depth, problem):
    traces = []

    def evaluate(theta):
        traces.append(None)  # runs once per trace, not per call
        return depth.evaluate(problem, theta)

    return jax.jit(evaluate), traces


@pytest.mark.parametrize("depth_name", ["layers",
                                        pytest.param("continuous-checkpoint", marks=pytest.mark.slow)])
def test_jitted_evaluate_traces_once(depth_name):
    problem = _random_problem("neuron", "tanh", True)
    f, traces = _counting(_make_depth(depth_name), problem)
    a = f(_random_theta(problem, seed=3))
    b = f(_random_theta(problem, seed=4))
    jax.block_until_ready((a, b))
    assert len(traces) == 1
    assert float(a.loss) != float(b.loss)


@pytest.mark.parametrize("depth", [
    pytest.param(wflow.LayeredDepth(), id="layers"),
    pytest.param(wflow.ContinuousDepth(), id="continuous-checkpoint", marks=pytest.mark.slow),
    pytest.param(wflow.ContinuousDepth(adjoint="backsolve"), id="continuous-backsolve"),
])
def test_float32_in_float32_out(depth):
    """float32 data and particles give float32 loss, velocity and residual even under x64."""
    problem = _random_problem("neuron", "tanh", True).astype(jnp.float32)
    theta = _random_theta(problem, L=2, M=3).astype(jnp.float32)
    ev = _evaluate(depth, problem, theta)
    assert ev.velocity.dtype == jnp.float32
    assert ev.loss.dtype == jnp.float32
    assert ev.stationarity.dtype == jnp.float32
    assert depth.final_state(problem, theta, problem.embed(problem.x)).dtype == jnp.float32


def _backward_temp_bytes(N, L, M):
    feat = wflow.make_feature("neuron", 2)
    problem = wflow.Problem(feat, jnp.ones((N, 2), jnp.float32), jnp.ones((N, 1), jnp.float32))
    theta = jnp.ones((L, M, feat.k), jnp.float32)
    compiled = jax.jit(lambda th: wflow.LayeredDepth().loss_and_grad(problem, th)).lower(theta).compile()
    stats = compiled.memory_analysis()
    if stats is None or not hasattr(stats, "temp_size_in_bytes"):
        pytest.skip("memory_analysis is not available on this backend")
    return stats.temp_size_in_bytes


def test_layered_backward_does_not_store_every_layers_activations():
    """N = M = 512: the adjoint's temporaries are O(N M + N L d), not O(N L M).

    Going from L = 16 to L = 64 adds 48 layers; storing activations would add
    48 N M 4 bytes (50 MB). What may grow with L is the stored states z_l
    (N d 4 bytes per layer) and the per-layer gradient (M k 4 bytes): allow
    4x that, backend-independent (CPU and GPU schedule buffers differently).
    """
    N, M = 512, 512
    t16, t64 = _backward_temp_bytes(N, 16, M), _backward_temp_bytes(N, 64, M)
    per_layer_allowed = 4 * (N * 2 + M * 5) * 4
    print(f"temp L=16: {t16} B, L=64: {t64} B; N L M 4 at L=64 = {N * 64 * M * 4} B")
    assert t64 - t16 <= 48 * per_layer_allowed, (t16, t64)
    # The peak is a fixed handful of one-layer (N, M) buffers (CPU: ~2, GPU: ~4), whatever L is.
    assert t64 <= 8 * N * M * 4, t64


# --- the continuous-depth gradient from recorded steps (wflow/_rk_adjoint.py)

_RECORDED_CASES = {
    # name: (ContinuousDepth options, L, problem scale, weights and probes)
    "tsit5-nodes": ({}, 8, 1.0, False),
    "dopri5-tight": ({"solver": "dopri5", **TIGHT}, 3, 1.0, False),
    "heun": ({"solver": "heun", "rtol": 1e-3, "atol": 1e-3}, 4, 1.0, False),
    "bosh3-subdivide": ({"solver": "bosh3", "subdivide": 2}, 3, 2.0, True),
    "dopri8-weights": ({"solver": "dopri8"}, 2, 1.0, True),  # slow: 14 stages to compile
    "tsit5-one-slice": ({}, 1, 0.5, True),
}


def _recorded_steps(depth, problem, theta, x):
    """(accepted steps, record capacity) of the recorded solve of ``final_state``."""
    from wflow import _depth

    dyn, static = eqx.partition(problem.feature, eqx.is_inexact_array)
    solve = _depth._recorded_solve(depth, (static, problem.scale), x, (dyn, theta, None, None))
    return int(solve.forward()[2][1]), solve.cap


def _recorded_and_diffrax(depth, L, scale, weighted, seed=0):
    """Value and gradient of <c, z(1)> in (Theta, x, weights, probes) through the recorded
    reverse pass (``final_state``) and through diffrax's RecursiveCheckpointAdjoint."""
    p0 = _random_problem("neuron", "tanh", True, seed=seed)
    problem = wflow.Problem(p0.feature, p0.x, p0.y, scale=scale)
    theta = _random_theta(problem, L=L, M=5, seed=seed + 1)
    x = problem.embed(problem.x)
    keys = jax.random.split(jax.random.PRNGKey(seed + 2), 3)
    c = jax.random.normal(keys[0], x.shape)
    weights = jax.nn.softmax(jax.random.normal(keys[1], (L, 5)), axis=1) if weighted else None
    probes = 0.5 * jax.random.normal(keys[2], (L, 2, problem.feature.k)) if weighted else None
    n, cap = _recorded_steps(depth, problem, theta, x)
    out = {"steps": n, "capacity": cap}
    for name, solve in (("recorded", depth.final_state), ("diffrax", depth._diffrax_final_state)):
        def f(th, x, w, p, solve=solve):
            return jnp.sum(c * solve(problem, th, x, w, p))
        out[name] = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(theta, x, weights, probes)
    return out["recorded"], out["diffrax"], (out["steps"], out["capacity"])


@pytest.mark.parametrize("case, stages", [
    pytest.param(c, "loop", marks=pytest.mark.slow) if c.startswith("dopri8") else (c, "loop")
    for c in sorted(_RECORDED_CASES)] + [("tsit5-nodes", "unrolled"),
                                         ("bosh3-subdivide", "unrolled")])
def test_recorded_gradient_is_diffrax_backprop(case, stages, monkeypatch):
    """The reverse pass from recorded steps is the gradient diffrax's RecursiveCheckpointAdjoint
    computes, to round-off (float64), and the forward value is diffrax's to the bit: explicit
    solvers with and without FSAL, several steps per depth interval, a subdivided grid,
    weights and probes, alpha != 1 and a single slice. Both forms of the reverse pass: a
    step's stages as a loop (these small problems' own), and unrolled (the form of large ones:
    ``_rk_adjoint.LOOP_STAGES_BELOW``)."""
    from wflow import _rk_adjoint

    assert 6 * 3 * 5 < _rk_adjoint.LOOP_STAGES_BELOW  # N D M of these problems: the loop
    if stages == "unrolled":
        monkeypatch.setattr(_rk_adjoint, "LOOP_STAGES_BELOW", 0)
        jax.clear_caches()  # the loop form of the same shapes may be traced already
    options, L, scale, weighted = _RECORDED_CASES[case]
    (v_rec, g_rec), (v_dfx, g_dfx), (steps, cap) = _recorded_and_diffrax(
        wflow.ContinuousDepth(**options), L, scale, weighted)
    assert steps <= cap  # one segment: no step taken twice
    assert float(v_rec) == float(v_dfx)
    for a, b in zip(g_rec, g_dfx):
        if b is None:
            assert a is None
            continue
        assert float(jnp.max(jnp.abs(b))) > 0
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14 * float(jnp.max(jnp.abs(b))))


def test_a_solve_longer_than_its_record_is_taken_in_segments(monkeypatch):
    """A solve that accepts more steps than its record holds (here 2 steps, of 17 and 28) is
    taken in segments: the reverse pass steps each earlier segment again from the state kept at
    its start. Its gradient is diffrax's (RecursiveCheckpointAdjoint) to round-off with a start
    kept for every segment (two members under vmap, whose solves take different numbers of
    steps), and with the initial state kept only (every segment stepped again from t = 0).
    A failed solve (max_steps) gives NaN and a zero gradient, as diffrax's does."""
    from wflow import _rk_adjoint

    p0 = _random_problem("neuron", "tanh", True, seed=0)
    thetas = jnp.stack([_random_theta(p0, L=3, M=5, seed=1),
                        2 * _random_theta(p0, L=3, M=5, seed=7)])
    x = p0.embed(p0.x)
    c = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def value_and_grad(solve, vmapped=False):
        f = jax.value_and_grad(lambda th, x: jnp.sum(c * solve(p0, th, x)), argnums=(0, 1))
        return jax.jit(jax.vmap(f, in_axes=(0, None)) if vmapped else f)

    def assert_close(got, want):
        assert float(got[0]) == float(want[0])  # the forward is diffrax's solve, to the bit
        for a, b in zip(got[1], want[1]):
            assert float(jnp.max(jnp.abs(b))) > 0
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14 * float(jnp.max(jnp.abs(b))))

    depth = wflow.ContinuousDepth(solver="dopri5", **TIGHT)
    steps = [_recorded_steps(depth, p0, th, x) for th in thetas]
    assert all(4 < n <= cap for n, cap in steps) and steps[0][0] != steps[1][0], steps
    by_diffrax = value_and_grad(depth._diffrax_final_state)
    want = [by_diffrax(th, x) for th in thetas]
    assert_close(value_and_grad(depth.final_state)(thetas[0], x), want[0])
    monkeypatch.setattr(_rk_adjoint, "capacity", lambda *a: 2)
    v, g = value_and_grad(depth.final_state, vmapped=True)(thetas, x)
    for i in range(2):
        assert_close((v[i], (g[0][i], g[1][i])), want[i])
    monkeypatch.setattr(_rk_adjoint, "checkpoints", lambda *a: 1)
    assert_close(value_and_grad(depth.final_state)(thetas[0], x), want[0])
    monkeypatch.undo()
    failed = wflow.ContinuousDepth(max_steps=3, **TIGHT)
    (v_rec, g_rec), (v_dfx, g_dfx) = (
        value_and_grad(solve)(thetas[0], x)
        for solve in (failed.final_state, failed._diffrax_final_state))
    assert np.isnan(float(v_rec)) and np.isnan(float(v_dfx))
    for a, b in zip(g_rec, g_dfx):
        np.testing.assert_array_equal(a, b)


def test_a_continuous_gradient_traces_the_field_once_per_shape(monkeypatch):
    """The field of a continuous-depth solve is traced once per shape (``_depth._blend``
    through one ``jax.jit``), not at every stage of the solve, of the segments stepped again
    and of the recorded reverse pass; the value and the gradient are the same to the bit as
    with a trace per call."""
    from wflow import _depth

    p0 = _random_problem("neuron", "tanh", True, seed=3)
    theta = _random_theta(p0, L=4, M=5, seed=4)
    x = p0.embed(p0.x)
    depth = wflow.ContinuousDepth()

    def grad():
        f = lambda th, x: jnp.sum(depth.final_state(p0, th, x) ** 2)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(theta, x)

    calls = []
    field = _depth.slice_field
    monkeypatch.setattr(_depth, "slice_field", lambda *a: calls.append(1) or field(*a))
    jax.clear_caches()  # an earlier test may have traced the same shapes
    once = grad()
    # ``one`` reads one slice, ``both`` two: three traces of the field, once in the solve and
    # once in diffrax's check of its term (its own trace context)
    assert len(calls) == 6
    jax.clear_caches()
    calls.clear()
    monkeypatch.setattr(_depth, "_blend_once", _depth._blend_once.__wrapped__)  # not jitted
    every = grad()
    assert len(calls) > 2 * 6, len(calls)  # 30 with diffrax 0.7.2
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(every), strict=True):
        np.testing.assert_array_equal(a, b)
