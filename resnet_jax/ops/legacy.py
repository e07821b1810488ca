"""TEMPORARY (issue 16 transition): the old context managers ``fast_gradients`` /
``loop_friendly_gradients`` / ``relu_variant``, kept only until every caller selects its
ops with module fields (``resnet_jax.ops.cpu_fast``, ``model.clone(act=...)``).

While it exists the models' default fields are the dispatchers below, which behave as
lax's and flax's ops outside the contexts. This module is deleted at the end of the change.
"""

from __future__ import annotations

import contextlib
import contextvars

import flax.linen as nn
import jax
from jax import lax

from .conv import conv_general_dilated as _fast_conv
from .pool import max_pool as _fast_pool
from .relu import relu as _fast_relu

_FAST = contextvars.ContextVar("resnet_jax_fast_gradients", default=False)
_RELU = contextvars.ContextVar("resnet_jax_relu_variant", default=None)


@contextlib.contextmanager
def fast_gradients(enabled: bool = True):
    token = _FAST.set(bool(enabled))
    try:
        yield
    finally:
        _FAST.reset(token)


loop_friendly_gradients = fast_gradients


@contextlib.contextmanager
def relu_variant(fn):
    token = _RELU.set(fn)
    try:
        yield
    finally:
        _RELU.reset(token)


def _fast() -> bool:
    return _FAST.get() and jax.default_backend() == "cpu"


def conv(*args, **kwargs):
    return (_fast_conv if _fast() else lax.conv_general_dilated)(*args, **kwargs)


def pool(x, window_shape, strides=None, padding="VALID"):
    return (_fast_pool if _fast() else nn.max_pool)(x, window_shape, strides=strides,
                                                    padding=padding)


def act(x):
    fn = _RELU.get()
    if fn is not None:
        return fn(x)
    return _fast_relu(x) if _fast() else nn.relu(x)
