"""``conv_general_dilated`` with gradients written the way XLA:CPU compiles well.

The values are lax's; the gradients are the same sums (bit-identical or within float32
reassociation, tested against lax and torch), expressed differently:

- every gradient is a convolution in XLA:CPU's canonical layout (``b01f_01io->b01f``):
  inside a ``lax.scan`` or ``lax.while_loop`` body XLA:CPU compiles the other layouts
  JAX's transpose rule emits as naive loops, orders of magnitude slower;
- the input gradient of a strided convolution is stride**2 dense stride-1 convolutions,
  one per phase of the input position, because XLA:CPU runs a convolution of the
  stride-dilated output gradient several times slower; with few input channels (an RGB
  stem) it is one matrix product summed back by phase;
- the kernel gradient of a strided 1x1 convolution (a downsample) is one matrix product;
- the operands of kernel gradients are reordered behind ``on_stored``, so XLA does not
  fuse the producing BatchNorm and ReLU into a slow strided transpose.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .barrier import on_stored
from .phases import interleave, sum_by_phase

NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` with the gradients of this module (reverse mode only).

    Covers what the models use: 2-D NHWC/HWIO convolutions without dilation, any stride,
    padding and feature groups. Anything else goes to lax unchanged.
    """
    plain = partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                    lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                    dimension_numbers=dimension_numbers,
                    feature_group_count=feature_group_count,
                    batch_group_count=batch_group_count, precision=precision,
                    preferred_element_type=preferred_element_type)
    if lhs.ndim != 4:
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
    spatial = list(zip(w.shape[:2], strides, pads, x.shape[1:3], g.shape[1:3]))
    return _input_gradient(g, w, groups, spatial), _kernel_gradient(x, g, w, groups, spatial)


_canonical_conv.defvjp(_canonical_fwd, _canonical_bwd)


def _input_gradient(g, w, groups, spatial):
    """The transposed convolution: the kernel flipped with its in/out axes swapped within
    each group (so it stays HWIO), over the output gradient dilated by the stride and
    padded to the input's size; for strided ungrouped kernels, split by phase."""
    kh, kw, in_per_group, out = w.shape
    strides = tuple(st for _, st, _, _, _ in spatial)
    strided = any(st > 1 for st in strides)
    if groups == 1 and strided and in_per_group <= 4:
        return _col2im_input_gradient(g, w, spatial)
    if groups == 1 and strided and all(n_in % st == 0 for (_, st, _, n_in, _) in spatial):
        return _strided_input_gradient(g, w, spatial)
    w_t = (w[::-1, ::-1]
           .reshape(kh, kw, in_per_group, groups, out // groups)
           .transpose(0, 1, 4, 3, 2)
           .reshape(kh, kw, out // groups, groups * in_per_group))
    dx_pads = [(k - 1 - lo, n_in - 1 - (n_out - 1) * s + lo)
               for k, s, (lo, _), n_in, n_out in spatial]
    return lax.conv_general_dilated(g, w_t, (1, 1), dx_pads, lhs_dilation=strides,
                                    dimension_numbers=NHWC, feature_group_count=groups)


def _kernel_gradient(x, g, w, groups, spatial):
    """A convolution whose batch is the input channels, whose features are the images and
    whose window is the (stride-dilated) output gradient; strided 1x1 kernels as one
    matrix product; grouped kernels by JAX's own rule (they need batch groups, which
    XLA:CPU has no canonical kernel for either)."""
    kh, kw = w.shape[:2]
    strides = tuple(st for _, st, _, _, _ in spatial)
    pads = tuple(p for _, _, p, _, _ in spatial)
    if groups != 1:
        _, vjp = jax.vjp(lambda k: _conv(x, k, strides, pads, groups), w)
        return vjp(g)[0].astype(w.dtype)
    if kh == kw == 1 and any(st > 1 for st in strides):
        return _pointwise_strided_kernel_gradient(x, g, strides, pads).astype(w.dtype)
    dw_pads = [(lo, k + (n_out - 1) * s - n_in - lo) for k, s, (lo, _), n_in, n_out in spatial]
    # Both operands reordered as stored (see on_stored): the transposes then read plain
    # arrays instead of recomputing the BatchNorm and ReLU that produced them.
    xt = on_stored(lambda v: v.transpose(3, 1, 2, 0), x)
    gt = on_stored(lambda v: v.transpose(1, 2, 0, 3), g)
    dw = lax.conv_general_dilated(xt, gt, (1, 1), dw_pads, rhs_dilation=strides,
                                  dimension_numbers=NHWC).transpose(1, 2, 0, 3)
    return dw.astype(w.dtype)


def _col2im_input_gradient(g, w, spatial):
    """The input gradient of a strided convolution with few input channels (a stem on
    RGB): one matrix product to every tap's contribution, then the taps summed into the
    input by phase. A convolution producing three channels uses the machine poorly."""
    (kh, sh, (lo_h, hi_h), n_h, _), (kw, sw, (lo_w, hi_w), n_w, _) = spatial
    cols = jnp.einsum("bhwo,ijco->bhwijc", g, w)
    parts = ((i, j, cols[:, :, :, i, j]) for i in range(kh) for j in range(kw))
    dxp = sum_by_phase(parts, (sh, sw), (n_h + lo_h + hi_h, n_w + lo_w + hi_w))
    return dxp[:, lo_h:lo_h + n_h, lo_w:lo_w + n_w]


def _pointwise_strided_kernel_gradient(x, g, strides, pads):
    """The kernel gradient of a strided 1x1 convolution (a downsample): one matrix product
    of the strided input with the output gradient, where the window-dilated convolution
    runs poorly in XLA:CPU. (Split per phase, larger strided kernels ran slower than the
    dilated form, so those keep it.)"""
    (sh, sw), (oh, ow) = strides, g.shape[1:3]

    def strided(v):
        v = jnp.pad(v, ((0, 0), *pads, (0, 0)))
        return v[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]

    sl = on_stored(strided, x)
    return jnp.einsum("bhwc,bhwo->co", sl, g)[None, None]


def _phase(k: int, s: int, lo: int, a: int, n_out: int, n_a: int):
    """For input positions ``s*q + a``: the kernel taps that reach them (reversed, so the
    sum is a correlation) and the padding of the output gradient that aligns them."""
    taps = [t for t in range(k) if (t - a - lo) % s == 0]
    if not taps:
        return [], None
    top = (taps[-1] - a - lo) // s  # the largest offset d with g[q - d]
    return taps[::-1], (top, n_a + len(taps) - 1 - n_out - top)


def _strided_input_gradient(g, w, spatial):
    """The input gradient of a strided convolution as stride**2 stride-1 convolutions.

    Split by the input position's phase (``row % s``, ``col % s``): each phase receives a
    fixed subset of the kernel's taps, so it is a dense stride-1 convolution of the output
    gradient with that sub-kernel; the phases are then interleaved. Needs input sizes
    divisible by the stride and ungrouped kernels.
    """
    (kh, sh, (lo_h, _), n_h, out_h), (kw, sw, (lo_w, _), n_w, out_w) = spatial
    phases = {}
    for a in range(sh):
        taps_h, pad_h = _phase(kh, sh, lo_h, a, out_h, n_h // sh)
        for b in range(sw):
            taps_w, pad_w = _phase(kw, sw, lo_w, b, out_w, n_w // sw)
            if not taps_h or not taps_w:
                continue  # no tap reaches this phase: zeros
            sub = w[jnp.asarray(taps_h)][:, jnp.asarray(taps_w)].transpose(0, 1, 3, 2)
            gp = lax.pad(g, jnp.zeros((), g.dtype),
                         ((0, 0, 0), (*pad_h, 0), (*pad_w, 0), (0, 0, 0)))
            phases[a, b] = lax.conv_general_dilated(gp, sub, (1, 1), "VALID",
                                                    dimension_numbers=NHWC)
    return interleave(phases, (sh, sw), (g.shape[0], n_h // sh, n_w // sw, w.shape[2]))
