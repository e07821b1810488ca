"""Image parameterisations for activation maximisation.

A parameterisation is ``init(key, shape) -> params``, ``image(params) -> images`` in
[0, 1] (NHWC) and ``project(params) -> params`` (applied after every update).

- ``pixel()``: Lucid's raw pixels, N(0, sd) through colour decorrelation and a sigmoid.
- ``fourier()``: Lucid's Fourier basis: a spectrum scaled by 1/frequency (so all
  frequencies start equally easy to change), inverse real FFT, decorrelated colour,
  sigmoid.
- ``box()``: the course's raw pixels kept in [lo, hi] by projection (no sigmoid), so
  pixels reach exactly "no ink" under an L1 penalty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Lucid's colour decorrelation: the square root of ImageNet's colour covariance,
# normalised by its largest column norm.
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
COLOR_CORRELATION_NORMALIZED = (
    COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
)


@dataclasses.dataclass(frozen=True)
class Param:
    """``init(key, (B, H, W, C)) -> params``; ``image(params, (H, W)) -> (B, H, W, C)`` in
    [0, 1]; ``project(params) -> params`` after every update."""

    name: str
    init: Callable
    image: Callable
    project: Callable = staticmethod(lambda p: p)


def decorrelate(x):
    """(..., 3) decorrelated colour -> RGB (identity for other channel counts)."""
    if x.shape[-1] != 3:
        return x
    return x @ jnp.asarray(COLOR_CORRELATION_NORMALIZED.T)


def pixel(sd: float = 0.01, decorrelate_colors: bool = True) -> Param:
    """Lucid's pixel parameterisation: N(0, sd), decorrelated colour, sigmoid."""

    def init(key, shape):
        return sd * jax.random.normal(key, shape, jnp.float32)

    def image(p, hw):
        return jax.nn.sigmoid(decorrelate(p) if decorrelate_colors else p)

    return Param("pixel", init, image)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """|frequency| of each coefficient of a real 2-D FFT of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


def fourier(sd: float = 0.01, decay_power: float = 1.0,
            decorrelate_colors: bool = True) -> Param:
    """Lucid's Fourier parameterisation (``fft_image``): spectrum ~ N(0, sd) scaled by
    1 / max(|f|, 1/max(h, w))^decay_power, inverse real FFT (orthonormal), / 4,
    decorrelated colour, sigmoid."""

    def init(key, shape):
        b, h, w, c = shape
        fh, fw = rfft2d_freqs(h, w).shape
        return sd * jax.random.normal(key, (b, c, fh, fw, 2), jnp.float32)

    def image(p, hw):
        h, w = hw
        freqs = rfft2d_freqs(h, w)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
        spectrum = jax.lax.complex(p[..., 0], p[..., 1]) * jnp.asarray(scale, jnp.float32)
        img = jnp.fft.irfftn(spectrum, s=(h, w), axes=(2, 3), norm="ortho")[:, :, :h, :w]
        img = jnp.moveaxis(img, 1, -1) / 4.0  # Lucid's "magic" constant
        return jax.nn.sigmoid(decorrelate(img) if decorrelate_colors else img)

    return Param("fourier", init, image)


def box(lo: float = 0.0, hi: float = 1.0, start: float | None = None,
        sd: float = 0.01) -> Param:
    """The course's raw pixels, kept in [lo, hi] by projection after every step; they
    start at ``start`` (default ``lo``, "no ink") plus |N(0, sd)| noise. The image is
    (p - lo) / (hi - lo), so with the default box it is the pixels themselves."""

    def init(key, shape):
        s0 = lo if start is None else start
        noise = sd * (hi - lo) * jnp.abs(jax.random.normal(key, shape, jnp.float32))
        return jnp.clip(s0 + noise, lo, hi)

    def image(p, hw):
        return (p - lo) / (hi - lo)

    return Param("box", init, image, lambda p: jnp.clip(p, lo, hi))


PARAMS = {"pixel": pixel, "fourier": fourier, "fft": fourier, "box": box}


def get_param(p) -> Param:
    if isinstance(p, Param):
        return p
    if p in PARAMS:
        return PARAMS[p]()
    from ..errors import ResNetJaxError

    raise ResNetJaxError(f"unknown parameterisation {p!r}; choose one of {sorted(PARAMS)}")
