"""Weighted measures in the depth discretizations and the first variation's gradient.

A measure slice is points Theta_l with weights omega_l (1/M for particles); the
depth discretizations take both, and ``first_variation_gradient`` evaluates
grad_theta V_l anywhere. Float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wflow

L, M, N = 4, 6, 16


def _setup(seed=0):
    feat = wflow.make_feature("neuron", 2)
    x, y = wflow.make_dataset("teacher", n=N, dim=2, feature=feat, seed=seed)
    problem = wflow.Problem(feat, jnp.asarray(x), jnp.asarray(y))
    theta = wflow.init_particles("gaussian", jax.random.PRNGKey(seed + 1), L, M, feat.k,
                                 dtype=jnp.float64)
    return problem, theta


DEPTHS = [
    pytest.param(wflow.LayeredDepth(), 1e-13, id="layers"),
    pytest.param(wflow.ContinuousDepth(rtol=1e-10, atol=1e-10), 1e-12, id="continuous",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("depth, tol", DEPTHS)
def test_uniform_weights_are_the_particles(depth, tol):
    """weights = 1/M everywhere gives the particles' loss and velocities."""
    problem, theta = _setup()
    a = depth.evaluate(problem, theta)
    b = depth.evaluate(problem, theta, jnp.full((L, M), 1.0 / M))
    assert float(b.loss) == pytest.approx(float(a.loss), rel=tol)
    np.testing.assert_allclose(b.velocity, a.velocity, rtol=1e-10, atol=tol)
    assert float(b.stationarity) == pytest.approx(float(a.stationarity), rel=1e-10)


@pytest.mark.parametrize("depth, tol", DEPTHS)
def test_duplicated_particles_with_half_weights(depth, tol):
    """Every particle split into two copies of half its weight: the same measure."""
    problem, theta = _setup()
    a = depth.evaluate(problem, theta)
    doubled = jnp.concatenate([theta, theta], axis=1)
    b = depth.evaluate(problem, doubled, jnp.full((L, 2 * M), 0.5 / M))
    assert float(b.loss) == pytest.approx(float(a.loss), rel=tol)
    np.testing.assert_allclose(b.velocity[:, :M], a.velocity, rtol=1e-10, atol=tol)
    np.testing.assert_allclose(b.velocity[:, M:], a.velocity, rtol=1e-10, atol=tol)


@pytest.mark.parametrize("depth, tol", DEPTHS)
def test_first_variation_gradient_at_the_particles_is_minus_their_velocity(depth, tol):
    problem, theta = _setup()
    ev = depth.evaluate(problem, theta)
    loss, G = depth.first_variation_gradient(problem, theta, theta)
    assert float(loss) == pytest.approx(float(ev.loss), rel=1e-14)
    np.testing.assert_allclose(G, -ev.velocity, rtol=1e-12, atol=tol)


@pytest.mark.parametrize("depth, tol", DEPTHS)
def test_first_variation_gradient_is_the_derivative_of_an_infinitesimal_mass(depth, tol):
    """grad V_l(q) = (1/w_l) d/dq [dE/d eps] for a particle q of weight eps added to slice l.

    d/d eps at eps = 0 by a centred difference of jax.grad in q (error O(eps^2) + round-off
    / eps: 1e-12 + 1e-10 relative at eps = 1e-6); reverse-over-reverse through diffrax is not
    available, so the same check serves both depth discretizations.
    """
    problem, theta = _setup()
    k = problem.feature.k
    q = jax.random.normal(jax.random.PRNGKey(7), (3, k))
    _, G = depth.first_variation_gradient(problem, theta, q)
    for slice_ in (0, 2):
        def energy(eps, q, slice_=slice_):
            Theta = jnp.concatenate([theta, jnp.broadcast_to(q, (L, 3, k))], axis=1)
            w = jnp.concatenate([jnp.full((L, M), 1.0 / M),
                                 jnp.zeros((L, 3)).at[slice_].set(eps)], axis=1)
            return depth.loss(problem, Theta, w)

        grad_q = jax.jit(jax.grad(energy, argnums=1))
        eps = 1e-6
        expected = (grad_q(eps, q) - grad_q(-eps, q)) / (2 * eps) * L  # 1 / w_l = L
        np.testing.assert_allclose(G[slice_], expected, rtol=1e-7,
                                   atol=1e-7 * float(jnp.max(jnp.abs(expected))))


def test_first_variation_gradient_layered_is_the_discrete_adjoint_formula():
    """Layered: grad V_l(q) = (1/N) sum_i grad_q [p_{l+1,i} . f(z_{l,i}; q)], with the states
    z_l of the recursion z_{l+1} = z_l + F_l(z_l) / L (a plain Python loop here) and
    p_{l+1} = N dE/dz_{l+1} from jax.grad of the remaining layers."""
    problem, theta = _setup()
    q = jax.random.normal(jax.random.PRNGKey(3), (5, problem.feature.k))
    _, G = wflow.LayeredDepth().first_variation_gradient(problem, theta, q)

    def run(z, start):  # layers start..L-1, then the loss
        for j in range(start, L):
            z = z + problem.feature.field(z, theta[j]) / L
        return problem.loss(z)

    z = problem.embed(problem.x)
    for l in range(L):
        z_next = z + problem.feature.field(z, theta[l]) / L
        p = problem.n * jax.grad(run)(z_next, l + 1)

        def pairing(qq, z=z, p=p):
            return jnp.sum(p * jax.vmap(lambda zi: problem.feature(zi, qq))(z)) / problem.n

        np.testing.assert_allclose(G[l], jax.vmap(jax.grad(pairing))(q), rtol=1e-12, atol=1e-13)
        z = z_next
