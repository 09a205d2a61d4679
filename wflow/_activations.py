"""Activation functions sigma for the `neuron` feature map.

Every activation is a smooth scalar function except plain ``relu``, which is
offered for comparison only: the mean-field theory (well-posedness of the
gradient flow, the global-convergence results) needs sigma to be C^2 with
bounded derivatives, and ``relu`` is not. Use ``smooth_relu`` with a large
``sharpness`` instead:

    smooth_relu(x; beta) = ( x + sqrt(x^2 + 1/beta^2) ) / 2 - 1 / (2 beta),

which is C^infinity, satisfies smooth_relu(0) = 0 (so the degenerate point of
docs/theory.md, "Degenerate start", exists for it, as for tanh) and converges
uniformly to relu with error
at most 1/(2 beta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Activation:
    """A named activation. ``smooth`` is False for those outside the theory."""

    name: str
    fn: Callable[[jax.Array], jax.Array]
    smooth: bool
    zero_at_zero: bool  # sigma(0) == 0: the delta_0 start is a stationary point
    # (sigma(x), sigma'(x)) in one pass; written out where the derivative is
    # cheaper from the value (tanh: 1 - s^2), JAX's jvp otherwise.
    fn_and_derivative: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)

    def value_and_derivative(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """sigma(x) and sigma'(x), elementwise."""
        if self.fn_and_derivative is not None:
            return self.fn_and_derivative(x)
        return jax.jvp(self.fn, (x,), (jnp.ones_like(x),))


def _tanh_and_derivative(x):
    s = jnp.tanh(x)
    return s, 1 - s * s


def _sigmoid_and_derivative(x):
    s = jax.nn.sigmoid(x)
    return s, s * (1 - s)


def _softplus_and_derivative(x):
    return jax.nn.softplus(x), jax.nn.sigmoid(x)


def _smooth_relu(sharpness: float) -> Callable[[jax.Array], jax.Array]:
    eps = 1.0 / sharpness

    def fn(x):
        return 0.5 * (x + jnp.sqrt(x * x + eps * eps)) - 0.5 * eps

    return fn


def _smooth_relu_activation(sharpness: float) -> Activation:
    if not sharpness > 0:
        raise ValueError(f"model.sharpness = {sharpness!r}: must be > 0")
    return Activation("smooth_relu", _smooth_relu(float(sharpness)), True, True)


# The registry: name -> factory(sharpness) -> Activation. Adding an activation is one entry.
ACTIVATIONS: dict[str, Callable[[float], Activation]] = {
    "tanh": lambda _: Activation("tanh", jnp.tanh, True, True, _tanh_and_derivative),
    "sigmoid": lambda _: Activation("sigmoid", jax.nn.sigmoid, True, False,
                                    _sigmoid_and_derivative),
    "softplus": lambda _: Activation("softplus", jax.nn.softplus, True, False,
                                     _softplus_and_derivative),
    "gelu": lambda _: Activation("gelu", lambda x: jax.nn.gelu(x, approximate=False), True, True),
    "silu": lambda _: Activation("silu", jax.nn.silu, True, True),
    "smooth_relu": _smooth_relu_activation,
    "relu": lambda _: Activation("relu", jax.nn.relu, False, True),
}


def get_activation(name: str, sharpness: float = 10.0) -> Activation:
    """Return the activation called ``name`` (a key of ``ACTIVATIONS``).

    ``sharpness`` (beta > 0) is used by ``smooth_relu`` only.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation = {name!r}: allowed are {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](sharpness)
