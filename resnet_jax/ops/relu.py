"""The ReLU whose gradient is masked by its stored output."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .barrier import on_stored


@jax.custom_vjp
def relu(x):
    """``max(x, 0)`` (``flax.linen.relu``), whose gradient's mask is read from the output
    as stored.

    JAX's rule masks with ``x > 0``. In a residual stage ``x`` is the sum of a BatchNorm
    and the previous block's output, itself such a sum, so XLA:CPU fused the whole chain
    into every mask and read several stored activations per ReLU. The output ``y`` is
    stored anyway (the next convolution's input); ``y > 0`` is the same mask, computed
    from it behind ``on_stored`` so that XLA cannot fuse the chain back in.
    Reverse mode only (a ``jax.custom_vjp``).
    """
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y, g):
    mask = on_stored(lambda v: v > 0, y)
    return (jnp.where(mask, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)
