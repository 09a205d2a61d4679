"""Studies (``wflow study limit|zero-loss``) and the random embedding / readout, end to end."""

import math

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wflow
from wflow.cli import main
from wflow.study import Batch, fit_model, model_terms, read_study, slope
from wflow.study._fit import aggregate


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path, text, name="study.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------------------- random maps


def test_random_maps_follow_the_documented_recipe():
    A = wflow.random_embedding(3, 7, 2, stream=1)
    G = np.random.default_rng(np.random.SeedSequence([3, 0xE3BED, 1])).standard_normal((7, 2))
    np.testing.assert_array_equal(A, G / np.sqrt(7))
    C = wflow.random_readout(3, 7, 4)
    G = np.random.default_rng(np.random.SeedSequence([3, 0x8EAD0, 0])).standard_normal((7, 4))
    np.testing.assert_array_equal(C, (G / np.sqrt(7)).T)
    # nested in d: the first rows of a larger draw, rescaled (the "coupled randomness")
    big = wflow.random_embedding(3, 50, 2, stream=1)
    np.testing.assert_allclose(big[:7] * np.sqrt(50 / 7), A, rtol=1e-14)
    big_c = wflow.random_readout(3, 50, 4)
    np.testing.assert_allclose(big_c[:, :7] * np.sqrt(50 / 7), C, rtol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_random_embedding_forward_equals_numpy(bias):
    """g(z_L) with z_0 = A x, z_{l+1} = z_l + (1/(L M)) sum_m u tanh(w . z_l + b), g = C z."""
    d, d_in, d_out, N, L, M = 6, 3, 2, 5, 4, 7
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, d_in)), rng.normal(size=(N, d_out))
    A, C = wflow.random_embedding(1, d, d_in), wflow.random_readout(1, d, d_out)
    feature = wflow.Neuron(d=d, activation="tanh", bias=bias)
    theta = rng.normal(size=(L, M, feature.k))
    problem = wflow.Problem(feature, jnp.asarray(x), jnp.asarray(y), embedding=jnp.asarray(A),
                            readout_matrix=jnp.asarray(C))
    got = np.asarray(wflow.LayeredDepth().predict(problem, jnp.asarray(theta)))
    z = x @ A.T
    for l in range(L):
        u, w = theta[l, :, :d], theta[l, :, d:2 * d]
        b = theta[l, :, 2 * d] if bias else np.zeros(M)
        z = z + np.tanh(z @ w.T + b) @ u / (L * M)
    np.testing.assert_allclose(got, z @ C.T, rtol=1e-12, atol=1e-14)
    # the adjoint is consistent with the loss: p(1) = N dE/dz(1) = C^T (C z - y)
    z1 = jnp.asarray(z)
    p = problem.terminal_adjoint(z1)
    np.testing.assert_allclose(np.asarray(p), N * np.asarray(jax.grad(problem.loss)(z1)), rtol=1e-12)
    # and the particle velocities are -grad V (finite differences of E, float64)
    E = lambda th: wflow.LayeredDepth().loss(problem, th)
    g = np.asarray(jax.grad(E)(jnp.asarray(theta)))
    eps, idx = 1e-6, (1, 2, 3)
    tp, tm = theta.copy(), theta.copy()
    tp[idx] += eps
    tm[idx] -= eps
    fd = (float(E(jnp.asarray(tp))) - float(E(jnp.asarray(tm)))) / (2 * eps)
    assert abs(fd - g[idx]) < 1e-8


def test_pad_and_coordinates_equal_identity_maps():
    """The default maps are the matrices [I; 0] and [I 0]: same network (to round-off)."""
    d, d_in, d_out = 4, 2, 1
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(6, d_in))), jnp.asarray(rng.normal(size=(6, d_out)))
    feature = wflow.Neuron(d=d)
    theta = jnp.asarray(rng.normal(size=(3, 5, feature.k)))
    plain = wflow.Problem(feature, x, y)
    eye = wflow.Problem(feature, x, y, embedding=jnp.eye(d, d_in), readout_matrix=jnp.eye(d_out, d))
    for a, b in ((plain, eye),):
        ea, eb = wflow.LayeredDepth().evaluate(a, theta), wflow.LayeredDepth().evaluate(b, theta)
        np.testing.assert_allclose(ea.loss, eb.loss, rtol=1e-14)
        np.testing.assert_allclose(ea.velocity, eb.velocity, rtol=1e-12, atol=1e-15)


def test_run_with_random_maps_stores_them(tmp_path, capsys):
    cfg = write(tmp_path, """
[data]
kind = "gaussian"
n = 8
dim = 3
out_dim = 2
[model]
dim = 2
bias = false
embedding = "random"
readout = "random"
[solver]
L = 2
M = 4
[train]
time = 0.2
dt = 0.1
""", "run.toml")
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "r.h5", "-q")
    assert rc == 0, err
    with h5py.File(tmp_path / "r.h5") as f:
        np.testing.assert_allclose(f["model/embedding"][()], wflow.random_embedding(0, 2, 3),
                                   rtol=1e-6)
        assert f["model/readout"].shape == (2, 2)


# ----------------------------------------------------------------------------- batches


def test_padded_batch_members_equal_separate_runs():
    """Zero-weight particles and zero coordinates change nothing (float64, to round-off)."""
    rng = np.random.default_rng(2)
    N, d_in, d_out, L = 6, 2, 1, 3
    x, y = rng.normal(size=(N, d_in)), rng.normal(size=(N, d_out))
    schedule = wflow.Schedule(time=0.6, dt=0.1, record_every=3, snapshots=2)
    shapes = [(4, 3), (6, 5)]  # (M, D); padded to (6, 5)
    Mp, Dp = 6, 5
    thetas, weights, embs, reference = [], [], [], []
    for r, (M, D) in enumerate(shapes):
        feature = wflow.Neuron(d=D, bias=True)
        th = rng.normal(size=(L, M, feature.k))
        A = wflow.random_embedding(0, D, d_in, stream=r)
        problem = wflow.Problem(feature, jnp.asarray(x), jnp.asarray(y), embedding=jnp.asarray(A))
        res = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=jnp.asarray(th),
                              regularization=wflow.Regularization(l2=0.1))
        reference.append(np.asarray(wflow.LayeredDepth().predict(problem, res.state.measure)))
        padded = np.zeros((L, Mp, 2 * Dp + 1))
        padded[:, :M, :D], padded[:, :M, Dp:Dp + D], padded[:, :M, 2 * Dp] = (
            th[..., :D], th[..., D:2 * D], th[..., 2 * D])
        thetas.append(padded)
        w = np.zeros((L, Mp))
        w[:, :M] = 1.0 / M
        weights.append(w)
        embs.append(np.pad(A, ((0, Dp - D), (0, 0))))
    batch = Batch(jnp.asarray(np.stack(thetas, 1)), jnp.asarray(np.stack(weights, 1)),
                  jnp.asarray(np.stack(embs)))
    problem = wflow.Problem(wflow.Neuron(d=Dp), jnp.asarray(x), jnp.asarray(y))
    res = wflow.integrate(problem, wflow.LayeredDepth(), schedule, theta0=batch,
                          regularization=wflow.Regularization(l2=0.1))
    assert res.status == "complete" and res.snapshots is None
    assert res.history["loss"].shape == (3, 2)  # records (steps 0, 3, 6) x members
    final = res.history["prediction"][-1]
    for r in range(2):
        np.testing.assert_allclose(final[r], reference[r], rtol=1e-11, atol=1e-13)
    # padded coordinates and padded particles never moved
    theta = np.asarray(res.state.measure.theta)
    assert np.all(theta[:, 0, :, 3:5] == 0) and np.all(theta[:, 0, :, Dp + 3:2 * Dp] == 0)
    assert np.all(theta[:, 0, 4:] == 0)


def test_continuous_depth_batch_members_equal_separate_runs(monkeypatch):
    """A continuous-depth batch runs its members one after another
    (``ContinuousDepth.members_in_a_loop``): each member's history and particles equal its own
    run's, and the vmapped batch's (float64, to round-off)."""
    from wflow._depth import ContinuousDepth

    rng = np.random.default_rng(3)
    N, d, L, M, B = 6, 3, 3, 4, 3
    x, y = rng.normal(size=(N, d)), rng.normal(size=(N, 1))
    schedule = wflow.Schedule(time=0.3, dt=0.1, record_every=3, snapshots=2)
    problem = wflow.Problem(wflow.Neuron(d=d), jnp.asarray(x), jnp.asarray(y))
    depth = wflow.ContinuousDepth()
    assert depth.members_in_a_loop and not wflow.LayeredDepth().members_in_a_loop
    thetas = rng.normal(size=(L, B, M, problem.feature.k))
    runs = [wflow.integrate(problem, depth, schedule, theta0=jnp.asarray(thetas[:, b]))
            for b in range(B)]
    batched = {}
    for loop in (True, False):
        monkeypatch.setattr(ContinuousDepth, "members_in_a_loop", property(lambda self: loop))
        batched[loop] = wflow.integrate(problem, depth, schedule,
                                        theta0=Batch(jnp.asarray(thetas), None, None))
    for res in batched.values():
        assert res.status == "complete" and res.history["loss"].shape == (2, B)
        theta = np.asarray(res.state.measure.theta)
        for b, run in enumerate(runs):
            np.testing.assert_allclose(res.history["loss"][:, b], run.history["loss"],
                                       rtol=1e-11)
            np.testing.assert_allclose(theta[:, b], np.asarray(run.state.measure), rtol=1e-11,
                                       atol=1e-13)


def test_members_in_a_loop_trace_one_member_once():
    """``_in_a_loop`` (the members of a batch one after another) traces the member's function
    once: its output shapes and the loop's body share one trace (jit's cache); the loop
    writes member b's outputs into slice b of the out axis."""
    from wflow.study._batch import _in_a_loop

    traces = []

    def fn(a, c):
        traces.append(1)
        return jnp.sum(a * c), 2.0 * a

    a = jnp.arange(12.0).reshape(2, 3, 2)  # members on axis 1
    total, twice = jax.jit(lambda a: _in_a_loop(fn, (1, None), (0, 1), (a, 3.0), 3))(a)
    assert len(traces) == 1
    np.testing.assert_array_equal(twice, 2.0 * a)
    np.testing.assert_array_equal(total, 3.0 * jnp.sum(a, axis=(0, 2)))


# ----------------------------------------------------------------------------- fits


def test_fits_recover_a_known_error_surface():
    L = np.array([4, 8, 16, 32, 64], float)
    M = np.array([2, 8, 32, 128, 512], float)
    D = np.array([4, 16, 64, 256], float)
    rng = np.random.default_rng(0)
    a, b, c = 0.3, 2.0, 0.7
    LL, MM = np.meshgrid(L, M, indexing="ij")
    err = a / LL + b / np.sqrt(LL * MM)
    noisy = err * np.exp(0.01 * rng.normal(size=err.shape))  # 1% multiplicative noise
    fit = fit_model(model_terms(LL.ravel(), MM.ravel()), noisy.ravel())
    np.testing.assert_allclose(fit.coef, [a, b], rtol=0.03)
    assert fit.r2 > 0.999 and fit.n == err.size
    LL, MM, DD = np.meshgrid(L, M, D, indexing="ij")
    err = a / LL + b * np.sqrt(DD / (LL * MM)) + c / np.sqrt(DD)
    noisy = err * np.exp(0.01 * rng.normal(size=err.shape))
    fit = fit_model(model_terms(LL.ravel(), MM.ravel(), DD.ravel()), noisy.ravel())
    np.testing.assert_allclose(fit.coef, [a, b, c], rtol=0.03)
    assert fit.r2 > 0.999
    # slopes of exact power laws, and NaN where a line has a non-positive value
    s = slope(L, np.stack([3.0 * L ** -1.0, 2.0 * L ** -0.5]), axis=1)
    np.testing.assert_allclose(s, [-1.0, -0.5], rtol=1e-12)
    assert np.isnan(slope(L, np.array([1.0, 0.5, 0.0, 0.1, 0.1]), axis=0))
    # RMS over seeds
    np.testing.assert_allclose(aggregate(np.array([[3.0, 4.0]]), seed_axis=-1), [math.sqrt(12.5)])


# ----------------------------------------------------------------------------- limit study

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
L = [4, 8, 16]
M = [4]
seeds = 2
times = [0.0, 0.5]
sampling = "shared"
reference = "continuous"
bootstrap = 20
"""


def test_depth_slope_on_the_linear_exact_problem(tmp_path, capsys):
    """docs/theory.md, "Closed form: linear, d = 1": the same measure (shared sampling, the
    same particles for every L) against
    continuous depth: the layered network is x prod_l (1 + m_l / L), the limit x e^A, error O(1/L)."""
    out = tmp_path / "lin.h5"
    rc, text, err = cli(capsys, "study", "limit", write(tmp_path, LINEAR),
                        "-o", out, "-q", "--no-plot")
    assert rc == 0, err
    assert "slope vs L" in text
    data = read_study(str(out))
    assert data["attrs"]["status"] == "complete"
    assert data["errors/output"].shape == (3, 1, 2, 2)  # (n_L, n_M, seeds, times)
    for metric in ("loss", "output", "hidden"):
        s = data[f"fit/{metric}/slope_L"]  # (times, n_M)
        assert np.all(np.abs(s + 1.0) < 0.1), (metric, s)
    # the free fit (one M: err ~ a L^-p, the rest NaN) finds the depth exponent 1 as the slope
    # does (tests/test_study_rates.py checks its interval against the theory's 1)
    assert list(data["fit/output/free@params"]) == ["a", "p", "b", "q"]
    assert "one M" in data["fit/output/free@note"]
    for metric in ("loss", "output", "hidden"):
        free, ci = data[f"fit/{metric}/free"], data[f"fit/{metric}/free_ci"]
        assert free.shape == (2, 4) and ci.shape == (2, 4, 2)
        assert np.all(np.abs(free[:, 1] - 1.0) < 0.1) and np.all(np.isnan(free[:, 2:]))
        assert np.all(np.isfinite(ci[:, :2])) and np.all(ci[:, :2, 0] <= ci[:, :2, 1])
    assert "free fit err ~ a L^-p + b (L M)^-q" in text and "(theory 1 " in text
    assert data["reference/floor/output"].shape == (2,)


LINEAR_GRID = LINEAR.replace("mean = 0.2", "mean = 0.0").replace("dt = 0.25", """dt = 0.25
method = "ssprk3"
""").replace("""L = [4, 8, 16]
M = [4]
seeds = 2
times = [0.0, 0.5]
sampling = "shared"
reference = "continuous"
bootstrap = 20
""", """L = [4, 8, 16]
M = [4, 16, 64]
seeds = 32
times = [0.0, 0.5]
sampling = "iid"
reference = "grid"
reference_L = 1
bootstrap = 50
[study.grid]
cells = 64
bounds = [-3.0, 3.0]
""")


def _closed_form_A(X2, a, s, A0=0.0, n=4000):
    """docs/theory.md, "Closed form: linear, d = 1": dA/ds = -X2 (e^A - a) e^A by classical RK4
    (error ~ (s/n)^4, far below 1e-12)."""
    rhs = lambda A: -X2 * (math.exp(A) - a) * math.exp(A)
    A, h = A0, s / n
    for _ in range(n):
        k1 = rhs(A)
        k2 = rhs(A + h / 2 * k1)
        k3 = rhs(A + h / 2 * k2)
        k4 = rhs(A + h * k3)
        A += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return A


def test_grid_reference_on_the_linear_exact_problem(tmp_path, capsys):
    """study.reference = "grid" on docs/theory.md, "Closed form: linear, d = 1"
    (y = a x, rho_ini = N(0, 0.5^2)).

    The reference: z(1; x) = x e^A with A(s) the mean of rho, dA/ds = -X2 (e^A - a) e^A. The
    velocity is the same at every theta, so the flux-form scheme moves the mean at exactly that
    velocity (upwind exactly; MUSCL up to the limited slopes' sum, which telescopes to the
    ~0 wall values); what remains is SSP-RK3's time error with substeps ~ cfl h / |v| ~ 0.1,
    about 1e-8 in A here, and diffrax's rtol 1e-9. Hence rtol 1e-6 on e^A (1e-5 on E, which
    amplifies dA by 2 e^A / |e^A - a| ~ 17): a wrong velocity, mean or step count is off by
    more than 1e-3.

    The finite networks against it at s = 0 (forward pass, iid layers): z_L(1) = x prod_l
    (1 + m_l / L) with m_l the mean of M N(0, std^2) draws, so the output error is
    sqrt(X2) |S| (1 + O(1/(LM))), S = sum_l m_l / L ~ N(0, std^2 / (L M)): depth acts as
    width, error = b / sqrt(L M) with b = sqrt(X2) std and no 1/L term. Checked: every slope
    against L and against M is -1/2 within 3 bootstrap standard deviations (+ 0.02 for the
    O(1/(LM)) bias), and the fitted b equals sqrt(X2) std within 3 of its bootstrap errors.
    """
    out = tmp_path / "grid.h5"
    rc, text, err = cli(capsys, "study", "limit", write(tmp_path, LINEAR_GRID), "-o", out, "-q",
                        "--no-plot")
    assert rc == 0, err
    assert "reference grid (64 cells, muscl, L = 1, continuous depth)" in text
    data = read_study(str(out))
    x, y = data["data/x"][:, 0], data["data/y"][:, 0]
    X2 = float(np.mean(x * x))
    a = float(np.sum(x * y) / np.sum(x * x))
    assert np.max(np.abs(y - a * x)) < 1e-12  # a linear teacher: y = a x exactly
    # the reference against the closed form, at s = 0 and s = 0.5, for every repetition
    for t, s in enumerate(data["study/times"]):
        A = _closed_form_A(X2, a, float(s))
        gain = data["reference/prediction"][:, t, :, 0] / x  # (seeds, N): e^A for every x
        np.testing.assert_allclose(gain, math.exp(A), rtol=1e-6)
        np.testing.assert_allclose(data["reference/loss"][:, t], X2 / 2 * (math.exp(A) - a) ** 2,
                                   rtol=1e-5)
    assert _closed_form_A(X2, a, 0.5) > 0.1  # the mean did move by ~ 0.2 std
    assert np.all(data["reference/wall_mass"] < 1e-8)  # a 6 std box
    # the finite networks against it: b / sqrt(L M)
    for metric in ("output", "hidden"):
        for name in ("slope_L", "slope_M"):
            s, e = data[f"fit/{metric}/{name}"][0], data[f"fit/{metric}/{name}_err"][0]
            assert np.all(np.abs(s + 0.5) <= 3 * e + 0.02), (metric, name, s, e)
        b, b_err = data[f"fit/{metric}/model"][0, 1], data[f"fit/{metric}/model_err"][0, 1]
        assert abs(b - math.sqrt(X2) * 0.5) <= 3 * b_err, (metric, b, b_err, math.sqrt(X2) * 0.5)
        assert b_err < 0.1 * b  # the check has teeth
        # the free fit finds the width exponent 1/2 inside its 95% interval (a wide one: four
        # parameters on nine points, each an RMS over 32 seeds, +-12%)
        q, (lo, hi) = data[f"fit/{metric}/free"][0, 3], data[f"fit/{metric}/free_ci"][0, 3]
        assert lo <= 0.5 <= hi, (metric, q, lo, hi)


STUDY = """
seed = 0
[data]
kind = "teacher"
n = 16
dim = 2
[solver]
L = 2
M = 4
[train]
dt = 0.5
[study]
L = [2, 4]
M = [3, 4]
seeds = 2
times = [0.5, 1.0]
reference = "particles"
reference_M = 16
reference_depth = "layers"
bootstrap = 10
"""


def _same_files(a, b, timed=False):
    """Two study files hold the same numbers; ``timed``: their histories record wall times
    (zero-loss runs), which are left out, with the checksum over the data."""
    A, B = read_study(a), read_study(b)
    skip = {"wall_time", "created_utc", "attrs_sha256"}  # the checksum covers created_utc
    skip |= {"data_sha256"} if timed else set()
    assert {k: v for k, v in A["attrs"].items() if k not in skip} == \
        {k: v for k, v in B["attrs"].items() if k not in skip}
    assert set(A) == set(B)
    # HDF5 dimension-scale bookkeeping holds object references, which differ from file to file
    scales = ("@DIMENSION_LIST", "@REFERENCE_LIST")
    for key in A:
        if key != "attrs" and not key.endswith(scales) and not (timed and "wall_time" in key):
            np.testing.assert_array_equal(A[key], B[key], err_msg=key)


def test_interrupted_study_resumes_to_the_same_file(tmp_path, capsys):
    cfg = write(tmp_path, STUDY)
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", full, "-q", "--no-plot")
    assert rc == 0, err
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", part, "-q", "--no-plot",
                     "--stop-after", "2")
    assert rc == 130 and "--resume" in err
    data = read_study(str(part))
    assert data["attrs"]["status"] == "interrupted"
    assert 0 < data["done"].sum() < data["done"].size
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", part, "-q", "--no-plot", "--resume")
    assert rc == 0, err
    _same_files(str(full), str(part))
    # a complete study is not resumed again, and another config is refused
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", part, "--resume")
    assert rc == 2 and "already complete" in err
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", full, "-q", "--no-plot", "--stop-after",
                     "1", "--set", "output.overwrite=true")
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", full, "--resume", "--set",
                     "study.seeds=3")
    assert rc == 2 and "differs" in err


@pytest.mark.parametrize("edit, message", [
    ("Lz = [2]", "study.Lz"),
    ('reference = "grid"', "needs k <= 3 parameters per particle, this model has k = 5"),
    ('reference = "continuous"\nreference_M = 8', "only used with"),
    ("box = 2.0", "not used by wflow study limit"),
    ("times = [0.3]", "not a multiple of train.dt"),
    ("L = [0, 2]", "study.L"),
    ("seeds = 0", "study.seeds"),
    ('metrics = ["hidden", "hiden"]', "study.metrics"),
    ("memory = 1e-6", "study.memory"),
])
def test_bad_study_keys_exit_2_with_one_line(tmp_path, capsys, edit, message):
    text = STUDY.replace('reference = "particles"\nreference_M = 16\nreference_depth = "layers"\n',
                         "")
    key = edit.split("=")[0].strip()
    lines = [ln for ln in text.splitlines() if ln.split("=")[0].strip() != key]
    text = "\n".join(lines).replace("[study]", "[study]\n" + edit) + "\n"
    out = tmp_path / "bad.h5"
    rc, _, err = cli(capsys, "study", "limit", write(tmp_path, text), "-o", out)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("wflow: error: ") and message in err, err
    assert not out.exists()


def test_run_ignores_the_study_section(tmp_path, capsys):
    cfg = write(tmp_path, STUDY.replace("dt = 0.5", "dt = 0.5\ntime = 0.5"))
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "r.h5", "-q")
    assert rc == 0, err


# ----------------------------------------------------------------------------- zero loss

ZERO = """
seed = 0
[data]
kind = "teacher"
n = 32
dim = 2
[solver]
L = 3
M = 16
[train]
time = 10.0
dt = 0.5
record_every = 4
snapshots = 3
[study]
inits = ["point", "gaussian"]
box_points = 256
"""


def test_zero_loss_delta0_stuck_full_support_decreasing(tmp_path, capsys):
    out = tmp_path / "zl.h5"
    rc, text, err = cli(capsys, "study", "zero-loss", write(tmp_path, ZERO), "-o", out, "-q")
    assert rc == 0, err
    assert "point" in text and "gaussian" in text
    d = read_study(str(out))
    h = lambda name, c: d[f"runs/{name}/history/{c}"]
    # delta_0 (docs/theory.md, "Degenerate start"): F = 0 and grad V(0) = 0 exactly;
    # the loss never moves ...
    assert np.all(h("point", "loss") == h("point", "loss")[0]) and h("point", "loss")[0] > 0
    assert np.all(h("point", "stationarity") == 0) and np.all(h("point", "grad_v_origin") == 0)
    # ... yet it is not a minimizer: grad V does not vanish on the box
    assert np.all(h("point", "sup_grad_v") > 1e-2)
    assert np.all(h("point", "tail_mass") == 0)
    # full support: loss, residual and sup |grad V| all fall
    loss = h("gaussian", "loss")
    assert loss[-1] < 0.2 * loss[0] and np.all(np.diff(loss) <= 0)
    assert h("gaussian", "stationarity")[-1] < 0.05 * h("gaussian", "stationarity")[0]
    assert h("gaussian", "sup_grad_v")[-1] < 0.5 * h("gaussian", "sup_grad_v")[0]
    assert 0 < h("gaussian", "tail_mass")[-1] < 1
    assert (tmp_path / "zl_plots" / "zero_loss.png").exists()


def test_zero_loss_resume(tmp_path, capsys):
    cfg = write(tmp_path, ZERO)
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    rc, _, err = cli(capsys, "study", "zero-loss", cfg, "-o", full, "-q", "--no-plot")
    assert rc == 0, err
    rc, _, err = cli(capsys, "study", "zero-loss", cfg, "-o", part, "-q", "--no-plot",
                     "--stop-after", "8")
    assert rc == 130
    rc, _, err = cli(capsys, "study", "zero-loss", cfg, "-o", part, "-q", "--no-plot", "--resume")
    assert rc == 0, err
    A, B = read_study(str(full)), read_study(str(part))
    scales = ("@DIMENSION_LIST", "@REFERENCE_LIST")  # HDF5 object references: per file
    for key in A:
        if key != "attrs" and "wall_time" not in key and not key.endswith(scales):
            np.testing.assert_array_equal(A[key], B[key], err_msg=key)


@pytest.mark.parametrize("verb, text", [("limit", STUDY), ("zero-loss", ZERO)],
                         ids=["limit", "zero-loss"])
def test_python_entry_points_write_the_commands_file(tmp_path, capsys, verb, text):
    """``wflow.study.limit`` / ``zero_loss``: the file ``wflow study VERB`` writes, opened as a
    DataTree; an existing file is refused without output.overwrite, as by the command."""
    cfg = write(tmp_path, text)
    rc, _, err = cli(capsys, "study", verb, cfg, "-o", tmp_path / "cli.h5", "-q", "--no-plot")
    assert rc == 0, err
    run = getattr(wflow.study, verb.replace("-", "_"))
    out = tmp_path / "new" / "py.h5"  # its folder is created
    tree = run(cfg, out, progress=False)
    _same_files(str(tmp_path / "cli.h5"), str(out), timed=verb == "zero-loss")
    assert tree.attrs["kind"] == read_study(str(tmp_path / "cli.h5"))["attrs"]["kind"]
    with pytest.raises(wflow.ConfigError, match="output.overwrite"):
        run(cfg, out)
    config = wflow.load_config(cfg, ["output.overwrite=true"])  # a loaded config, as a dict
    run(config, out, progress=False)
    _same_files(str(tmp_path / "cli.h5"), str(out), timed=verb == "zero-loss")
    with pytest.raises(ValueError, match="overrides"):
        run(config, out, overrides=["seed=1"])
    bad = "study.L=[0]" if verb == "limit" else "study.inits=['nope']"
    with pytest.raises(wflow.ConfigError, match=bad.split("=")[0]):
        run(cfg, tmp_path / "bad.h5", overrides=[bad])
    assert not (tmp_path / "bad.h5").exists()


def test_generic_measure_path_matches_the_batch(tmp_path):
    """``measure_values`` (the path a grid reference takes) gives a batch member's values."""
    from wflow.study._keys import resolve_limit
    from wflow.study._limit import build_limit, make_batch, measure_values, plan, run_block

    config = wflow.load_config(write(tmp_path, STUDY))
    setup = build_limit(config, resolve_limit(config))
    block = next(b for b in plan(setup) if not b.reference)
    key = jax.random.PRNGKey(0)
    res = run_block(setup, block, setup.depth, key)
    problem, batch = make_batch(setup, block)
    j = 0
    m = block.members[j]
    theta = batch.theta[:, j]
    if batch.weights is not None:  # a padded member: drop its zero-weight particles
        theta = theta[:, : m.M]
    one = measure_values(setup, problem, setup.depth, theta, key)
    np.testing.assert_allclose(one.loss[0], res.loss[j], rtol=1e-5)
    np.testing.assert_allclose(one.prediction[0], res.prediction[j], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["euler", "heun", "ssprk3"])
def test_the_block_estimate_bounds_what_xla_allocates(tmp_path, method):
    """``study.memory`` splits the runs into blocks by ``member_bytes``; it must bound what the
    block's compiled chunk really holds (XLA's memory analysis: arguments, temporaries and
    outputs not written in place) for every fixed-step method. A flat 4x theta fell short of
    heun (4.28x) and ssprk3 (5.3x), and of euler on a reference with twins and (N, M) kernel
    blocks larger than theta (4.15x)."""
    import equinox as eqx

    from wflow import _integrate
    from wflow._flow import make_flow
    from wflow.study._keys import resolve_limit
    from wflow.study._limit import build_limit, make_batch, member_bytes, plan

    text = STUDY.replace("[train]\ndt = 0.5", f'[train]\ndt = 0.05\nmethod = "{method}"')
    text = text.replace("reference_M = 16", "reference_M = 8192")  # theta 1.3 MB: it dominates
    config = wflow.load_config(write(tmp_path, text))
    setup = build_limit(config, resolve_limit(config))
    block = plan(setup)[0]  # the reference's block
    problem, batch = make_batch(setup, block)
    flow = make_flow(problem, setup.depth, batch, setup.regularization)
    flow = eqx.tree_at(lambda f: f.problem, flow, problem.astype(batch.theta.dtype))
    args = (flow, method, jnp.asarray(0.05, batch.theta.dtype), jax.random.PRNGKey(0),
            jnp.int32(0), jnp.int32(3))
    stats = _integrate._advance_fixed_donating.lower(args, batch).compile().compiled.memory_analysis()
    if stats is None:
        pytest.skip("memory_analysis is not available on this backend")
    held = (stats.argument_size_in_bytes + stats.temp_size_in_bytes
            + stats.output_size_in_bytes - stats.alias_size_in_bytes)
    estimate = member_bytes(setup, block.L, block.M, block.D) * block.size
    assert stats.alias_size_in_bytes >= batch.theta.nbytes  # trained in place
    assert held <= estimate, (held / batch.theta.nbytes, estimate / batch.theta.nbytes)


@pytest.mark.parametrize("metrics", [["loss", "output", "hidden"], ["loss", "coupling"]])
def test_a_block_holds_one_copy_of_its_particles_while_it_trains(tmp_path, monkeypatch, metrics):
    """Between the calls of a block's compiled chunk the batch being trained is the only array
    of its size alive: the initial particles are updated in place (``integrate(donate=True)``)
    and the diagnostics copy the particles only at a record and only for a metric that reads
    them (``coupling``); the block keeps that copy on the host, and the time loop does not
    hold it through the next chunk. Before, three copies lived between records (the initial
    batch, the trained one, the diagnostics' copy of the particles; one more per record with
    ``coupling``), and the full CCM sweep's reference (theta = 1.6 GB) was OOM-killed at
    23.7 GB resident."""
    from wflow import _integrate
    from wflow.study._keys import resolve_limit
    from wflow.study._limit import build_limit, plan, run_block

    monkeypatch.setattr(_integrate, "POLL_SECONDS", 1e-9)  # one step per call, a poll after each
    text = STUDY.replace("times = [0.5, 1.0]", "times = [2.0]").replace(
        "bootstrap = 10", "bootstrap = 10\nmetrics = [" + ", ".join(f'"{m}"' for m in metrics) + "]")
    config = wflow.load_config(write(tmp_path, text))
    setup = build_limit(config, resolve_limit(config))
    records = {0.0, 1.0}  # steps 0 and 4 of 4 (dt = 0.5): the chunk's boundaries
    at_record = 2 if "coupling" in metrics else 1  # the record's own copy, while it is kept
    for block in (plan(setup)[0], plan(setup)[-1]):  # the reference, the sweep's largest block
        size = block.L * block.size * (block.M + block.reference * setup.n_twins) * setup.k(block.D)
        alive = {}
        before = {id(a) for a in jax.live_arrays()}  # other tests' arrays (a shared worker)

        def progress(fraction, size=size, alive=alive, before=before):
            alive.setdefault(fraction, []).append(
                sum(a.size >= size and id(a) not in before for a in jax.live_arrays()))

        res = run_block(setup, block, setup.depth, jax.random.PRNGKey(0), on_progress=progress)
        assert np.all(np.isfinite(res.loss))
        polls = {f: n for f, n in alive.items() if f not in records}
        assert set(polls) == {0.25, 0.5, 0.75}, alive  # steps 1, 2, 3: inside the chunk
        assert all(max(n) == 1 for n in polls.values()), (block, alive)
        assert all(max(alive[f]) <= at_record for f in records), (block, alive)


@pytest.mark.parametrize("edit, message", [
    ("[study.grid]\ncells = 64\nbounds = [-3.0, 3.0]\n", 'needs a [study.grid] section'),
    ("cells = 64", "study.grid.cells = [64, 64]: give one integer or a list of k = 1"),
    ("bounds = [-3.0, 3.0]", "study.grid.bounds"),
    ('method = "ssprk3"', 'train.method = "adaptive": the grid reference'),
    ('reference = "grid"', 'study.grid = '),
    ("reference_L = 1", "study.reference_M = 8: only used with study.reference = \"particles\""),
    ("seeds = 32", "study.dims = [1]: not used with study.reference = \"grid\""),
])
def test_bad_grid_reference_exits_2_with_one_line(tmp_path, capsys, edit, message):
    replacement = {"[study.grid]\ncells = 64\nbounds = [-3.0, 3.0]\n": "",
                   "cells = 64": "cells = [64, 64]",
                   "bounds = [-3.0, 3.0]": "bounds = [-0.5, 0.5]",
                   'method = "ssprk3"': 'method = "adaptive"',
                   'reference = "grid"': 'reference = "continuous"\nreference_L = 2',
                   "reference_L = 1": "reference_L = 1\nreference_M = 8",
                   "seeds = 32": "seeds = 2\ndims = [1]"}
    assert edit in LINEAR_GRID
    text = LINEAR_GRID.replace(edit, replacement[edit], 1)
    if edit == 'reference = "grid"':
        text = text.replace("reference_L = 1\n", "")
    out = tmp_path / "bad.h5"
    rc, _, err = cli(capsys, "study", "limit", write(tmp_path, text), "-o", out)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("wflow: error: ") and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("extra", ["", 'metrics = ["loss", "coupling"]\n',
                                   'dims = [2, 3]\nsampling = "shared"\n'],
                         ids=["padded-M", "twins", "padded-D-shared"])
def test_a_batch_holds_each_members_own_draws(tmp_path, extra):
    """``make_batch`` draws the members in parallel threads; every member's slot must hold
    the particles its own generator gives when drawn alone (``_particles``), lifted and padded
    to the block's shape, with the reference's twins appended, and the slots past the real
    members repeat the last one: the numbers cannot depend on the threads' order."""
    from wflow.study._keys import resolve_limit
    from wflow.study._limit import (
        _pad_particles,
        _particles,
        _with_twins,
        build_limit,
        make_batch,
        plan,
    )

    text = STUDY.replace("M = [3, 4]\nseeds = 2", "M = [3, 4, 5]\nseeds = 3") + extra
    if "dims" in extra:  # D is swept on data not made by a network of one state dimension
        text = text.replace('kind = "teacher"', 'kind = "gaussian"\nout_dim = 2')
    config = wflow.load_config(write(tmp_path, text))
    setup = build_limit(config, resolve_limit(config))
    checked = 0
    for block in plan(setup):
        _, batch = make_batch(setup, block)
        theta = np.asarray(batch.theta)
        assert theta.shape[:2] == (block.L, block.size)
        for j in range(block.size):
            m = block.members[min(j, len(block.members) - 1)]
            want = _particles(setup, m, block.reference)
            if (m.M, m.D) != (block.M, block.D):
                want = _pad_particles(setup, want, m.D, block.M, block.D)
            if batch.twins:
                want = _with_twins(setup, m.rep, want)
            np.testing.assert_array_equal(theta[:, j], want)
            checked += 1
        if batch.weights is not None:
            w = np.asarray(batch.weights)
            for j in range(block.size):
                m = block.members[min(j, len(block.members) - 1)]
                np.testing.assert_array_equal(w[:, j, :m.M], w.dtype.type(1.0 / m.M))
                assert np.all(w[:, j, m.M:] == 0)
    assert checked > len(plan(setup))  # blocks of several members, drawn in parallel
    padded = [(m.M, m.D) != (b.M, b.D) for b in plan(setup) for m in b.members]
    assert any(padded) or "coupling" in extra
    if "coupling" in extra:
        assert any(b.reference and make_batch(setup, b)[1].twins for b in plan(setup))


def test_blocks_built_ahead_start_without_compiling(tmp_path, capsys, monkeypatch):
    """The background thread also compiles the next block's programs (``_limit.compile_block``):
    every block after the first trains without a compilation in the main thread, and the
    compilations happen in the background thread instead. A program taken from JAX's
    persistent compilation cache (the test run keeps one) counts as compiled where it is
    read."""
    import threading

    import jax

    from wflow.study import _sweep

    cfg = write(tmp_path, STUDY.replace("M = [3, 4]\nseeds = 2", "M = [3, 9, 27]\nseeds = 3"))
    current, compiles = [None], []  # the block that runs; (block, thread) of each compilation

    def on_duration(event, seconds, **_):
        if event in ("/jax/core/compile/backend_compile_duration",
                     "/jax/compilation_cache/cache_retrieval_time_sec") and current[0] is not None:
            compiles.append((current[0], threading.current_thread().name))

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    original, order = _sweep.run_block, []

    def run_block(setup, block, *a, **k):
        order.append(block)
        current[0] = len(order)
        try:
            return original(setup, block, *a, **k)
        finally:
            current[0] = None

    monkeypatch.setattr(_sweep, "run_block", run_block)
    # the listener stays registered; outside run_block (current None) it counts nothing
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", tmp_path / "s.h5", "-q", "--no-plot")
    assert rc == 0, err
    shapes = {_sweep._shape(b) for b in order}
    assert len(order) >= 3 and len(shapes) >= 2, order
    main = [n for n, thread in compiles if thread == "MainThread"]
    assert all(n == 1 for n in main), compiles  # only the first block compiles where it runs
    assert any(thread.startswith("wflow-next-batch") for _, thread in compiles), compiles


def test_blocks_built_ahead_give_the_same_study(tmp_path, capsys, monkeypatch):
    """While a block trains, the next block's particles are drawn in a background thread
    (``_sweep._Ahead``); every block but the first is then taken from it, and the study file
    holds the same numbers as when each block draws its own when it starts."""
    import threading

    from wflow.study import _limit, _sweep
    from wflow.study._keys import resolve_limit

    cfg = write(tmp_path, STUDY.replace("M = [3, 4]\nseeds = 2", "M = [3, 9, 27]\nseeds = 3"))
    built, make = [], _limit.make_batch

    def recorded(setup, block):
        built.append(threading.current_thread().name.startswith("wflow-next-batch"))
        return make(setup, block)

    monkeypatch.setattr(_sweep, "make_batch", recorded)
    monkeypatch.setattr(_limit, "make_batch", recorded)
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", tmp_path / "ahead.h5", "-q", "--no-plot")
    assert rc == 0, err
    ahead = list(built)
    config = wflow.load_config(cfg)
    n_blocks = len(_limit.plan(_limit.build_limit(config, resolve_limit(config))))
    assert sum(ahead) == n_blocks - 1 >= 2, ahead  # all but the first (the floor's: inline)
    built.clear()
    monkeypatch.setattr(_sweep._Ahead, "start", lambda self, block, depth, key: None)
    rc, _, err = cli(capsys, "study", "limit", cfg, "-o", tmp_path / "inline.h5", "-q", "--no-plot")
    assert rc == 0, err
    assert not any(built) and len(built) == len(ahead)
    _same_files(str(tmp_path / "ahead.h5"), str(tmp_path / "inline.h5"))
