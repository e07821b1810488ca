"""Faithfulness of saliency maps: does the model's confidence follow the map?

- ``deletion_curve``: remove pixels from most to least salient (replace them with the
  baseline image's pixels) and record the target's probability; a faithful map makes it
  fall fast (low area under the curve).
- ``insertion_curve``: start from the baseline image and insert pixels from most to least
  salient; a faithful map makes the probability rise fast (high area).
- ``confidence_drop``: Chattopadhay et al.'s "average drop": the relative loss of
  confidence when the model sees only the highlighted region (image * map).

The baseline (``baseline_images``) is ``"blur"`` (default: each image blurred by a
Gaussian, as Petsiuk et al.'s RISE inserts into a blurred image), ``"mean"`` (each image's
mean colour), a constant or an array of images. Why blur by default: a constant baseline
replaces what the map points at with one colour, and a model that reads that colour as
evidence (black, or the data set's mean that 0 is for normalised inputs) keeps its
confidence whichever pixels go, which gives a flat deletion curve for a good map and a bad
one alike; a blurred image removes the detail the map points at and keeps the colours
and the low frequencies the model saw in training.

All fractions of one batch are scored by one compiled program (``lax.map`` over the
fractions, the batch inside).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..xla_cpu import inference_jit
from .taps import model_variables
from .targets import TargetTable, normalize_targets, num_classes_of


def _class_targets(model, batch, targets) -> np.ndarray:
    """(B,) classes, -1 for the predicted one."""
    t, multi = normalize_targets(targets, batch, num_classes_of(model))
    if multi or isinstance(t, TargetTable):
        raise ResNetJaxError("deletion, insertion and the confidence drop score one class's "
                             "probability per image: give None, a class, or one per image")
    return t[:, 0]


def _probs_fn(model, variables):
    v = model_variables(variables)
    return lambda x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1)


@functools.lru_cache(maxsize=64)
def gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) weights of a 1-D Gaussian blur of standard deviation ``sigma`` pixels with
    radius ``int(truncate * sigma + 0.5)`` and mirrored borders (``d c b a | a b c d``),
    as ``scipy.ndimage.gaussian_filter(mode="reflect")``."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    src = (np.arange(n)[:, None] + taps[None, :]) % (2 * n)
    src = np.where(src >= n, 2 * n - 1 - src, src)
    m = np.zeros((n, n))
    np.add.at(m, (np.repeat(np.arange(n), len(taps)), src.ravel()), np.tile(kernel, n))
    return m


def baseline_images(images, baseline="blur", blur_sigma: float | None = None) -> np.ndarray:
    """(B, H, W, C) baseline images: ``"blur"`` (a Gaussian blur of standard deviation
    ``blur_sigma`` pixels, default min(H, W) / 32), ``"mean"`` (each image's mean per
    channel), a number (that constant) or an array broadcastable to the images."""
    x = np.asarray(images, np.float32)
    if isinstance(baseline, str):
        if baseline == "blur":
            sigma = blur_sigma if blur_sigma is not None else min(x.shape[1:3]) / 32
            if not sigma > 0:
                return x.copy()
            my, mx = gaussian_matrix(x.shape[1], float(sigma)), gaussian_matrix(x.shape[2], float(sigma))
            return np.einsum("Yh,bhwc,Xw->bYXc", my, x, mx).astype(np.float32)
        if baseline == "mean":
            return np.broadcast_to(x.mean((1, 2), keepdims=True), x.shape).astype(np.float32)
        raise ResNetJaxError(f"unknown baseline {baseline!r}: use 'blur', 'mean', a number "
                             "or an array of baseline images")
    try:
        return np.broadcast_to(np.asarray(baseline, np.float32), x.shape).copy()
    except ValueError:
        raise ResNetJaxError(f"a baseline of shape {np.shape(baseline)} does not broadcast "
                             f"to the images' shape {x.shape}") from None


@functools.lru_cache(maxsize=16)
def _curve_program(model, h: int, w: int):
    """One program for deletion and insertion (``insert`` is an argument). The fractions
    0 and 1 are always scored, and one of them is the image itself (fraction 0 of a
    deletion, 1 of an insertion): its logits give the predicted class, so the program
    holds one forward pass."""

    def run(variables, x, base_img, ranks, t, fractions, insert):
        def one(f):
            chosen = (ranks < jnp.round(f * h * w))[..., None]
            xi = jnp.where(chosen == insert, x, base_img)
            return model.apply(variables, xi, train=False)

        logits = jax.lax.map(one, fractions)  # (F, B, classes)
        own = jnp.where(insert, logits[-1], logits[0])
        t = jnp.where(t < 0, jnp.argmax(own, -1), t)
        probs = jax.nn.softmax(logits, axis=-1)
        return jnp.take_along_axis(probs, jnp.broadcast_to(t[None, :, None], probs.shape[:2] + (1,)),
                                   axis=-1)[..., 0]

    return inference_jit(run)


def _curve(model, variables, images, maps, targets, steps, baseline, blur_sigma, insert):
    x = np.asarray(images, np.float32)
    maps = np.asarray(maps, np.float32)
    if x.ndim != 4 or maps.shape != x.shape[:3]:
        raise ResNetJaxError(f"maps of shape {maps.shape} do not fit images of shape "
                             f"{x.shape}: give one (H, W) map per (H, W, C) image")
    if int(steps) < 1:
        raise ResNetJaxError(f"steps={steps}: a curve needs at least 1 step (fractions 0 "
                             "and 1 of the pixels)")
    t = _class_targets(model, x.shape[0], targets)
    b, h, w = maps.shape
    # rank 0 = most salient pixel
    order = np.argsort(-maps.reshape(b, -1), axis=1, kind="stable")
    ranks = np.argsort(order, axis=1).reshape(b, h, w)
    base_img = baseline_images(x, baseline, blur_sigma)
    fractions = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    run = _curve_program(model, h, w)
    curve = run(model_variables(variables), x, base_img, ranks, t, fractions, np.bool_(insert))
    return fractions, np.asarray(curve)  # (steps + 1, B)


def auc(fractions, curve) -> np.ndarray:
    """Area under each curve (trapezoid rule): (B,)."""
    c = np.asarray(curve)
    dx = np.diff(fractions)[:, None]
    return np.sum(dx * (c[1:] + c[:-1]) / 2.0, axis=0)


def deletion_curve(model, variables, images, maps, targets=None, steps: int = 16,
                   baseline="blur", blur_sigma: float | None = None):
    """``(fractions (steps+1,), probabilities (steps+1, B))`` as the most salient
    fraction of pixels is replaced by the baseline's (see ``baseline_images``; default a
    blurred copy). ``targets`` default: predicted class."""
    return _curve(model, variables, images, maps, targets, steps, baseline, blur_sigma,
                  insert=False)


def insertion_curve(model, variables, images, maps, targets=None, steps: int = 16,
                    baseline="blur", blur_sigma: float | None = None):
    """Like ``deletion_curve``, inserting the most salient pixels into the baseline."""
    return _curve(model, variables, images, maps, targets, steps, baseline, blur_sigma,
                  insert=True)


def confidence_drop(model, variables, images, maps, targets=None, baseline: float = 0.0):
    """(B,) ``max(0, p - p_masked) / p`` with ``p_masked`` the target's probability for
    ``baseline + map * (image - baseline)``: 0 when the highlighted region alone keeps
    the confidence."""
    x = jnp.asarray(images, jnp.float32)
    m = jnp.asarray(maps, jnp.float32)[..., None]
    t = _class_targets(model, x.shape[0], targets)
    probs = inference_jit(_probs_fn(model, variables))
    p_all = probs(x)
    t = jnp.where(t < 0, jnp.argmax(p_all, -1), jnp.asarray(t))
    p = jnp.take_along_axis(p_all, t[:, None], axis=1)[:, 0]
    pm = jnp.take_along_axis(probs(baseline + m * (x - baseline)), t[:, None], axis=1)[:, 0]
    return np.asarray(jnp.maximum(0.0, p - pm) / p)


__all__ = ["auc", "baseline_images", "confidence_drop", "deletion_curve", "gaussian_matrix",
           "insertion_curve"]
