"""Random transformations for robust activation maximisation (Lucid's "transformation
robustness"): each is ``fn(key, images) -> images`` with a shape fixed at trace time.

Geometric transforms (pad, jitter, scale, rotate, resize) are affine maps of pixel
coordinates; ``compose`` multiplies the matrices of consecutive ones and resamples the
image once (bilinear), so a chain of four costs one resample. Each transform fills what
falls outside its own input with its ``fill``, as when they run one after another: in
Lucent's standard set the padding is grey (0.5) and what jitter, scale and rotation
bring in from outside their input is black (0). One random draw per step is shared by
the batch, as in Lucent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Affine:
    """``matrix(key, in_hw) -> (M, out_hw)`` with ``M`` (3x3) taking output pixel
    coordinates (y, x, 1) to input coordinates; output points that fall outside the
    input read ``fill``."""

    matrix: Callable
    fill: float = 0.0
    name: str = ""

    def __call__(self, key, images):
        return compose([self])(key, images)


def _shift(dy, dx):
    return jnp.array([[1.0, 0.0, dy], [0.0, 1.0, dx], [0.0, 0.0, 1.0]], jnp.float32)


def _about_center(m2, hw):
    cy, cx = (hw[0] - 1) / 2.0, (hw[1] - 1) / 2.0
    m = jnp.eye(3, dtype=jnp.float32).at[:2, :2].set(m2)
    return _shift(cy, cx) @ m @ _shift(-cy, -cx)


def pad(width: int, fill: float = 0.5) -> Affine:
    """Pad every side by ``width`` pixels of value ``fill``."""
    return Affine(lambda key, hw: (_shift(-width, -width), (hw[0] + 2 * width, hw[1] + 2 * width)),
                  fill, f"pad({width})")


def jitter(d: int) -> Affine:
    """Translate by a random whole number of pixels in [0, d) along each axis."""

    def matrix(key, hw):
        dy, dx = jax.random.randint(key, (2,), 0, d).astype(jnp.float32)
        return _shift(-dy, -dx), hw

    return Affine(matrix, 0.0, f"jitter({d})")


def random_scale(scales: Sequence[float]) -> Affine:
    """Zoom about the centre by a factor drawn from ``scales`` (the size is kept)."""
    choices = jnp.asarray(scales, jnp.float32)

    def matrix(key, hw):
        s = jax.random.choice(key, choices)
        return _about_center(jnp.eye(2) / s, hw), hw

    return Affine(matrix, 0.0, "random_scale")


def random_rotate(degrees: Sequence[float]) -> Affine:
    """Rotate about the centre by an angle (degrees) drawn from ``degrees``; a positive
    angle turns the image counter-clockwise as displayed (torchvision's and kornia's
    convention, which Lucent uses): a pixel right of the centre moves above it."""
    choices = jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)

    def matrix(key, hw):
        a = jax.random.choice(key, choices)
        c, s = jnp.cos(a), jnp.sin(a)
        # Output -> input in (y, x) with y down: the inverse rotation, clockwise by a.
        return _about_center(jnp.array([[c, s], [-s, c]]), hw), hw

    return Affine(matrix, 0.0, "random_rotate")


def resize(size: int | tuple[int, int]) -> Affine:
    """Bilinear resize with aligned corners (as Lucent's final upsampling to 224)."""
    out = (size, size) if np.isscalar(size) else tuple(size)

    def matrix(key, hw):
        sy = (hw[0] - 1) / max(out[0] - 1, 1)
        sx = (hw[1] - 1) / max(out[1] - 1, 1)
        return jnp.diag(jnp.array([sy, sx, 1.0], jnp.float32)), out

    return Affine(matrix, 0.0, f"resize({out})")


def warp(images, m, out_hw, fill):
    """Bilinear sampling of (B, H, W, C) images at ``m @ (y, x, 1)`` for each output pixel."""
    h, w = images.shape[1:3]
    ys, xs = jnp.meshgrid(jnp.arange(out_hw[0], dtype=jnp.float32),
                          jnp.arange(out_hw[1], dtype=jnp.float32), indexing="ij")
    sy = m[0, 0] * ys + m[0, 1] * xs + m[0, 2]
    sx = m[1, 0] * ys + m[1, 1] * xs + m[1, 2]
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    fy, fx = sy - y0, sx - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    out = 0.0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = images[:, jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1), :]
            v = jnp.where(valid[None, :, :, None], v, fill)
            out = out + (wy * wx)[None, :, :, None] * v
    return out.astype(images.dtype)


def _inside(m, in_hw, out_hw):
    """(H, W) weight of the input's own pixels at each output pixel of the map ``m``: 1
    inside the input, 0 a pixel or more outside, linear in between (what bilinear
    sampling of a constant image with a different constant around it gives)."""
    ys, xs = jnp.meshgrid(jnp.arange(out_hw[0], dtype=jnp.float32),
                          jnp.arange(out_hw[1], dtype=jnp.float32), indexing="ij")
    w = 1.0
    for k, n in enumerate(in_hw):
        c = m[k, 0] * ys + m[k, 1] * xs + m[k, 2]
        w = w * jnp.clip(jnp.minimum(c + 1.0, n - c), 0.0, 1.0)
    return w


def _resample(images, stages):
    """One bilinear resample for consecutive ``(M, in_hw, out_hw, fill)`` stages; each
    stage's ``fill`` covers what falls outside its input, a later stage's over an
    earlier one's, as if each stage were resampled in turn."""
    out_hw = stages[-1][2]
    suffix, maps = jnp.eye(3, dtype=jnp.float32), []
    for m, in_hw, _, fill in reversed(stages):
        suffix = m @ suffix  # output pixel -> this stage's input
        maps.append((suffix, in_hw, fill))
    maps.reverse()
    out = warp(images, maps[0][0], out_hw, maps[0][2])
    for m, in_hw, fill in maps[1:]:
        w = _inside(m, in_hw, out_hw)[None, :, :, None]
        out = w * out + (1.0 - w) * fill
    return out.astype(images.dtype)


def compose(transforms: Sequence[Callable]) -> Callable:
    """Apply ``transforms`` in order; consecutive ``Affine`` ones are resampled once."""
    transforms = list(transforms)

    def run(key, images):
        keys = jax.random.split(key, max(len(transforms), 1))
        i = 0
        while i < len(transforms):
            if not isinstance(transforms[i], Affine):
                images = transforms[i](keys[i], images)
                i += 1
                continue
            stages, hw = [], tuple(images.shape[1:3])
            while i < len(transforms) and isinstance(transforms[i], Affine):
                mi, out_hw = transforms[i].matrix(keys[i], hw)
                stages.append((mi, hw, out_hw, transforms[i].fill))
                hw = out_hw
                i += 1
            images = _resample(images, stages)
        return images

    return run


def standard_transforms(upsample_to: int | None = None) -> list:
    """Lucent's ``standard_transforms``: pad 12 (grey, 0.5), jitter 8, scale 0.9-1.1,
    rotate -10..10 degrees (0 weighted up), jitter 4, the last four filling black (0) as
    Lucent's kornia and zero-padding steps do; then optionally the upsampling to
    ``upsample_to`` that Lucent applies to images smaller than 224."""
    out = [
        pad(12, 0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]
    if upsample_to:
        out.append(resize(upsample_to))
    return out


__all__ = ["Affine", "compose", "jitter", "pad", "random_rotate", "random_scale", "resize",
           "standard_transforms", "warp"]
