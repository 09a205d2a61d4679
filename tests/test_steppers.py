"""The time steppers of the registry ``wflow.STEPPERS``, each against its declared attributes.

Every test is parametrized over the registry, so a stepper added there (one file,
one registry line) is tested with no edit here:

* the Shu-Osher tableau is a consistent SSP method: convex rows, stage times
  ending at 1, ``positivity_limit`` = its SSP coefficient min alpha / beta;
* its stability polynomial R(z) (the tableau applied to u' = z u) matches
  exp(z) to ``order``, is absolutely monotonic on [-C, 0] (the linear
  consequence of the SSP coefficient C), and ``stability_limit`` is the first
  x > 0 with |R(-x)| = 1: on the scalar test equation the stepper is stable
  just below it and unstable just above;
* the observed order by log-log regression on the closed-form linear d = 1
  flow (docs/theory.md, "Closed form: linear, d = 1"), with a
  time-dependent L2 weight so that the stage times matter;
* on the grid (``positivity_limit`` > 0): mass to round-off and rho >= 0 at the
  largest substep the SSP coefficient allows, which is used (the substep count)
  and sharp (1.5 C gives negative densities);
* noise: a ``stochastic`` stepper adds the step's increment dW exactly once;
  the others are refused with temperature > 0;
* config and preflight read the attributes (choices, ``step_copies``);
* and explicitly for ssprk43: its polynomial, observed order 3, stability limit and C = 2.

Float64 (tests/conftest.py).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import Polynomial
from scipy.integrate import solve_ivp

import wflow
from wflow import _preflight, _steppers

STEPPERS = list(wflow.STEPPERS)
GRID_STEPPERS = [name for name, s in wflow.STEPPERS.items() if s.positivity_limit > 0]


def stability_polynomial(stepper) -> Polynomial:
    """R(z): one step of the tableau on u' = lambda u with z = h lambda, as a polynomial in z."""
    z = Polynomial([0.0, 1.0])
    R, _ = stepper.apply(lambda u, j, dt: (u + dt * z * u, None), Polynomial([1.0]), 1.0)
    return R


def test_registry_and_methods():
    assert wflow.METHODS == (*wflow.STEPPERS, "adaptive")
    assert isinstance(_steppers.get_method("adaptive"), _steppers.AbstractMethod)
    assert not isinstance(_steppers.get_method("adaptive"), wflow.AbstractStepper)
    with pytest.raises(ValueError, match="train.method = 'rk4': allowed are euler, heun"):
        _steppers.get_method("rk4")
    for name, stepper in wflow.STEPPERS.items():
        assert isinstance(stepper, wflow.AbstractStepper) and stepper.name == name


# ---------------------------------------------------------------------------------------
# the tableau and the scalar test equation


@pytest.mark.parametrize("name", STEPPERS)
def test_tableau_is_a_consistent_ssp_method(name):
    s = wflow.STEPPERS[name]
    assert len(s.alpha) == len(s.beta) == s.stages >= 1
    for i, (a_row, b_row) in enumerate(zip(s.alpha, s.beta)):
        assert len(a_row) == len(b_row) == i + 1
        assert min(a_row) >= 0 and min(b_row) >= 0
        assert math.isclose(sum(a_row), 1.0, rel_tol=1e-15)  # convex combinations
        assert all(a > 0 for a, b in zip(a_row, b_row) if b > 0)
    times = s.stage_times
    assert times[0] == 0.0 and times[-1] == pytest.approx(1.0, rel=1e-15)
    assert all(0.0 <= c <= 1.0 + 1e-15 for c in times)
    assert s.positivity_limit == pytest.approx(s.ssp_coefficient, rel=1e-12)
    # u_0, the stage value, its velocity and the Euler step at least (the preflight's c_method)
    assert isinstance(s.step_copies, int) and s.step_copies >= 4


@pytest.mark.parametrize("name", STEPPERS)
def test_stability_polynomial_has_the_declared_order_and_ssp_coefficient(name):
    """R(z) = sum_{k <= p} z^k / k! + O(z^{p+1}) (the linear order conditions), and every
    derivative of R is >= 0 on [-C, 0] (R absolutely monotonic there: the threshold factor
    of R bounds the SSP coefficient C from above)."""
    s = wflow.STEPPERS[name]
    R = stability_polynomial(s)
    assert R.degree() <= s.stages
    coef = np.append(R.coef, np.zeros(s.order + 1))
    np.testing.assert_allclose(coef[:s.order + 1],
                               [1 / math.factorial(k) for k in range(s.order + 1)], rtol=1e-14)
    x = np.linspace(-s.positivity_limit, 0.0, 2001)
    for k in range(R.degree() + 1):
        derivative = R.deriv(k)(x)
        assert np.all(derivative >= -1e-13), (k, x[np.argmin(derivative)])


@pytest.mark.parametrize("name", STEPPERS)
def test_stability_limit_on_the_scalar_test_equation(name):
    """u' = -u: h = (1 -+ 1e-3) stability_limit decays / grows over 2000 steps; and the
    declared limit is the first root of |R(-x)| = 1 (to 1e-4, rounded down)."""
    s = wflow.STEPPERS[name]
    limit = s.stability_limit

    def run(h, n=2000):
        u = 1.0
        for _ in range(n):
            u, _ = s.apply(lambda v, j, dt: (v - dt * v, None), u, h)
        return abs(u)

    assert run(limit * (1 - 1e-3)) < 1.0
    assert run(limit * (1 + 1e-3)) > 10.0  # |R| - 1 ~ 1e-3: growth by e^2 or more
    R = stability_polynomial(s)
    x = np.linspace(0.0, limit, 20001)
    assert np.all(np.abs(R(-x)) <= 1 + 1e-12)
    roots = [(-r).real for r in (R ** 2 - 1).roots() if abs(r.imag) < 1e-9 and r.real < -1e-9]
    exact = min(roots)
    assert exact * (1 - 1e-4) <= limit <= exact * (1 + 1e-12), (limit, exact)  # not above it


# ---------------------------------------------------------------------------------------
# observed order on the closed form: linear features, d = 1, layered depth

A_TARGET, L_CF, M_CF, S_CF = 1.5, 3, 4, 1.0
L2, L2_DECAY = 0.4, 0.5  # lambda(s) = L2 exp(-s / L2_DECAY): time-dependent


def _closed_form_problem(n=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 1))
    problem = wflow.Problem(wflow.make_feature("linear", 1), jnp.asarray(x),
                            jnp.asarray(A_TARGET * x))
    return problem, float(np.mean(x ** 2))


def _closed_form_theta(theta0, X2, S):
    """theta(S) of the layered flow with lambda(s) (tests/test_grid.py, _exact_mean).

    For f(z; theta) = theta z, z(1) = P x with P = prod_l (1 + m_l / L), m_l the layer
    means; every particle of layer l has velocity -X2 (P - a) P / (1 + m_l / L) - lambda theta.
    So the means solve an L-dimensional ODE (scipy, rtol 1e-13) and the deviations from them
    decay as exp(-int_0^S lambda).
    """
    theta0 = np.asarray(theta0)
    m0 = theta0.mean(axis=(1, 2))

    def rhs(s, m):
        P = np.prod(1 + m / L_CF)
        return -X2 * (P - A_TARGET) * P / (1 + m / L_CF) - L2 * np.exp(-s / L2_DECAY) * m

    sol = solve_ivp(rhs, (0.0, S), m0, method="DOP853", rtol=1e-13, atol=1e-15)
    decay = math.exp(-L2 * L2_DECAY * (1 - math.exp(-S / L2_DECAY)))
    return sol.y[:, -1][:, None, None] + (theta0 - m0[:, None, None]) * decay


def _closed_form_errors(name, steps):
    """max |theta_h(S) - theta(S)| of ``name`` with S / n steps, n in ``steps``."""
    problem, X2 = _closed_form_problem()
    theta0 = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (L_CF, M_CF, 1), jnp.float64)
    exact = _closed_form_theta(theta0, X2, S_CF)
    reg = wflow.Regularization(l2=L2, l2_schedule="exponential", l2_decay=L2_DECAY)
    errors = []
    for n in steps:
        res = wflow.integrate(problem, wflow.LayeredDepth(),
                              wflow.Schedule(time=S_CF, dt=S_CF / n, method=name,
                                             record_every=1000),
                              theta0=theta0, regularization=reg)
        assert res.status == "complete"
        errors.append(float(np.max(np.abs(np.asarray(res.state.measure) - exact))))
    assert np.max(np.abs(exact - np.asarray(theta0))) > 0.3  # the flow moved
    return np.array(errors)


@pytest.mark.parametrize("name", STEPPERS)
def test_order_on_the_closed_form(name):
    """max |theta_h(S) - theta(S)| ~ h^order: fitted log-log slope within 0.15 (order 1) or
    0.2 of the declared order, over 8, 16, 32 steps."""
    s = wflow.STEPPERS[name]
    steps = np.array([8, 16, 32])
    errors = _closed_form_errors(name, steps)
    slope = np.polyfit(np.log(S_CF / steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(s.order, abs=0.15 if s.order == 1 else 0.2), (slope, errors)
    assert max(errors) < 0.05  # in the asymptotic range


# ---------------------------------------------------------------------------------------
# the grid: positivity at the SSP limit


def _grid_march(name, S=0.5, cells=60):
    """Upwind at cfl = 1 (the forward-Euler positivity limit) on the linear d = 1 problem: a
    uniform velocity (the layered closed form translates rigidly) carries a top-hat, whose
    left edge rho_{j-1} = 0 < rho_j is where an Euler step beyond the limit goes negative."""
    problem, X2 = _closed_form_problem(n=32)
    problem = wflow.Problem(problem.feature, problem.x, 3.0 * problem.x)  # moves right
    grid = wflow.Grid.box(cells, [-1.5, 1.5], 1)
    fv = wflow.FiniteVolume("upwind", None, cfl=1.0)
    density = wflow.init_density("uniform", grid, 2, low=-1.0, high=-0.4, dtype=jnp.float64,
                                 fv=fv)
    flow = wflow.make_flow(problem, wflow.LayeredDepth(), density)
    new, taken, rejected, ok = jax.jit(lambda d: flow.march(name, d, 0.0, S))(density)
    assert bool(ok)
    shift = float(np.asarray(new.rho[0]) @ grid.axes[0] - np.asarray(density.rho[0])
                  @ grid.axes[0]) * grid.volume
    return density, new, int(taken), int(rejected), shift / grid.widths[0]


@pytest.mark.parametrize("name", GRID_STEPPERS)
def test_grid_mass_and_positivity_at_the_ssp_limit(name):
    """Substeps dt = C / R (C = positivity_limit): mass to 1e-14 and rho >= 0 after
    every substep; the substeps really are C times the Euler ones (the density moves about
    C cells per substep)."""
    C = wflow.STEPPERS[name].positivity_limit
    density, new, taken, rejected, cells_moved = _grid_march(name)
    np.testing.assert_allclose(np.asarray(new.mass()), 1.0, rtol=0, atol=1e-14)
    assert float(jnp.min(new.rho)) >= 0.0
    assert cells_moved > 5
    # cells per accepted substep: C (dt R = C with R = v / h) up to the velocity's change
    assert 0.8 * C <= cells_moved / taken <= 1.02 * C, (cells_moved, taken, rejected)


@pytest.mark.parametrize("name", GRID_STEPPERS)
def test_grid_positivity_limit_is_sharp(name, monkeypatch):
    """The same run claiming 1.5 C: negative densities (the declared C is not needlessly
    small: for the shipped tableaus it is also the threshold factor of R)."""
    stepper = wflow.STEPPERS[name]

    class Overclaimed(type(stepper)):
        positivity_limit = 1.5 * stepper.positivity_limit

    monkeypatch.setitem(_steppers.STEPPERS, name + "-overclaimed", Overclaimed())
    _, new, _, _, _ = _grid_march(name + "-overclaimed")
    assert float(jnp.min(new.rho)) < 0.0


# ---------------------------------------------------------------------------------------
# noise


@pytest.mark.parametrize("name", STEPPERS)
def test_noise_enters_once_or_is_refused(name):
    """Zero drift, the Euler step u + dW: a stochastic stepper's step is u + dW exactly (the
    weights of the Euler terms sum to 1) and every stage it evaluates is at c = 0 or 1, where
    the Brownian path is known; a deterministic one is refused with temperature > 0."""
    s = wflow.STEPPERS[name]
    dw = jnp.asarray(np.random.default_rng(0).normal(size=5))
    u0 = jnp.arange(5.0)
    new, _ = s.apply(lambda u, j, dt: (u + dw, None), u0, 0.1)
    problem, _ = _closed_form_problem()
    theta0 = jnp.zeros((2, 3, 1))
    schedule = wflow.Schedule(time=0.1, dt=0.05, method=name)
    hot = wflow.Regularization(temperature=0.01)
    if s.stochastic:
        np.testing.assert_allclose(np.asarray(new), np.asarray(u0 + dw), rtol=0, atol=1e-15)
        assert set(s.stage_times[:-1]) <= {0.0, 1.0}
        res = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0,
                              regularization=hot)
        assert res.status == "complete" and float(jnp.std(res.state.measure)) > 0
    else:
        with pytest.raises(ValueError, match="temperature > 0 needs train.method"):
            wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=theta0,
                            regularization=hot)


# ---------------------------------------------------------------------------------------
# the config and the preflight read the registry


CONFIG = """
[data]
kind = "teacher"
n = 8
dim = 1
[model]
feature = "neuron"
bias = false
[solver]
L = 4
[train]
time = 1.0
dt = 0.1
method = "{method}"
"""


@pytest.mark.parametrize("name", wflow.METHODS)
def test_config_and_preflight_read_the_method(name, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(method=name))
    config = wflow.load_config(str(path))
    assert config["train"]["method"] == name
    method = _steppers.get_method(name)
    part = next(p for p in _preflight.estimate(config).parts if p.what.startswith("parameters"))
    assert part.bytes == method.step_copies * 4 * config["solver"]["M"] * 2 * 4  # c L M k b
    grid = ["solver.kind=grid", "solver.grid.cells=9"]
    if method.positivity_limit > 0:
        assert wflow.load_config(str(path), grid)["train"]["method"] == name
    else:
        with pytest.raises(wflow.ConfigError, match="train.method"):
            wflow.load_config(str(path), grid)


# ---------------------------------------------------------------------------------------
# the additions, explicitly


def test_ssprk43_is_the_four_stage_third_order_ssp_method():
    """SSP-RK(4,3): R(z) = 1 + z + z^2/2 + z^3/6 + z^4/48, third order observed on the closed
    form, stable up to h |lambda| = 5.1495 (twice ssprk3's 2.5127), SSP coefficient 2: on the
    grid it reaches the same time in about half of ssprk3's substeps, rho >= 0."""
    s = wflow.STEPPERS["ssprk43"]
    assert (s.order, s.positivity_limit, s.stages, s.stochastic) == (3, 2.0, 4, False)
    np.testing.assert_allclose(stability_polynomial(s).coef, [1, 1, 1 / 2, 1 / 6, 1 / 48],
                               rtol=1e-15)
    assert s.stage_times == pytest.approx((0.0, 0.5, 1.0, 0.5, 1.0), abs=1e-15)
    assert s.stability_limit == pytest.approx(5.149486, abs=1e-4)
    assert s.stability_limit > 2 * wflow.STEPPERS["ssprk3"].stability_limit
    steps = np.array([8, 16, 32])
    slope = np.polyfit(np.log(S_CF / steps), np.log(_closed_form_errors("ssprk43", steps)), 1)[0]
    assert slope == pytest.approx(3.0, abs=0.2), slope
    _, rho43, taken43, _, moved43 = _grid_march("ssprk43")
    _, _, taken3, _, moved3 = _grid_march("ssprk3")
    assert moved43 == pytest.approx(moved3, rel=1e-3)
    assert taken43 <= 0.6 * taken3, (taken43, taken3)
    assert float(jnp.min(rho43.rho)) >= 0.0
