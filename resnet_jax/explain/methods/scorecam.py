"""Score-CAM (Wang et al. 2020), with pytorch-grad-cam's conventions.

Each activation channel A^k is upsampled to the input size (bilinear, corners aligned),
scaled to [0, 1] (``(u - min) / (max - min + 1e-8)``) and multiplied into the input;
the target's score on that masked image is s_k, and
w_k = softmax_k(s_k),  map = ReLU(sum_k w_k A^k).

The B * K masked forward passes run inside the compiled program as a ``lax.map`` over
chunks of ``batch_size`` masked images (one vmapped forward pass per chunk), so memory
stays that of one chunk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import ResNetJaxError
from ..taps import model_variables
from .base import CAMMethod, LayerPass


@functools.lru_cache(maxsize=64)
def align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resizing with the corner pixels aligned
    (``torch.nn.UpsamplingBilinear2d``): ``src = dst * (n_in - 1) / (n_out - 1)``."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), i0] += 1.0 - frac
    m[np.arange(n_out), i1] += frac
    return m.astype(np.float32)


def channel_masks(acts, hw):
    """(B, K, H, W) masks: each channel of ``acts`` (B, h, w, K) upsampled to ``hw`` with
    the corners aligned and scaled to [0, 1] per channel."""
    my = jnp.asarray(align_corners_matrix(hw[0], acts.shape[1]))
    mx = jnp.asarray(align_corners_matrix(hw[1], acts.shape[2]))
    up = jnp.einsum("Yh,bhwk,Xw->bkYX", my, acts, mx, precision=jax.lax.Precision.HIGHEST)
    lo = jnp.min(up, axis=(2, 3), keepdims=True)
    hi = jnp.max(up, axis=(2, 3), keepdims=True)
    return (up - lo) / (hi - lo + 1e-8)


def check_forward_batch(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ResNetJaxError("forward_batch (forward passes per chunk) must be a positive "
                             f"integer, got {n!r}")


def chunked_map(fn, n: int, batch_size: int):
    """``fn`` over indices 0..n-1 as a ``lax.map`` of vmapped chunks of ``batch_size``;
    the last chunk is padded (with index 0) so every chunk has one compiled shape."""
    check_forward_batch(batch_size)
    bs = min(int(batch_size), n)
    steps = -(-n // bs)
    idx = jnp.arange(steps * bs) % n
    out = jax.lax.map(jax.vmap(fn), idx.reshape(steps, bs))
    return jax.tree.map(lambda a: a.reshape((steps * bs,) + a.shape[2:])[:n], out)


def forward_batch(method, p: LayerPass) -> int:
    """The ``forward_batch`` option of this call, else the method's own."""
    n = p.options.get("forward_batch", method.forward_batch)
    check_forward_batch(n)
    return int(n)


@dataclasses.dataclass(frozen=True)
class ScoreCAM(CAMMethod):
    """``forward_batch``: masked images per forward pass (pytorch-grad-cam's
    ``batch_size``); an option of ``explain``/``gradcam`` as well."""

    name: ClassVar[str] = "scorecam"
    uses_gradients: ClassVar[bool] = False
    forward_batch: int = 16

    def __post_init__(self):
        check_forward_batch(self.forward_batch)

    def pass_weights(self, p: LayerPass):
        x = p.x
        b, k = p.acts.shape[0], p.acts.shape[-1]
        masks = channel_masks(p.acts, x.shape[1:3])
        v = model_variables(p.variables)

        def one(i):  # the masked image of image i // K, channel i % K -> its logits
            img, ch = i // k, i % k
            masked = x[img] * masks[img, ch][:, :, None]
            return p.model.apply(v, masked[None], train=False)[0]

        logits = chunked_map(one, b * k, forward_batch(self, p)).reshape(b, k, -1)
        return jax.nn.softmax(p.scores(logits), axis=-1)  # (T, B, K)
