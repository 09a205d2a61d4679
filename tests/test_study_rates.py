"""Rates you can trust: free-exponent fits, the reference's own error floor (``wflow.study``).

Checked against mathematics: exact power laws give their exponents back; the floor of
every reference kind is compared with the reference's true error, known in closed form on
docs/theory.md, "Closed form: linear, d = 1" (grid, continuous) or measured against a
reference 4x larger (particles).
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wflow._config import load_config
from wflow.study._fit import exponent_interval, fit_free, free_model, identified
from wflow.study._floor import reference_floor, shares_one_limit
from wflow.study._keys import resolve_limit
from wflow.study._limit import Block, Member, _particles, build_limit, grid_values, run_block
from wflow.study._metrics import Runs

LINEAR = """
seed = 0
[data]
kind = "teacher"
n = 16
dim = 1
teacher_width = 1
teacher_depth = 1
[model]
feature = "linear"
[init]
kind = "gaussian"
mean = 0.2
std = 0.5
[solver]
precision = "float64"
rtol = 1e-9
atol = 1e-11
[train]
dt = 0.25
[study]
L = [4]
M = [4]
seeds = 2
times = [0.0]
sampling = "shared"
reference = "continuous"
bootstrap = 20
"""


def setup_of(tmp_path, text, *overrides):
    p = tmp_path / "c.toml"
    p.write_text(text)
    config = load_config(str(p), list(overrides))
    return build_limit(config, resolve_limit(config))


# ----------------------------------------------------------------------------- free fits


def test_free_fit_returns_the_exponents_of_exact_power_laws():
    L = np.array([2, 4, 8, 16, 32], float)
    M = np.array([4, 16, 64, 256], float)
    LL, MM = np.meshgrid(L, M, indexing="ij")
    for p, q in ((1.0, 0.5), (1.5, 0.7), (0.6, 0.25)):
        err = 0.3 * LL ** -p + 2.0 * (LL * MM) ** -q
        f = fit_free(LL, MM, err)
        assert f.params == ("a", "p", "b", "q")
        np.testing.assert_allclose(f.value, [0.3, p, 2.0, q], rtol=1e-5)
        assert f.r2 > 1 - 1e-10 and f.n == err.size
        np.testing.assert_allclose(free_model(f.value, LL, MM), err, rtol=1e-6)
    # with a D sweep: a L^-p + b (L M)^-q + c D^-r
    D = np.array([2, 8, 32], float)
    LL, MM, DD = np.meshgrid(L, M, D, indexing="ij")
    err = 0.3 / LL + 2.0 / np.sqrt(LL * MM) + 0.5 / np.sqrt(DD)
    noisy = err * np.exp(0.01 * np.random.default_rng(0).normal(size=err.shape))
    f = fit_free(LL, MM, noisy, DD)
    np.testing.assert_allclose(f.value[1::2], [1.0, 0.5, 0.5], atol=0.05)


def test_free_fit_fits_only_what_the_sweep_identifies():
    L = np.array([4, 8, 16], float)
    use, note = identified(len(L), 1, None)  # one M: err ~ a L^-p only
    assert list(use) == [1, 1, -1, -1] and "one M" in note
    f = fit_free(L, np.full(3, 8.0), 0.7 * L ** -1.2, use=use)
    np.testing.assert_allclose(f.value[:2], [0.7, 1.2], rtol=1e-6)
    assert np.all(np.isnan(f.value[2:]))
    use, note = identified(1, 4, None)  # one L: the depth term is a constant
    assert list(use) == [1, 0, 1, 1] and "one L" in note
    M = np.array([4, 16, 64, 256], float)
    err = 0.01 + 3.0 * (8 * M) ** -0.5
    f = fit_free(np.full(4, 8.0), M, err, use=use)
    np.testing.assert_allclose(f.value[[0, 2, 3]], [0.01, 3.0, 0.5], rtol=1e-5)
    assert np.isnan(f.value[1])
    np.testing.assert_allclose(free_model(f.value, 8.0, M), err, rtol=1e-6)
    # too few points for the parameters: NaN, not a made-up fit
    assert np.all(np.isnan(fit_free(L[:2], np.full(2, 8.0), L[:2] ** -1.0).value))


def test_interval_adds_the_lack_of_fit_to_the_seed_noise():
    """``exponent_interval``: an exact power law has no residual error (its interval is the
    bootstrap's); a curve with a subleading term, seen identically by every seed (bootstrap
    width 0), gets an interval from its residuals that covers the exponents the curve's local
    slopes run through, and the Student quantile widens it when few points are left."""
    L = np.array([4, 8, 16, 32], float)
    exact = fit_free(L, np.full(4, 8.0), 0.7 * L ** -1.0, use=identified(4, 1, None)[0])
    assert exact.dof == 2 and exact.se[1] < 1e-6
    ci = exponent_interval(exact.value, exact.value - 0.01, exact.value + 0.02, exact.se,
                           exact.dof)
    np.testing.assert_allclose(ci[1], [0.99, 1.02], atol=1e-5)

    bent = 1 / L + 2 / L ** 2  # local slopes -1.33 (L = 4) .. -1.06 (L = 32)
    f = fit_free(L, np.full(4, 8.0), bent, use=identified(4, 1, None)[0])
    ci = exponent_interval(f.value, f.value, f.value, f.se, f.dof)[1]
    assert 1.06 < f.value[1] < 1.33 and f.se[1] > 0.005
    assert ci[0] < 1.06 and ci[1] > 1.33 - 0.1, ci  # the curve's own range of slopes
    half = lambda dof: np.diff(exponent_interval(f.value, f.value, f.value, f.se, dof)[1])  # noqa: E731
    assert half(1) > half(2) > half(30)  # Student's t: fewer points, wider


def test_free_fit_recovers_the_depth_exponent_on_the_linear_case(tmp_path):
    """docs/theory.md, "Closed form: linear, d = 1", shared sampling against the continuous
    reference: the depth error is a / L + O(1 / L^2). Over L = 8..64 the plain free fit of the
    output error gives p = 1.036 (the 1/L^2 term bends the curve alike for every seed, so the
    seed bootstrap alone gave [1.001, 1.072]); the fit with the first correction,
    a L^-p (1 + e / L), is preferred by AIC and gives p = 0.999, and the interval, which covers
    both, contains the theory's 1. The Sinkhorn divergence, a squared distance, is checked
    against 2."""
    from wflow.cli import main
    from wflow.study import read_study

    cfg = tmp_path / "lin.toml"
    text = LINEAR
    for old, new in (("L = [4]", "L = [8, 16, 32, 64]"), ("seeds = 2", "seeds = 4"),
                     ("times = [0.0]", "times = [0.0, 2.0]"), ("bootstrap = 20", "bootstrap = 100")):
        text = text.replace(old, new)
    cfg.write_text(text)
    out = tmp_path / "lin.h5"
    assert main(["study", "limit", str(cfg), "-o", str(out), "-q", "--no-plot"]) == 0
    data = read_study(str(out))
    names = [str(n) for n in data["fit/output/free@params"]]
    p = names.index("p")
    value, (lo, hi) = data["fit/output/free"][-1, p], data["fit/output/free_ci"][-1, p]
    assert lo <= 1.0 <= hi and hi - lo < 0.3, (value, lo, hi)
    assert data["fit/output/theory_inside"][-1, p] == 1
    assert 0.85 < value < 1.15
    assert abs(data["fit/output/free_p_corrected"][-1] - 1.0) < 0.01
    assert data["fit/sinkhorn/free@theory"][p] == 2.0
    assert data["fit/sinkhorn/theory_inside"][-1, p] == 1


# ----------------------------------------------------------------------------- floors


def _closed_form_A(X2, a, s, lam=0.0, n=4000):
    """docs/theory.md, "Closed form: linear, d = 1": every particle moves by -g(s) - lam theta,
    g = X2 (e^A - a) e^A the same at every theta, so the mean A obeys
    dA/ds = -X2 (e^A - a) e^A - lam A (classical RK4, error far below the checks)."""
    rhs = lambda A: -X2 * (math.exp(A) - a) * math.exp(A) - lam * A
    A, h = 0.0, s / n
    for _ in range(n):
        k1 = rhs(A)
        k2 = rhs(A + h / 2 * k1)
        k3 = rhs(A + h / 2 * k2)
        k4 = rhs(A + h * k3)
        A += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return A


def test_continuous_floor_is_the_true_ode_error_on_the_linear_case(tmp_path):
    """One slice (no depth nodes to clip the steps) and loose tolerances: the reference
    z(1; x) = x e^{m}, m the particles' mean, is off by the ODE solver's error; the floor
    (the same run at 10x tighter tolerances) is within 2x of it."""
    setup = setup_of(tmp_path, LINEAR, "solver.rtol=1e-4", "solver.atol=1e-4", "init.mean=1.5",
                     "study.L=[1]", "study.M=[4, 8]")
    floor = reference_floor(setup, None, jax.random.PRNGKey(0))
    member = Member((0, 1, 0), 1, 8, 1, 0)  # the run the floor redoes: largest shape, rep 0
    m = float(_particles(setup, member, False)[0, :, 0].mean())
    ref = run_block(setup, Block(1, 8, 1, (member,), 1), setup.continuous, jax.random.PRNGKey(0))
    x = setup.x[:, 0]
    true = math.sqrt(np.mean((ref.prediction[0, 0, :, 0] - x * math.exp(m)) ** 2))
    assert true > 1e-6  # loose enough to see
    assert 0.5 * true <= floor["output"][0] <= 2.0 * true, (floor["output"], true)
    np.testing.assert_allclose(floor["hidden"], floor["output"], rtol=1e-12)  # d = 1: z = g


GRID = LINEAR.replace("""L = [4]
M = [4]
seeds = 2
times = [0.0]
sampling = "shared"
reference = "continuous"
""", """L = [4]
M = [4]
seeds = 1
times = [0.0, 0.5]
reference = "grid"
reference_L = 1
""").replace("bootstrap = 20\n", """bootstrap = 20
[study.grid]
cells = 32
bounds = [-3.0, 3.0]
scheme = "upwind"
""").replace("mean = 0.2", "mean = 0.0").replace("dt = 0.25", "dt = 0.25\nmethod = \"ssprk3\"\nl2 = 0.5")


@pytest.mark.slow  # two grid compilations: about a minute on 2 shared cores
def test_grid_floor_is_the_true_grid_error_on_the_linear_case(tmp_path):
    """The grid reference of docs/theory.md, "Closed form: linear, d = 1", with l2 = 0.5: the
    velocity -g(s) - lam theta is not constant in theta, so the upwind scheme moves the mean
    with an O(h) error (the flux at a face uses the velocity there, h/2 away from the cell
    centre). Its true error (against the closed form) and the floor (half the cells,
    Richardson with order 1) agree within 2x."""
    setup = setup_of(tmp_path, GRID)
    cells = 32
    block = Block(1, cells, 1, (Member((-1, -1, -1), 1, cells, 1, 0),), 1, reference=True)
    ref, _ = grid_values(setup, block, jax.random.PRNGKey(0))
    floor = reference_floor(setup, ref, jax.random.PRNGKey(0))
    x, y = setup.x[:, 0], setup.y[:, 0]
    X2, a = float(np.mean(x * x)), float(np.sum(x * y) / np.sum(x * x))
    A = _closed_form_A(X2, a, 0.5, lam=0.5)
    true = math.sqrt(np.mean((ref.prediction[0, 1, :, 0] - x * math.exp(A)) ** 2))
    assert true > 1e-4
    assert 0.5 * true <= floor["output"][1] <= 2.0 * true, (floor["output"], true)


TEACHER = """
seed = 0
[data]
kind = "teacher"
n = 16
dim = 2
[solver]
precision = "float64"
[train]
dt = 0.25
[study]
L = [2]
M = [8]
seeds = 12
times = [0.0, 0.5]
reference = "particles"
reference_L = 2
reference_M = 32
reference_depth = "layers"
"""


@pytest.mark.parametrize("halves", [False, True], ids=["repetitions", "halves"])
def test_particles_floor_against_a_reference_4x_larger(tmp_path, halves):
    """The floor of a "particles" reference of M_r particles against its true error: its
    distance to a reference of 4 M_r particles, divided by sqrt(1 + 1/4) (that one's own
    error), RMS over the repetitions: within 2x. Both estimates: from the repetitions' own
    references (d / sqrt(2), no extra run: chosen here, the repetitions share one limit) and
    from two trained halves of each (d / 2)."""
    setup = setup_of(tmp_path, TEACHER)
    big = setup_of(tmp_path, TEACHER, "study.reference_M=128")
    S = setup.study["seeds"]
    assert shares_one_limit(setup)

    def reference(s):
        Lr, Mr, Dr = s.reference_shape()
        block = Block(Lr, Mr, Dr, tuple(Member((-1, -1, -1), Lr, Mr, Dr, r) for r in range(S)),
                      S, reference=True)
        return run_block(s, block, s.reference_depth(), jax.random.PRNGKey(1))

    ref, ref_big = reference(setup), reference(big)
    floor = reference_floor(setup, ref, jax.random.PRNGKey(0), halves=halves)
    dims = (setup.reference_shape()[2],) * S
    for name in ("output", "loss"):
        from wflow.study import STUDY_METRICS

        e = STUDY_METRICS[name].compute(Runs(*ref, dims), Runs(*ref_big, dims))
        true = np.sqrt(np.mean(e * e, axis=0)) / math.sqrt(1.25)
        assert np.all(0.5 * true <= floor[name]) and np.all(floor[name] <= 2.0 * true), (
            name, floor[name], true)


def test_particles_floor_uses_trained_halves_unless_the_repetitions_share_one_limit(tmp_path):
    """Random maps per repetition make each repetition's limit its own, and with fewer than 4
    repetitions their references are too few draws: then the floor trains two halves."""
    assert shares_one_limit(setup_of(tmp_path, TEACHER))
    assert shares_one_limit(setup_of(tmp_path, TEACHER, 'data.kind="gaussian"'))
    assert not shares_one_limit(setup_of(tmp_path, TEACHER, 'data.kind="gaussian"',
                                         'model.embedding="random"'))
    assert not shares_one_limit(setup_of(tmp_path, TEACHER, "study.seeds=3"))


# ----------------------------------------------------------------------------- coupling


def _coupled_shifts(m0, X2, a, dt, n):
    """docs/theory.md, "Closed form: linear, d = 1", the two coupled flows by explicit Euler in s.

    Layered (L layers, layer means m_l): z(1) = x P, P = prod_l (1 + m_l / L), so every
    particle of layer l moves by v_l = -X2 (P - a) P / (1 + m_l / L) (E = X2 (P - a)^2 / 2,
    dE/dtheta_{l,m} = v_l / (L M)). Its twin, moved by the continuous reference's field:
    z(1) = x e^A with A = (1/L) sum_l m_l^c (the hat functions' weights are 1/L), the same
    velocity -X2 (e^A - a) e^A at every theta and depth. Returns the shifts
    Delta_l = theta_{l,m}(s) - theta_{l,m}(0) of both, (L,) each.
    """
    L = len(m0)
    m, mc = np.array(m0, float), np.array(m0, float)
    for _ in range(n):
        P = np.prod(1.0 + m / L)
        v = -X2 * (P - a) * P / (1.0 + m / L)
        A = mc.mean()
        vc = -X2 * (math.exp(A) - a) * math.exp(A)
        m, mc = m + dt * v, mc + dt * vc
    return m - np.asarray(m0), mc - np.asarray(m0)


@pytest.mark.parametrize("sampling", ["iid"])  # "shared" is the special case m_l = m
def test_coupling_equals_the_closed_form_of_the_coupled_linear_flows(tmp_path, sampling):
    """Linear d = 1: every particle of a layer moves by the same shift, so a particle and its
    twin differ by the difference of the two flows' shifts, Delta_l - Delta^c, and the
    coupling error is sqrt(mean_l (Delta_l - Delta^c)^2) whatever the draws (the draws enter
    through the layer means only)."""
    from wflow.study._limit import block_errors

    setup = setup_of(tmp_path, LINEAR, "study.metrics=[\"coupling\", \"output\"]",
                     "study.times=[0.0, 0.5, 1.0]", 'train.method="euler"',
                     f'study.sampling="{sampling}"', "study.L=[5]", "study.M=[3]", "init.mean=0.4")
    members = tuple(Member((0, 0, 0), 5, 3, 1, r) for r in range(2))
    block = Block(5, 3, 1, members, 2)
    key = jax.random.PRNGKey(0)
    run = run_block(setup, block, setup.depth, key)
    ref = run_block(setup, block, setup.continuous, key)
    e = block_errors(setup, block, run, ref)["coupling"]  # (2 members, 3 times)
    x, y = setup.x[:, 0], setup.y[:, 0]
    X2, a = float(np.mean(x * x)), float(np.sum(x * y) / np.sum(x * x))
    for r, member in enumerate(members):
        m0 = _particles(setup, member, False)[:, :, 0].mean(axis=1)
        for t, n in enumerate((0, 2, 4)):  # s = 0, 0.5, 1 with dt = 0.25
            d, dc = _coupled_shifts(m0, X2, a, 0.25, n)
            expected = math.sqrt(np.mean((d - dc) ** 2))
            assert abs(e[r, t] - expected) <= 1e-7 * max(expected, 1e-3), (r, t, e[r, t], expected)
    assert np.all(e[:, 0] == 0) and np.all(e[:, 1:] > 1e-4)  # twins start together, then part


# ----------------------------------------------------------------------------- sinkhorn


def test_sinkhorn_is_zero_for_identical_measures_and_positive_otherwise():
    from wflow.study import STUDY_METRICS

    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 1, 3, 5, 2))
    w = np.full((2, 1, 3, 5), 0.2)
    r = Runs(None, None, None, (2, 2), particles=p, weights=w, settings={"sinkhorn_epsilon": 0.1})
    np.testing.assert_array_equal(STUDY_METRICS["sinkhorn"].compute(r, r), 0.0)
    # the same measure written with its points in another order and a zero-weight point more
    perm = rng.permutation(5)
    q = np.concatenate([p[..., perm, :], rng.normal(size=(2, 1, 3, 1, 2))], axis=3)
    wq = np.concatenate([w, np.zeros((2, 1, 3, 1))], axis=3)
    other = r._replace(particles=q, weights=wq)
    np.testing.assert_allclose(STUDY_METRICS["sinkhorn"].compute(r, other), 0.0, atol=1e-8)
    moved = r._replace(particles=p + 0.5)
    assert np.all(STUDY_METRICS["sinkhorn"].compute(r, moved) > 0.1)


def test_sinkhorn_tends_to_exact_optimal_transport_for_small_epsilon():
    """S_eps -> W_2^2 as eps -> 0: against ott-jax's exact univariate solver (d = 1, unequal
    sizes and weights: at first order in eps) and the exact assignment (d = 2, equal sizes and
    weights, a unique optimal permutation: exponentially fast once eps is below its gaps;
    scipy)."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import univariate
    from scipy.optimize import linear_sum_assignment

    from wflow.study._metrics.sinkhorn import divergence

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1, 7, 1)), 0.5 + 1.5 * rng.normal(size=(1, 5, 1))
    a, b = rng.uniform(0.5, 1.5, size=(1, 7)), rng.uniform(0.5, 1.5, size=(1, 5))
    a, b = a / a.sum(), b / b.sum()
    prob = linear_problem.LinearProblem(pointcloud.PointCloud(jnp.asarray(x[0]), jnp.asarray(y[0])),
                                        jnp.asarray(a[0]), jnp.asarray(b[0]))
    exact = float(univariate.quantile_solver(prob).ot_costs[0])
    # unequal weights split mass: the optimal plan is not a permutation and the entropic bias
    # is first order in eps; observed order by log-log regression over eps
    eps = np.array([2e-3, 1e-3, 5e-4, 2.5e-4])
    gap = np.array([exact - divergence(x, a, y, b, e) for e in eps])
    assert np.all(gap > 0)
    order = np.polyfit(np.log(eps), np.log(gap), 1)[0]
    assert abs(order - 1.0) < 0.15, (order, gap)
    assert gap[-1] < 2e-4 * exact
    x, y = rng.normal(size=(2, 6, 2)), rng.normal(size=(2, 6, 2)) + 0.3
    u = np.full((2, 6), 1 / 6)
    C = np.sum((x[:, :, None] - y[:, None]) ** 2, axis=-1)
    w2 = np.mean([C[l][linear_sum_assignment(C[l])].mean() for l in range(2)])
    np.testing.assert_allclose(divergence(x, u, y, u, 3e-3), w2, rtol=1e-5)



def test_sinkhorn_solves_each_slice_once_per_point_counts():
    """The metric solves slice by slice: one compiled program per pair of point counts (M, M')
    whatever the number of slices L, each slice's self term OT_eps(mu, mu) computed once (a
    reference slice that several slices or runs compare with is not solved again), and the
    value is ott-jax's own ``sinkhorn_divergence`` averaged over slices (its tolerance 1e-7 on
    the marginals: agreement to 1e-6 relative)."""
    from ott.geometry import pointcloud
    from ott.tools.sinkhorn_divergence import sinkhorn_divergence

    from wflow.study._metrics import sinkhorn

    rng = np.random.default_rng(2)
    M, Mr, eps = 9, 13, 0.3
    ref = rng.normal(size=(3, Mr, 2))
    wr = rng.uniform(0.5, 1.5, size=(3, Mr))
    ott = jax.jit(lambda x, y, a, b: sinkhorn_divergence(
        pointcloud.PointCloud, x, y, epsilon=eps, a=a, b=b,
        solve_kwargs={"threshold": 1e-7, "max_iterations": 20000})[0])
    sinkhorn._SELF.clear()
    cross, self_ = sinkhorn._solvers()
    compiled = cross._cache_size(), self_._cache_size()
    for L in (3, 5):
        jr = np.minimum(((np.arange(L) + 0.5) * 3 / L).astype(int), 2)  # the metric's j(l)
        x = rng.normal(size=(L, M, 2)) + 0.2
        a = np.full((L, M), 1.0)
        got = sinkhorn.divergence(x, a, ref[jr], wr[jr], eps)
        want = np.mean([float(ott(x[l], ref[jr[l]], a[l] / a[l].sum(), wr[jr[l]] / wr[jr[l]].sum()))
                        for l in range(L)])
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # one new program per solve (cross: M x Mr; self: M and Mr), not one per L
    assert cross._cache_size() - compiled[0] == 1
    assert self_._cache_size() - compiled[1] == 2
    # self terms: the 3 + 5 run slices and the reference's 3 distinct slices, each once
    assert len(sinkhorn._SELF) == 3 + 5 + 3


COUPLING_TEACHER = """
seed = 0
[data]
kind = "teacher"
n = 64
dim = 2
[init]
kind = "gaussian"
std = 1.0
[solver]
depth = "layers"
precision = "float64"
[train]
dt = 0.25
method = "euler"
[study]
L = [4]
M = [16, 64, 256]
seeds = 4
times = [0.0, 2.0]
metrics = ["output", "coupling"]
sampling = "iid"
reference = "particles"
reference_M = 1024
reference_L = 4
reference_depth = "layers"
bootstrap = 50
"""


def test_coupling_falls_as_inverse_sqrt_width_on_the_teacher_problem(tmp_path, capsys):
    """Propagation of chaos at fixed L with i.i.d. layers: each finite particle stays within
    O(M^-1/2) of its mean-field twin (the reference's own sampling adds (M / M_ref)^1/2 in
    quadrature, a slope change below 0.03 here). The log-log slope against M is -1/2 +- 0.1,
    and the twins start together (0 at s = 0)."""
    from wflow.cli import main
    from wflow.study import read_study

    cfg = tmp_path / "t.toml"
    cfg.write_text(COUPLING_TEACHER)
    out = tmp_path / "t.h5"
    assert main(["study", "limit", str(cfg), "-o", str(out), "-q", "--no-plot"]) == 0
    data = read_study(str(out))
    np.testing.assert_array_equal(data["errors/coupling"][..., 0], 0.0)
    s = data["fit/coupling/slope_M"][1, 0]
    assert abs(s + 0.5) <= 0.1, s


# ----------------------------------------------------------------------------- bundled studies


def _bundled_study(tmp_path, name):
    from wflow.cli import main
    from wflow.study import read_study

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / f"{name}.h5"
    assert main(["study", "limit", os.path.join(root, "configs", f"{name}.toml"), "-o", str(out),
                 "-q", "--no-plot"]) == 0
    return read_study(str(out))


def _exponent(data, metric, name):
    i = [str(n) for n in data[f"fit/{metric}/free@params"]].index(name)
    lo, hi = data[f"fit/{metric}/free_ci"][-1, i]
    return data[f"fit/{metric}/free"][-1, i], lo, hi


@pytest.mark.slow
@pytest.mark.parametrize("name, metric, param, theory", [
    ("limit_teacher_depth", "output", "p", 1.0),   # shared sampling, continuous reference
    ("limit_teacher", "output", "q", 0.5),         # i.i.d. layers, particles reference
    ("limit_icl", "output", "p", 1.0),             # attention heads, continuous reference
    ("limit_icl_heads", "output", "q", 0.5),       # attention heads, i.i.d., particles reference
])
def test_bundled_studies_recover_the_theorys_exponent(tmp_path, name, metric, param, theory):
    """The free fit of each bundled rate study holds the theory's exponent inside its 95%
    interval (seeds and lack of fit), and the interval is informative: it excludes the
    exponents 1/2 away (p = 1/2 and 3/2; q = 0 and 1)."""
    data = _bundled_study(tmp_path, name)
    value, lo, hi = _exponent(data, metric, param)
    assert lo <= theory <= hi, (name, value, lo, hi)
    assert theory - 0.5 < lo and hi < theory + 0.5, (name, value, lo, hi)
    if name.startswith("limit_icl"):  # and the log-log slope itself: -1 in L, -1/2 in M
        slope = data[f"fit/{metric}/slope_{'L' if param == 'p' else 'M'}"][-1].ravel()[0]
        assert abs(slope + theory) <= 0.15, (name, slope)
