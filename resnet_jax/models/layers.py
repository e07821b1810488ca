"""Layers shared by every model: torch-faithful BatchNorm, convolutions and initialisers.

Everything here follows torchvision's numerics so that ported weights give the same
numbers: BatchNorm with eps 1e-5 and torch's momentum 0.1 (the running statistics move a
tenth of the way to each batch's statistics), the unbiased batch variance in the running
variance as torch keeps it, explicit convolution padding, and torchvision's initialisers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# The open ``deferred_host_draws`` blocks of this thread, innermost last. While one is
# open, host initialisers do not call back to the host: they record (placeholder, key
# data, draw) in it and return zeros, so that the jitted init holds no host callback
# (which XLA's persistent cache refuses) and the caller draws the numbers afterwards, from
# the same keys. Per thread, so another thread's ``model.init`` is unaffected.
_deferred = threading.local()


@dataclasses.dataclass(frozen=True)
class HostDraw:
    """One parameter to draw on the host: ``draw(default_rng(seed words), shape)``."""

    draw: Callable[[np.random.Generator, tuple], np.ndarray]
    shape: tuple
    dtype: np.dtype

    def __call__(self, seed) -> np.ndarray:
        rng = np.random.default_rng(np.asarray(seed, np.uint32).ravel().tolist())
        return np.asarray(self.draw(rng, self.shape), dtype=self.dtype)


@contextlib.contextmanager
def deferred_host_draws():
    """Collect the host draws of the initialisers called inside (see ``_deferred``);
    yields the list of ``(placeholder, key_data, HostDraw)``. Only ``init_variables``'
    compiled init opens one, around its own trace."""
    pending: list = []
    stack = _deferred.__dict__.setdefault("stack", [])
    stack.append(pending)
    try:
        yield pending
    finally:
        stack.pop()


def host_initializer(draw: Callable[[np.random.Generator, tuple], np.ndarray]) -> Callable:
    """A flax initializer whose numbers are drawn on the host by numpy, seeded by the key.

    XLA's CPU compiler spends a long time on every jax.random sampling site, and a ResNet
    has one per convolution; a host callback per site compiles in milliseconds. The draw
    is deterministic in the JAX key.
    ``init_variables`` defers the draws instead (``deferred_host_draws``): same numbers,
    and a program the persistent compilation cache can keep.
    """

    def init(key, shape, dtype=jnp.float32):
        data = jax.random.key_data(key) if jax.dtypes.issubdtype(
            key.dtype, jax.dtypes.prng_key) else key
        host = HostDraw(draw, tuple(shape), np.dtype(dtype))
        stack = getattr(_deferred, "stack", None)
        if stack:
            pending = stack[-1]
            placeholder = jnp.zeros(host.shape, host.dtype)
            pending.append((placeholder, data, host))
            return placeholder
        return jax.pure_callback(host, jax.ShapeDtypeStruct(host.shape, host.dtype), data,
                                 vmap_method="sequential")

    return init


def _kaiming_normal_fan_out(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    # torchvision ResNets: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    # an untruncated normal with variance 2 / fan_out; fan_out = out * kh * kw (HWIO).
    fan_out = shape[-1] * math.prod(shape[:-2])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_out))


conv_kernel_init = host_initializer(_kaiming_normal_fan_out)


def torch_default_init(fan_in: int) -> tuple[Callable, Callable]:
    """torch.nn.Linear's and Conv2d's default: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    init = host_initializer(lambda rng, shape: rng.uniform(-bound, bound, shape))
    return init, init


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last (NHWC), as torch.nn.BatchNorm2d.

    y = (x - mean) / sqrt(var + eps) * scale + bias

    In train mode mean and var are the batch's (biased variance), and the running
    statistics in the ``batch_stats`` collection are updated as torch does:
    ``running = (1 - momentum) * running + momentum * batch`` where the variance enters
    unbiased (times n / (n - 1)), and ``num_batches_tracked`` counts the updates.
    In eval mode the running statistics are used.

    ``momentum`` is torch's convention (0.1), not flax's (0.9 for the same behaviour).
    Statistics are computed in float32 whatever the compute ``dtype``.
    When the batch is sharded over devices with ``jax.sharding``, the means are taken over
    the global batch by XLA; ``axis_name`` is only needed inside ``pmap``/``shard_map``.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        tracked = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        if train:
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axes)
            count = math.prod(x.shape[:-1])
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count *= jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (count / max(count - 1, 1))
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
                tracked.value = tracked.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value

        # Fold the normalisation into one multiply-add per element.
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        add = bias.astype(jnp.float32) - mean * mul
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * mul.astype(dtype) + add.astype(dtype)


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    name: str | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    conv_general_dilated: Callable = jax.lax.conv_general_dilated,
) -> nn.Conv:
    """A bias-free convolution padded as torch pads it: kernel // 2 on every side;
    ``conv_general_dilated`` is the op that computes it (a model's ``conv`` field)."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=False,
        kernel_init=conv_kernel_init,
        conv_general_dilated=conv_general_dilated,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


TAP_SUFFIX = ":out"


def tap_key(name: str) -> str:
    """The variable name under which the named output ``name`` is stored.

    Outputs share their names with the submodules that make them (``conv1``), so in the
    ``intermediates`` and ``perturbations`` collections they carry a suffix.
    """
    return name + TAP_SUFFIX


def tap_name(key: str) -> str:
    """Inverse of ``tap_key``."""
    return key[: -len(TAP_SUFFIX)] if key.endswith(TAP_SUFFIX) else key


class Tap:
    """Mixin: publish a named intermediate output.

    ``tap(name, x)`` stores ``x`` in the ``intermediates`` collection (when it is mutable)
    and adds the ``perturbations`` entry ``tap_key(name)`` to it, so ``jax.grad`` with
    respect to a zero perturbation is the gradient with respect to the output. When a
    ``perturbations`` collection is passed it must hold an entry for every tap (flax
    refuses a partial one; zeros cost nothing under jit); without one, taps are free.
    """

    def tap(self, name: str, x):
        key = tap_key(name)
        x = self.perturb(key, x)
        self.sow("intermediates", key, x)
        return x
