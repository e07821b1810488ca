"""SmoothGrad (Smilkov et al. 2017): the mean input gradient over ``samples`` copies of the
input with Gaussian noise of standard deviation ``noise`` * (max - min) of each image.
The samples are a ``lax.scan``: memory stays that of one batch."""

import jax
import jax.numpy as jnp

from .base import AttributionMethod


class SmoothGrad(AttributionMethod):
    name = "smoothgrad"

    def attributions(self, model, variables, x, t, *, key=None, samples=25, noise=0.15, **options):
        fwd = self.forward(model, variables)
        span = jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True)
        sigma = noise * span

        def step(total, k):
            noisy = x + sigma * jax.random.normal(k, x.shape, x.dtype)
            return total + self.input_grads(fwd, noisy, t, model.num_classes)[1], None

        zeros = jnp.zeros((t.shape[1],) + x.shape, x.dtype)
        total, _ = jax.lax.scan(step, zeros, jax.random.split(key, samples))
        return total / samples
