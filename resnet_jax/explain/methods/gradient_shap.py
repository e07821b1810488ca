"""Gradient SHAP (Lundberg & Lee 2017; Erion et al.'s expected gradients), computed as
captum's ``GradientShap``:

    phi(x) = E over (x', alpha, eps) of (x + eps - x') * dy/dx at x' + alpha (x + eps - x')

with x' drawn from a distribution of ``baselines`` (R, H, W, C), alpha ~ U(0, 1) and
eps ~ N(0, ``stdev``^2) per pixel, averaged over ``samples`` draws per image. The samples
are a ``lax.scan``: memory stays that of one batch.

``draws=(index (S, B), alpha (S, B), noise (S, B, H, W, C))`` replaces the random draws
(``noise`` is added as it is), so a run can be repeated with another library's draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...errors import ResNetJaxError
from .base import AttributionMethod


def _baselines(baselines, x):
    """(R, H, W, C) baseline distribution: None -> the zero image (the data set's mean
    for normalised inputs), a value -> that constant image, an (H, W, C) image or a stack."""
    if baselines is None:
        baselines = 0.0
    base = jnp.asarray(baselines, x.dtype)
    if base.ndim == 0:
        return jnp.broadcast_to(base, (1,) + x.shape[1:])
    if base.ndim == 3:
        base = base[None]
    if base.ndim != 4 or base.shape[1:] != x.shape[1:]:
        raise ResNetJaxError(f"gradient_shap baselines must be a value, an image of shape "
                             f"{tuple(x.shape[1:])} or a stack (R, *that), got {base.shape}")
    return base


def _draws(key, base, x, samples, stdev):
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (samples, x.shape[0])
    index = jax.random.randint(k1, shape, 0, base.shape[0])
    alpha = jax.random.uniform(k2, shape, x.dtype)
    return index, alpha, jax.random.split(k3, samples)


class GradientShap(AttributionMethod):
    name = "gradient_shap"
    reduce = "abssum"

    def attributions(self, model, variables, x, t, *, key=None, samples=16, stdev=0.0,
                     baselines=None, draws=None, **options):
        fwd = self.forward(model, variables)
        base = _baselines(baselines, x)
        if draws is None:
            if key is None:
                raise ResNetJaxError("gradient_shap draws its baselines, points and noise "
                                     "at random: give a key (jax.random.key(seed)) or draws")
            index, alpha, noise = _draws(key, base, x, samples, stdev)
        else:
            index, alpha, noise = (jnp.asarray(d) for d in draws)

        def step(total, s):
            i, a, eps = s
            if draws is None:
                eps = stdev * jax.random.normal(eps, x.shape, x.dtype) if stdev else 0.0
            xn = x + eps
            ref = base[i]
            point = ref + a[:, None, None, None] * (xn - ref)
            grads = self.input_grads(fwd, point, t, model.num_classes)[1]
            return total + (xn - ref)[None] * grads, None

        zeros = jnp.zeros((t.shape[1],) + x.shape, x.dtype)
        total, _ = jax.lax.scan(step, zeros, (index, alpha, noise))
        return total / index.shape[0]
