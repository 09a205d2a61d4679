"""Rates you can trust: free-exponent fits, the reference's own error floor (``wflow.study``).

Checked against mathematics: exact power laws give their exponents back; the floor of
every reference kind is compared with the reference's true error, known in closed form on
docs/theory.md, "Closed form: linear, d = 1" (grid, continuous) or measured against a
reference 4x larger (particles).
"""

import math

import jax
import numpy as np
import pytest

from wflow._config import load_config
from wflow.study._fit import fit_free, free_model, identified
from wflow.study._floor import reference_floor
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


def test_particles_floor_against_a_reference_4x_larger(tmp_path):
    """The floor of a "particles" reference of M_r particles (two halves, d / 2) against its
    true error: its distance to a reference of 4 M_r particles, divided by sqrt(1 + 1/4)
    (that one's own error), RMS over the repetitions: within 2x."""
    setup = setup_of(tmp_path, TEACHER)
    big = setup_of(tmp_path, TEACHER, "study.reference_M=128")
    S = setup.study["seeds"]

    def reference(s):
        Lr, Mr, Dr = s.reference_shape()
        block = Block(Lr, Mr, Dr, tuple(Member((-1, -1, -1), Lr, Mr, Dr, r) for r in range(S)),
                      S, reference=True)
        return run_block(s, block, s.reference_depth(), jax.random.PRNGKey(1))

    ref, ref_big = reference(setup), reference(big)
    floor = reference_floor(setup, ref, jax.random.PRNGKey(0))
    dims = (setup.reference_shape()[2],) * S
    for name in ("output", "loss"):
        from wflow.study import STUDY_METRICS

        e = STUDY_METRICS[name].compute(Runs(*ref, dims), Runs(*ref_big, dims))
        true = np.sqrt(np.mean(e * e, axis=0)) / math.sqrt(1.25)
        assert np.all(0.5 * true <= floor[name]) and np.all(floor[name] <= 2.0 * true), (
            name, floor[name], true)
