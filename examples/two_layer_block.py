"""A two-layer residual block with hidden width h, written as a wflow user would.

    f(z; U, W, b) = U tanh(W z + b) / h,   U (d, h), W (h, d), b (h,)

theta is laid out [U row-major (d*h), W row-major (h*d), b (h)], so k = h (2d + 1).
With h = 1 this is wflow's own "neuron" block. Run it with
``wflow run examples/two_layer.toml`` (the config names this file and the class).
"""

import jax.numpy as jnp
import numpy as np

import wflow


class TwoLayer(wflow.AbstractFeatureMap):
    hidden: int = 4  # h, set by [model.params] hidden = ...

    @property
    def k(self) -> int:
        return self.hidden * (2 * self.d + 1)

    def __call__(self, z, theta):
        d, h = self.d, self.hidden
        U = theta[: d * h].reshape(d, h)
        W = theta[d * h : 2 * d * h].reshape(h, d)
        b = theta[2 * d * h :]
        return U @ jnp.tanh(W @ z + b) / h

    @property
    def reflection(self):
        """U -> -U flips the sign of f (W, b unchanged): lets init.symmetric start at f = 0."""
        return np.concatenate([-np.ones(self.d * self.hidden), np.ones(self.k - self.d * self.hidden)])
