"""ReLUs with modified backward passes, for a model's ``act`` field.

Every ReLU of a model is its ``act`` field, so ``model.clone(act=guided_relu)`` is the
same network whose compiled program carries the modified gradient (the forward values
are the ReLU's); the variant is part of the module, and so of every cache key:

- ``guided_relu`` (Springenberg et al. 2015): the backward pass keeps only positive
  gradients at positive inputs, ``g * (x > 0) * (g > 0)``.
- ``redirected_relu`` (Lucid): when no gradient at all reaches an example through a
  ReLU, pass the gradient on except where it would push an already negative input
  further down, so optimisation can start from dead units. Here the cotangent is that of
  a loss being minimised: ``g > 0`` pushes the input lower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["guided_relu", "redirected_relu"]


@jax.custom_vjp
def guided_relu(x):
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    """Both ReLUs' forward: the ReLU, keeping its input for the backward rule."""
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_relu_fwd, _guided_bwd)


@jax.custom_vjp
def redirected_relu(x):
    return jnp.maximum(x, 0)


def _redirected_bwd(x, g):
    relu_grad = jnp.where(x < 0, jnp.zeros_like(g), g)
    redirected = jnp.where((x < 0) & (g > 0), jnp.zeros_like(g), g)
    if x.ndim < 2:
        return (relu_grad,)
    axes = tuple(range(1, x.ndim))
    alive = jnp.sum(jnp.square(relu_grad), axis=axes, keepdims=True) > 0
    return (jnp.where(alive, relu_grad, redirected),)


redirected_relu.defvjp(_relu_fwd, _redirected_bwd)
