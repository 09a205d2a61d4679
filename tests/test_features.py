"""Feature maps f(z; theta), their particle average F and the activation registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wflow

SMOOTH = [a for a in wflow.ACTIVATIONS if wflow.get_activation(a).smooth]


def _neuron_grid():
    """Every activation with and without bias at d = 3 (the broadcast path of Neuron, d <= 8);
    the matmul path (d > 8) is the same activation code, checked with tanh."""
    grid = [(3, act, bias) for act in wflow.ACTIVATIONS for bias in (True, False)]
    return grid + [(10, "tanh", True), (10, "tanh", False)]


def _feature_cases():
    """(kind, d, activation, bias) covering every feature map and activation."""
    cases = [pytest.param("neuron", d, act, bias, id=f"neuron-d{d}-{act}-bias{bias}")
             for d, act, bias in _neuron_grid()]
    for d in (1, 3):
        cases.append(pytest.param("linear", d, "tanh", True, id=f"linear-d{d}"))
    return cases


@pytest.mark.parametrize("kind, d, activation, bias", _feature_cases())
def test_field_is_particle_average(kind, d, activation, bias, key):
    """field(Z, Theta)_i = (1/M) sum_m f(Z_i; Theta_m), computed particle by particle."""
    feat = wflow.make_feature(kind, d, activation=activation, bias=bias)
    kz, kt = jax.random.split(key)
    Z = jax.random.normal(kz, (7, d))
    Theta = jax.random.normal(kt, (5, feat.k))

    @jax.jit
    def both(Z, Theta):
        per_particle = jax.vmap(lambda th: jax.vmap(lambda z: feat(z, th))(Z))(Theta)  # (M, N, d)
        return feat.field(Z, Theta), jnp.mean(per_particle, axis=0)

    got, expected = both(Z, Theta)
    assert got.shape == (7, d)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_parameter_sizes(d):
    assert wflow.make_feature("neuron", d).k == 2 * d + 1
    assert wflow.make_feature("neuron", d, bias=False).k == 2 * d
    assert wflow.make_feature("linear", d).k == d * d


def test_neuron_coordinate_layout():
    """theta = [u_0..u_{d-1}, w_0..w_{d-1}, b]: f = u sigma(w . z + b)."""
    d = 3
    u = jnp.array([1.0, -2.0, 0.5])
    w = jnp.array([0.3, 0.1, -0.7])
    b = 0.2
    z = jnp.array([0.4, -1.1, 2.0])
    feat = wflow.make_feature("neuron", d)
    np.testing.assert_allclose(feat(z, jnp.concatenate([u, w, jnp.array([b])])),
                               u * jnp.tanh(w @ z + b), rtol=1e-14)
    nobias = wflow.make_feature("neuron", d, bias=False)
    np.testing.assert_allclose(nobias(z, jnp.concatenate([u, w])), u * jnp.tanh(w @ z), rtol=1e-14)


def test_linear_is_row_major_matrix():
    d = 2
    theta = jnp.array([1.0, 2.0, 3.0, 4.0])
    z = jnp.array([1.0, -1.0])
    np.testing.assert_allclose(wflow.make_feature("linear", d)(z, theta), [-1.0, -1.0])


@pytest.mark.parametrize("kind", wflow.FEATURES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_field_preserves_dtype(kind, dtype, key):
    sequence = issubclass(wflow.FEATURES[kind], wflow.AbstractSequenceBlock)
    feat = wflow.make_feature(kind, 2, tokens=3 if sequence else None)
    Z = jnp.ones((3, feat.d), dtype)
    Theta = jax.random.normal(key, (4, feat.k), dtype)
    assert feat.field(Z, Theta).dtype == dtype


@pytest.mark.parametrize("name", wflow.ACTIVATIONS)
def test_activation_registry_flags(name):
    """Every registered name resolves; only relu is outside the theory; zero_at_zero is true."""
    act = wflow.get_activation(name)
    assert act.name == name
    assert act.smooth == (name != "relu")
    assert act.zero_at_zero == bool(act(jnp.zeros(())) == 0.0)


@pytest.mark.parametrize("name", wflow.ACTIVATIONS)
def test_activation_derivative_matches_finite_differences(name, key):
    """sigma' as the kernels use it (``value_and_derivative``, hand-written for some) and
    JAX's own derivative, against centred differences (relu: away from its kink only)."""
    act = wflow.get_activation(name)
    x = 3.0 * jax.random.normal(key, (64,))
    if not act.smooth:
        x = jnp.where(jnp.abs(x) < 1e-2, 1.0, x)  # relu has no derivative at 0
    eps = 1e-6

    @jax.jit
    def all_three(x):
        value, deriv = act.value_and_derivative(x)
        fd = (act(x + eps) - act(x - eps)) / (2 * eps)
        return value, deriv, jax.vmap(jax.grad(act.fn))(x), fd

    value, deriv, grad, fd = all_three(x)
    np.testing.assert_allclose(value, act(x), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(deriv, fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)


def _neuron_cases():
    return [pytest.param(d, act, bias, id=f"d{d}-{act}-bias{bias}")
            for d, act, bias in _neuron_grid()]


@pytest.mark.parametrize("d, activation, bias", _neuron_cases())
def test_neuron_field_vjp_matches_autodiff(d, activation, bias, key):
    """The hand-written adjoint behind ``Neuron.field`` (a custom_vjp) equals JAX's reverse
    mode through the plain forward ``field_value``, for both the state and the particles."""
    feat = wflow.make_feature("neuron", d, activation=activation, bias=bias)
    kz, kt, kp = jax.random.split(key, 3)
    Z = jax.random.normal(kz, (7, d))
    Theta = jax.random.normal(kt, (5, feat.k))
    if activation == "relu":  # keep every pre-activation away from the kink
        Theta = Theta.at[:, 2 * d:].set(jnp.where(Theta[:, 2 * d:] >= 0, 5.0, -5.0))
    P = jax.random.normal(kp, (7, d))

    @jax.jit
    def both(Z, Theta, P):
        out, vjp = jax.vjp(feat.field, Z, Theta)
        ref, vjp_ref = jax.vjp(feat.field_value, Z, Theta)
        return out, ref, vjp(P), vjp_ref(P)

    out, ref, (gZ, gT), (gZ_ref, gT_ref) = both(Z, Theta, P)
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(gZ, gZ_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gT, gT_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sharpness", [1.0, 10.0, 100.0])
def test_smooth_relu_approximates_relu(sharpness):
    """|smooth_relu - relu| <= 1/(2 beta) uniformly, smooth_relu(0) = 0, 0 < sigma' < 1."""
    act = wflow.get_activation("smooth_relu", sharpness)
    x = jnp.linspace(-20.0, 20.0, 4001)
    assert float(jnp.max(jnp.abs(act(x) - jax.nn.relu(x)))) <= 0.5 / sharpness + 1e-15
    assert float(act(jnp.zeros(()))) == 0.0
    slope = jax.vmap(jax.grad(act.fn))(x)
    assert bool(jnp.all((slope > 0) & (slope < 1)))


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="model.activation"):
        wflow.get_activation("swish2")
    with pytest.raises(ValueError, match="is not a block"):
        wflow.make_feature("conv", 2)
    with pytest.raises(ValueError, match="model.sharpness"):
        wflow.get_activation("smooth_relu", 0.0)


@pytest.mark.parametrize("kind, d, activation, bias", _feature_cases())
def test_weighted_field_is_weighted_sum(kind, d, activation, bias, key):
    """field(Z, Theta, omega)_i = sum_m omega_m f(Z_i; Theta_m); omega = 1/M is the default."""
    feat = wflow.make_feature(kind, d, activation=activation, bias=bias)
    kz, kt, kw = jax.random.split(key, 3)
    Z = jax.random.normal(kz, (7, d))
    Theta = jax.random.normal(kt, (5, feat.k))
    omega = jax.random.uniform(kw, (5,))

    @jax.jit
    def both(Z, Theta, omega):
        per_particle = jax.vmap(lambda th: jax.vmap(lambda z: feat(z, th))(Z))(Theta)  # (M, N, d)
        return (feat.field(Z, Theta, omega), jnp.einsum("m,mnd->nd", omega, per_particle),
                feat.field(Z, Theta, jnp.full((5,), 0.2)), feat.field(Z, Theta))

    got, expected, uniform, default = both(Z, Theta, omega)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(uniform, default, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("d, activation, bias", _neuron_cases())
def test_neuron_weighted_vjp_matches_autodiff(d, activation, bias, key):
    """With weights, the hand-written adjoint's cotangents (Z, Theta and the weights) equal
    JAX's reverse mode through ``field_value``."""
    feat = wflow.make_feature("neuron", d, activation=activation, bias=bias)
    kz, kt, kp, kw = jax.random.split(key, 4)
    Z = jax.random.normal(kz, (7, d))
    Theta = jax.random.normal(kt, (5, feat.k))
    if activation == "relu":  # keep every pre-activation away from the kink
        Theta = Theta.at[:, 2 * d:].set(jnp.where(Theta[:, 2 * d:] >= 0, 5.0, -5.0))
    P = jax.random.normal(kp, (7, d))
    omega = jax.random.uniform(kw, (5,))
    got = jax.jit(lambda *a: feat.field_vjp(*a))(Z, Theta, P, omega)
    expected = jax.vjp(feat.field_value, Z, Theta, omega)[1](P)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind, d, activation, bias", _feature_cases())
def test_probe_is_zero_with_the_first_variation_gradient(kind, d, activation, bias, key):
    """probe(Z, Q) is exactly 0, its derivative in Z is 0, and in Q it is
    sum_i grad_q [P_i . f(Z_i; q)] (computed particle by particle)."""
    feat = wflow.make_feature(kind, d, activation=activation, bias=bias)
    kz, kq, kp = jax.random.split(key, 3)
    Z = jax.random.normal(kz, (7, d))
    Q = jax.random.normal(kq, (4, feat.k))
    P = jax.random.normal(kp, (7, d))
    assert np.array_equal(np.asarray(feat.probe(Z, Q)), np.zeros((7, d)))
    gZ, gQ = jax.grad(lambda Z, Q: jnp.sum(P * feat.probe(Z, Q)), argnums=(0, 1))(Z, Q)
    assert np.array_equal(np.asarray(gZ), np.zeros((7, d)))

    def pairing(q):  # sum_i P_i . f(Z_i; q)
        return jnp.sum(P * jax.vmap(lambda z: feat(z, q))(Z))

    np.testing.assert_allclose(gQ, jax.vmap(jax.grad(pairing))(Q), rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- blocking (tile)

# (d, N, M, tile, weighted): rows only, rows with a ragged last block, particles too
# (M > tile); the small-d broadcast forward and the matmul forward (d > 8).
_TILINGS = [(2, 37, 23, 100, False), (2, 64, 64, 512, True), (2, 37, 23, 10, True),
            (10, 37, 23, 5, False), (10, 37, 23, 100, True)]


@pytest.mark.parametrize("d, N, M, tile, weighted", _TILINGS)
def test_blocked_field_adjoint_and_probe_equal_the_unblocked_ones(d, N, M, tile, weighted, key):
    """A small ``tile`` splits (N, M) into blocks; the sums are the same to rounding.

    Forward, both reverse rules (the hand-written CPU adjoint and JAX's VJP,
    each per block), with and without weights, and the first-variation probe.
    """
    whole, blocked = wflow.Neuron(d=d), wflow.Neuron(d=d, tile=tile)
    nN, Nc, nM, Mc = blocked.blocks(N, M)
    assert nN * nM > 1 and Nc * Mc <= tile
    kz, kt, kp, kw, kq = jax.random.split(key, 5)
    Z = jax.random.normal(kz, (N, d))
    Theta = jax.random.normal(kt, (M, whole.k))
    P = jax.random.normal(kp, (N, d))
    w = jax.random.uniform(kw, (M,)) if weighted else None
    Q = jax.random.normal(kq, (6, whole.k))

    @jax.jit
    def run(Z, Theta, P, w, Q):
        def one(feat):
            F, vjp = jax.vjp(lambda Z, T, w: feat.field(Z, T, w), Z, Theta, w)
            probe = jax.vjp(lambda q: feat.probe(Z, q), Q)[1](P)[0]
            return F, vjp(P), feat.autodiff_vjp(Z, Theta, P, w), probe
        return one(whole), one(blocked)

    ref, got = run(Z, Theta, P, w, Q)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * float(jnp.max(jnp.abs(b))))


def test_blocks_respect_the_tile():
    from wflow._features import default_tile
    from wflow._features.neuron import cpu_tile

    assert default_tile("cpu") == 2**18 and default_tile("gpu") == 2**24
    # Neuron's default on CPU follows d: 2^22 / d elements within [2^18, 2^21]
    assert [cpu_tile(d) for d in (1, 2, 4, 8, 16, 64)] == [2**21, 2**21, 2**20, 2**19, 2**18,
                                                           2**18]
    for d in (2, 16):
        tile = cpu_tile(d) if jax.default_backend() == "cpu" else default_tile()
        assert wflow.Neuron(d=d).auto_tile() == tile
        assert wflow.Neuron(d=d).blocks(2048, 2048) == wflow.Neuron(d=d, tile=tile).blocks(
            2048, 2048)
    feat = wflow.Neuron(d=2, tile=2**24)
    assert feat.blocks(4096, 4096) == (1, 4096, 1, 4096)  # exactly one tile: not split
    assert feat.blocks(8192, 16384) == (8, 1024, 1, 16384)
    # the particles are split too, so that a block keeps min(N, 64) rows: never blocks of one
    # row (at M >= tile they made the grid's kernel 3-4x slower per pair)
    assert wflow.Neuron(d=2, tile=1000).blocks(10, 4000) == (1, 10, 40, 100)
    assert wflow.Neuron(d=1, tile=2**18).blocks(64, 2**18) == (1, 64, 64, 4096)
    assert wflow.Neuron(d=1, tile=2**18).blocks(1024, 2048) == (8, 128, 1, 2048)
    # the particle chunks are balanced: 5000 in two chunks of 2500, not 4096 + 904 (padded
    # to 8192)
    assert wflow.Neuron(d=1, tile=2**18).blocks(64, 5000) == (1, 64, 2, 2500)
    with pytest.raises(ValueError, match="tile = 0"):
        wflow.Neuron(d=2, tile=0)


def test_blocked_step_holds_no_buffer_larger_than_the_tile():
    """XLA's memory analysis of one compiled layered step (forward + adjoint + update).

    At N = M = 2048, L = 4, d = 2 (float64) one (N, M) buffer is 32 MiB; with
    tile = 2^16 elements (0.5 MiB) the step's temporaries must stay below the
    O(N L d + L M k) arrays plus a few tiles, and far below one (N, M) buffer.
    """
    N, d, L, M, tile = 2048, 2, 4, 2048, 2**16
    S = jax.ShapeDtypeStruct

    def temp(feature):
        def step(x, y, Theta):
            ev = wflow.LayeredDepth().evaluate(wflow.Problem(feature, x, y), Theta)
            return ev.loss, Theta + 0.1 * ev.velocity

        args = (S((N, d), jnp.float64), S((N, 1), jnp.float64), S((L, M, 2 * d + 1), jnp.float64))
        return jax.jit(step).lower(*args).compile().memory_analysis().temp_size_in_bytes

    blocked, whole = temp(wflow.Neuron(d=d, tile=tile)), temp(wflow.Neuron(d=d, tile=N * M))
    floor = 8 * (N * L * d + 3 * L * M * (2 * d + 1))
    assert blocked < floor + 8 * 8 * tile
    assert whole > 8 * N * M > 10 * blocked
