"""``max_pool`` with its gradient routed by masks instead of XLA's select-and-scatter.

The gradient of ``lax.reduce_window`` max is select-and-scatter, which XLA:CPU runs as a
slow loop. Here the forward pass takes the maximum of the window's strided slices, and the
gradient goes through masks to the first maximum of each window in row-major order, as
select-and-scatter and torch route it. ResNet's stem pool (3x3, stride 2, padding 1, even
sizes) is computed by pairs of rows and columns, which XLA fuses with the BatchNorm and
ReLU that produce its input.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .phases import sum_by_phase


def max_pool(x, window_shape, strides=None, padding="VALID"):
    """``flax.linen.max_pool`` (same arguments and values) with the gradient of this
    module for NHWC inputs (reverse mode only); other ranks go to flax unchanged."""
    window = tuple(int(w) for w in window_shape)
    strides = (1,) * len(window) if strides is None else tuple(int(s) for s in strides)
    if x.ndim != 4 or len(window) != 2:
        return nn.max_pool(x, window, strides=strides, padding=padding)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _masked_max_pool(x, window, strides, padding)


def _pool_geometry(x, window, strides, padding):
    (lo_h, hi_h), (lo_w, hi_w) = padding
    hp, wp = x.shape[1] + lo_h + hi_h, x.shape[2] + lo_w + hi_w
    return (hp, wp), ((hp - window[0]) // strides[0] + 1, (wp - window[1]) // strides[1] + 1)


def _pairs_geometry(x, window, strides, padding) -> bool:
    """ResNet's stem pool (3x3, stride 2, one row and column of padding before) on even
    sizes, which ``_pool_by_pairs`` computes."""
    return (window == (3, 3) and strides == (2, 2) and padding[0][0] == padding[1][0] == 1
            and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
            and _pool_geometry(x, window, strides, padding)[1] == (x.shape[1] // 2,
                                                                    x.shape[2] // 2))


def _pool_by_pairs(x):
    """3x3 stride-2 max-pool with one row and column of -inf padding before, on even sizes.

    Output (q, r) is the maximum over rows 2q-1, 2q, 2q+1 and the same columns. Reshaping
    rows into (even, odd) pairs gives rows 2q and 2q+1 as plain slices and row 2q-1 as the
    previous pair's odd row, so XLA fuses the whole pool with the ops that produce ``x``
    where ``reduce_window`` or strided slices read a stored input. Same maxima.
    """
    def pairs(v, axis):
        shape = v.shape
        v = v.reshape(*shape[:axis], shape[axis] // 2, 2, *shape[axis + 1:])
        even = lax.index_in_dim(v, 0, axis + 1, keepdims=False)
        odd = lax.index_in_dim(v, 1, axis + 1, keepdims=False)
        pad = [(0, 0)] * odd.ndim
        pad[axis] = (1, 0)
        before = jnp.pad(lax.slice_in_dim(odd, 0, odd.shape[axis] - 1, axis=axis), pad,
                         constant_values=-jnp.inf)
        return jnp.maximum(jnp.maximum(even, odd), before)

    return pairs(pairs(x, 1), 2)


def _pool_slices(xp, window, strides, out_hw):
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, lax.slice(xp, (0, i, j, 0),
                                  (xp.shape[0], i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1,
                                   xp.shape[3]), (1, sh, sw, 1))


def _first_maxima(x, y, window, strides, padding):
    """Yield ``(i, j, hit)`` per window offset: where offset (i, j) holds its window's
    first maximum in row-major order (the element select-and-scatter and torch pick)."""
    (lo_h, hi_h), (lo_w, hi_w) = padding
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    for i, j, sl in _pool_slices(xp, window, strides, y.shape[1:3]):
        hit = (sl == y) & ~taken
        taken = taken | hit
        yield i, j, hit


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _masked_max_pool(x, window, strides, padding):
    if _pairs_geometry(x, window, strides, padding):
        return _pool_by_pairs(x)
    (lo_h, hi_h), (lo_w, hi_w) = padding
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-jnp.inf)
    _, out_hw = _pool_geometry(x, window, strides, padding)
    y = None
    for _, _, sl in _pool_slices(xp, window, strides, out_hw):
        y = sl if y is None else jnp.maximum(y, sl)
    return y


def _masked_max_pool_fwd(x, window, strides, padding):
    y = _masked_max_pool(x, window, strides, padding)
    return y, (x, y)


def _masked_max_pool_bwd(window, strides, padding, residuals, g):
    x, y = residuals
    (lo_h, hi_h), (lo_w, hi_w) = padding
    hp, wp = _pool_geometry(x, window, strides, padding)[0]
    parts = ((i, j, jnp.where(hit, g, jnp.zeros((), g.dtype)))
             for i, j, hit in _first_maxima(x, y, window, strides, padding))
    dxp = sum_by_phase(parts, strides, (hp, wp))
    return (dxp[:, lo_h:hp - hi_h, lo_w:wp - hi_w],)


_masked_max_pool.defvjp(_masked_max_pool_fwd, _masked_max_pool_bwd)
