"""Maps as pytorch-grad-cam makes them: bilinear resizing, scaling to [0, 1], channel
reduction of input attributions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of OpenCV's INTER_LINEAR resize along one axis: half-pixel
    centres, ``src = (dst + 0.5) * n_in / n_out - 0.5``, clamped at the borders."""
    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        a, f = i0[o], frac[o]
        if a < 0:
            m[o, 0] = 1.0
        elif a >= n_in - 1:
            m[o, n_in - 1] = 1.0
        else:
            m[o, a] += 1.0 - f
            m[o, a + 1] += f
    return m.astype(np.float32)


def resize_maps(maps, hw: tuple[int, int]):
    """Bilinear upsampling of ``(..., h, w)`` maps to ``hw`` as two small matmuls."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(hw):
        return maps
    my = jnp.asarray(bilinear_matrix(hw[0], h))
    mx = jnp.asarray(bilinear_matrix(hw[1], w))
    return jnp.einsum("Yh,...hw,Xw->...YX", my, maps, mx,
                      precision=jax.lax.Precision.HIGHEST)


def minmax(maps, eps: float = 1e-7):
    """Per-map ``(m - min) / (max + eps)`` over the last two axes, as pytorch-grad-cam."""
    m = maps - jnp.min(maps, axis=(-2, -1), keepdims=True)
    return m / (eps + jnp.max(m, axis=(-2, -1), keepdims=True))


def finish_cam(cam, hw):
    """pytorch-grad-cam's post-processing: ReLU, scale to [0, 1], resize, scale again."""
    cam = jnp.maximum(cam, 0)
    return minmax(resize_maps(minmax(cam), hw))


def finish_layers(cams, hw):
    """Several layers' maps (each (..., h_l, w_l), before ReLU) as pytorch-grad-cam's
    ``aggregate_multi_layers`` combines them: each ReLU'd, scaled to [0, 1] and resized
    to ``hw``; then the mean over layers, scaled again. One layer: ``finish_cam``."""
    if len(cams) == 1:
        return finish_cam(cams[0], hw)
    resized = [resize_maps(minmax(jnp.maximum(c, 0)), hw) for c in cams]
    return minmax(jnp.mean(jnp.stack(resized), axis=0))


def flip_sign(v, axis=-1):
    """``v`` times the sign of its entry of largest magnitude along ``axis`` (scikit-learn's
    ``svd_flip``): a deterministic sign for a singular or eigen vector."""
    i = jnp.argmax(jnp.abs(v), axis=axis, keepdims=True)
    s = jnp.sign(jnp.take_along_axis(v, i, axis=axis))
    return v * jnp.where(s == 0, 1.0, s)


def principal_projection(weighted):
    """pytorch-grad-cam's ``get_2d_projection``: each map's (..., h, w, K) activations,
    centred over the positions, projected on their first right singular vector -> (..., h, w).

    The first component comes from the eigen-decomposition of the smaller Gram matrix
    (``M M^T`` (hw x hw) or ``M^T M`` (K x K)), and its sign is fixed by ``flip_sign`` (the
    projection's largest entry is positive, as scikit-learn's KernelPCA fixes it): a
    singular vector's sign is arbitrary, and LAPACK builds differ in the one they return.
    """
    *lead, h, w, k = weighted.shape
    m = jnp.nan_to_num(weighted.reshape(*lead, h * w, k))
    m = m - jnp.mean(m, axis=-2, keepdims=True)
    hp = jax.lax.Precision.HIGHEST
    if h * w <= k:
        gram = jnp.einsum("...ik,...jk->...ij", m, m, precision=hp)
        lam, vec = jnp.linalg.eigh(gram)
        proj = vec[..., -1] * jnp.sqrt(jnp.maximum(lam[..., -1:], 0))
    else:
        gram = jnp.einsum("...ik,...il->...kl", m, m, precision=hp)
        vec = jnp.linalg.eigh(gram)[1][..., -1]
        proj = jnp.einsum("...ik,...k->...i", m, vec, precision=hp)
    return flip_sign(proj).reshape(*lead, h, w)


def finish_saliency(sal):
    """Per-image min-max scaling of an input-resolution map to [0, 1]."""
    return minmax(sal)


def reduce_channels(grads, how: str = "absmax"):
    """(..., H, W, C) input attributions -> (..., H, W) maps."""
    if how == "absmax":
        return jnp.max(jnp.abs(grads), axis=-1)
    if how == "abssum":
        return jnp.sum(jnp.abs(grads), axis=-1)
    if how == "sum":
        return jnp.sum(grads, axis=-1)
    raise ValueError(f"unknown channel reduction {how!r}")


def as_batch_maps(maps, multi: bool) -> np.ndarray:
    """(T, B, H, W) -> (B, H, W) or (B, T, H, W)."""
    maps = np.asarray(maps)
    return np.moveaxis(maps, 0, 1) if multi else maps[0]
