"""Integrated Gradients (Sundararajan et al. 2017):
(x - x') * mean over alpha in (0, 1] of dy/dx at x' + alpha (x - x'), with the baseline
x' = 0 (the mean image, for normalised inputs) and a ``steps``-point Riemann sum (midpoints)
computed in a ``lax.scan``. The map is |sum over channels|."""

import jax
import jax.numpy as jnp

from .base import AttributionMethod


class IntegratedGradients(AttributionMethod):
    name = "integrated_gradients"
    reduce = "abssum"

    def attributions(self, model, variables, x, t, *, key=None, steps=32, baseline=0.0, **options):
        fwd = self.forward(model, variables)
        base = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
        alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps

        def step(total, a):
            point = base + a * (x - base)
            return total + self.input_grads(fwd, point, t, model.num_classes)[1], None

        zeros = jnp.zeros((t.shape[1],) + x.shape, x.dtype)
        total, _ = jax.lax.scan(step, zeros, alphas)
        return (x - base)[None] * total / steps
