"""Variants of the models' gradients, chosen while a function is traced.

The models call ``conv_general_dilated`` and ``relu`` from here. Both behave exactly like
``jax.lax.conv_general_dilated`` and ``flax.linen.relu`` unless a context below is active
while the model is *traced* (the first call of a jitted function, ``jax.make_jaxpr``); a
compiled program keeps the variant it was traced with. The contexts use ``contextvars``,
so threads and other traces are unaffected.

``loop_friendly_gradients()``
    Convolution gradients written as convolutions in XLA:CPU's canonical layout. Inside a
    ``lax.scan`` or ``lax.while_loop`` body, XLA:CPU leaves the input and kernel gradients
    that JAX's transpose rule emits (dimension labels ``b01f_01oi`` and ``f01b_i01o``) in
    their original form and compiles them as naive loops instead of its Eigen kernels:
    measured here, a scanned 3x3 convolution's input gradient ran 6x slower and its kernel
    gradient 200x slower than the same gradients outside a loop. This variant computes
    the same sums (bit-identical results on this machine) as canonical ``b01f_01io``
    convolutions with explicit transposes, which XLA compiles as it does outside loops.
    Use it around code that differentiates a model inside a loop (activation
    maximisation does). Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) of a
    model traced under it is not available (it is a ``jax.custom_vjp``).

``relu_variant(fn)``
    Every ReLU of the model calls ``fn`` instead (guided backprop, Lucid's redirected
    ReLU: see ``resnet_jax.explain.relu``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")

_LOOP_FRIENDLY = contextvars.ContextVar("resnet_jax_loop_friendly_gradients", default=False)
_RELU = contextvars.ContextVar("resnet_jax_relu_variant", default=None)


@contextlib.contextmanager
def loop_friendly_gradients(enabled: bool = True):
    """Trace the models' convolutions with canonical-layout gradients (see the module)."""
    token = _LOOP_FRIENDLY.set(bool(enabled))
    try:
        yield
    finally:
        _LOOP_FRIENDLY.reset(token)


@contextlib.contextmanager
def relu_variant(fn: Callable | None):
    """Trace the models' ReLUs as ``fn`` (``None``: the plain ReLU)."""
    token = _RELU.set(fn)
    try:
        yield
    finally:
        _RELU.reset(token)


def relu(x):
    """The models' ReLU: ``flax.linen.relu`` unless ``relu_variant`` says otherwise."""
    fn = _RELU.get()
    return nn.relu(x) if fn is None else fn(x)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, with canonical gradients under ``loop_friendly_gradients``.

    The variant covers what the models use: 2-D NHWC/HWIO convolutions without dilation,
    any stride, padding and feature groups. Anything else goes to lax unchanged.
    """
    plain = partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                    lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                    dimension_numbers=dimension_numbers,
                    feature_group_count=feature_group_count,
                    batch_group_count=batch_group_count, precision=precision,
                    preferred_element_type=preferred_element_type)
    if not _LOOP_FRIENDLY.get() or lhs.ndim != 4:
        return plain()
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    undilated = all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    if (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
            or not undilated or batch_group_count != 1 or precision is not None
            or preferred_element_type is not None):
        return plain()
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _canonical_conv(lhs, rhs, strides, pads, int(feature_group_count))


def _conv(x, w, strides, pads, groups):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC,
                                    feature_group_count=groups)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _canonical_conv(x, w, strides, pads, groups):
    return _conv(x, w, strides, pads, groups)


def _canonical_fwd(x, w, strides, pads, groups):
    return _conv(x, w, strides, pads, groups), (x, w)


def _canonical_bwd(strides, pads, groups, residuals, g):
    x, w = residuals
    kh, kw, in_per_group, out = w.shape
    spatial = list(zip((kh, kw), strides, pads, x.shape[1:3], g.shape[1:3]))

    # Input gradient: the transposed convolution. The kernel is flipped and its in/out
    # axes swapped within each group, so the convolution stays HWIO; the output gradient
    # is dilated by the stride and padded so that the result has the input's size.
    w_t = (w[::-1, ::-1]
           .reshape(kh, kw, in_per_group, groups, out // groups)
           .transpose(0, 1, 4, 3, 2)
           .reshape(kh, kw, out // groups, groups * in_per_group))
    dx_pads = [(k - 1 - lo, n_in - 1 - (n_out - 1) * s + lo)
               for k, s, (lo, _), n_in, n_out in spatial]
    dx = lax.conv_general_dilated(g, w_t, (1, 1), dx_pads, lhs_dilation=strides,
                                  dimension_numbers=NHWC, feature_group_count=groups)

    if groups == 1:
        # Kernel gradient: a convolution whose batch is the input channels, whose
        # features are the images and whose window is the (stride-dilated) output.
        dw_pads = [(lo, k + (n_out - 1) * s - n_in - lo)
                   for k, s, (lo, _), n_in, n_out in spatial]
        dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3),
                                      (1, 1), dw_pads, rhs_dilation=strides,
                                      dimension_numbers=NHWC).transpose(1, 2, 0, 3)
    else:
        # Grouped kernel gradients need batch groups, which XLA:CPU has no canonical
        # kernel for either; JAX's own rule.
        _, vjp = jax.vjp(lambda k: _conv(x, k, strides, pads, groups), w)
        (dw,) = vjp(g)
    return dx, dw.astype(w.dtype)


_canonical_conv.defvjp(_canonical_fwd, _canonical_bwd)
