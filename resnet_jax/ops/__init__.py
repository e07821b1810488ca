"""Custom-gradient ops: the same values as lax's and flax's, with gradients written the
way XLA:CPU compiles well. Opt-in, as module fields:

    >>> from resnet_jax import ops
    >>> fast = ops.cpu_fast(model)  # on the CPU: the ops below; elsewhere: model
    >>> fast.apply(variables, images, train=True, mutable=["batch_stats"])

``conv_general_dilated`` (ops/conv.py), ``max_pool`` (ops/pool.py) and ``relu``
(ops/relu.py) take the arguments of ``jax.lax.conv_general_dilated``,
``flax.linen.max_pool`` and ``flax.linen.relu`` and give their values; their gradients
are ``jax.custom_vjp`` rules (reverse mode only). Some of those rules rely on the barrier
of ops/barrier.py. On a GPU or TPU the backend's own gradient kernels are the fast ones,
so ``cpu_fast`` leaves the model as it is there.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
from jax import lax

from .conv import conv_general_dilated
from .pool import max_pool
from .relu import relu

# The plain ops a model's fields hold by default.
_PLAIN = {"conv": lax.conv_general_dilated, "pool": nn.max_pool, "act": nn.relu}
_FAST = {"conv": conv_general_dilated, "pool": max_pool, "act": relu}


def cpu_fast(model: nn.Module) -> nn.Module:
    """``model`` with the CPU-fast ops in its ``conv``, ``pool`` and ``act`` fields when
    JAX's default backend is the CPU; otherwise ``model`` itself.

    Only fields that hold the plain default are replaced: a guided or redirected ReLU
    (``model.clone(act=...)``) or any other chosen op is kept.
    """
    if jax.default_backend() != "cpu":
        return model
    fields = {f.name for f in dataclasses.fields(model)}
    changes = {name: fast for name, fast in _FAST.items()
               if name in fields and getattr(model, name) is _PLAIN[name]}
    return model.clone(**changes) if changes else model


__all__ = ["conv_general_dilated", "cpu_fast", "max_pool", "relu"]
