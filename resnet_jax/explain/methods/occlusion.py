"""Occlusion (Zeiler & Fergus 2014), computed as captum's ``Occlusion``.

A ``window`` (h, w) slides over the image with ``stride``, from the top-left corner until
the image is covered (the last window of a row or column may be cut off by the border).
Each window, over all channels, is replaced by ``baseline`` and the target's score (its
logit) is read again. A pixel's attribution is the mean score drop
``y(x) - y(x with the window occluded)`` over the windows that cover it.

All windows run in one compiled program: ``lax.map`` over chunks of ``chunk`` windows,
each chunk one forward pass of (chunk x batch) images. The windows form a grid, so a
window's mask is an outer product of a row band and a column band, and spreading the
drops back over the pixels is one einsum (no per-window masks are stored).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import ResNetJaxError
from .base import AttributionMethod


def _pair(v, what: str) -> tuple[int, int]:
    pair = (v, v) if np.isscalar(v) else tuple(v)
    if len(pair) != 2 or any(int(p) != p or p < 1 for p in pair):
        raise ResNetJaxError(f"occlusion {what} must be a positive int or a pair of them, "
                             f"got {v!r}")
    return int(pair[0]), int(pair[1])


def window_bands(size: int, window: int, stride: int) -> np.ndarray:
    """(n, size) 0/1 bands: band i covers ``[i * stride, i * stride + window)`` clipped to
    the image; n = ceil((size - window) / stride) + 1 (captum's shift count)."""
    n = math.ceil((size - window) / stride) + 1
    starts = np.arange(n)[:, None] * stride
    pos = np.arange(size)[None, :]
    return ((pos >= starts) & (pos < starts + window)).astype(np.float32)


def occlusion_grid(hw, window=16, stride=8) -> tuple[np.ndarray, np.ndarray]:
    """Row and column bands ``(ny, H)``, ``(nx, W)`` of the windows over an ``hw`` image.
    A window larger than the image is clipped to it; a stride larger than a window that
    does not span the image would leave pixels unscored, so it is an error."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    wh, ww = min(wh, hw[0]), min(ww, hw[1])
    for s, w, n, axis in ((sh, wh, hw[0], "height"), (sw, ww, hw[1], "width")):
        if s > w and w < n:
            raise ResNetJaxError(
                f"occlusion stride {s} is larger than the window {w} along the {axis}: "
                f"pixels between windows would get no score; use a stride <= {w}")
    return window_bands(hw[0], wh, sh), window_bands(hw[1], ww, sw)


class Occlusion(AttributionMethod):
    name = "occlusion"
    reduce = "sum"  # every channel of a pixel holds the same value; signed (drop > 0 = evidence)

    def attributions(self, model, variables, x, t, *, key=None, window=16, stride=8,
                     baseline=0.0, chunk=None, **options):
        """(T, B, H, W, C) mean score drops; ``baseline``: a value or an array that
        broadcasts to ``x``; ``chunk``: windows per forward pass (default: 32 images)."""
        fwd = self.forward(model, variables)
        b, h, w, c = x.shape
        rows, cols = occlusion_grid((h, w), window, stride)
        ny, nx = len(rows), len(cols)
        n = ny * nx
        # one extra all-zero window scores the image itself, in the same program
        chunk = max(1, min(n + 1, chunk or 32 // b))
        steps = -(-(n + 1) // chunk)
        ids = np.arange(steps * chunk).reshape(steps, chunk)
        band_y = np.zeros((steps, chunk, h), np.float32)
        band_x = np.zeros((steps, chunk, w), np.float32)
        real = ids < n
        band_y[real], band_x[real] = rows[ids[real] // nx], cols[ids[real] % nx]
        base = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)

        def scores(bands):
            by, bx = bands
            mask = (by[:, :, None] * bx[:, None, :])[:, None, :, :, None]  # (k, 1, H, W, 1)
            xo = x[None] * (1 - mask) + base[None] * mask
            logits = fwd(xo.reshape((-1, h, w, c))).reshape((chunk, b, -1))
            return jnp.take_along_axis(logits, jnp.broadcast_to(t, (chunk,) + t.shape), axis=-1)

        y = jax.lax.map(scores, (jnp.asarray(band_y), jnp.asarray(band_x)))
        y = y.reshape((-1,) + t.shape)  # (steps * chunk, B, T)
        d = (y[n][None] - y[:n]).reshape(ny, nx, b, -1)
        hi = jax.lax.Precision.HIGHEST
        total = jnp.einsum("iy,ijbt,jx->tbyx", jnp.asarray(rows), d, jnp.asarray(cols),
                           precision=hi)
        counts = np.outer(rows.sum(0), cols.sum(0))
        attr = total / jnp.asarray(counts, x.dtype)
        return jnp.broadcast_to(attr[..., None], attr.shape + (c,))
