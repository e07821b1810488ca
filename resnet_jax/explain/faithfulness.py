"""Faithfulness of saliency maps: does the model's confidence follow the map?

- ``deletion_curve``: remove pixels from most to least salient (replace them with
  ``baseline``) and record the target's probability; a faithful map makes it fall fast
  (low area under the curve).
- ``insertion_curve``: start from the baseline and insert pixels from most to least
  salient; a faithful map makes the probability rise fast (high area).
- ``confidence_drop``: Chattopadhay et al.'s "average drop": the relative loss of
  confidence when the model sees only the highlighted region (image * map).

All fractions of one batch are scored by one compiled program (``lax.map`` over the
fractions, the batch inside).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..xla_cpu import inference_jit
from .taps import model_variables
from .targets import normalize_targets, num_classes_of, resolve_targets


def _probs_fn(model, variables):
    v = model_variables(variables)
    return lambda x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1)


def _targets(model, variables, x, targets):
    t, _ = normalize_targets(targets, x.shape[0], num_classes_of(model))
    logits = model.apply(model_variables(variables), x, train=False)
    return np.asarray(resolve_targets(logits, jnp.asarray(t)))[:, 0]


def _curve(model, variables, images, maps, targets, steps, baseline, insert):
    x = jnp.asarray(images, jnp.float32)
    maps = jnp.asarray(maps, jnp.float32)
    if maps.shape != x.shape[:3]:
        raise ValueError(f"maps {maps.shape} do not match images {x.shape[:3]}")
    t = jnp.asarray(_targets(model, variables, x, targets))
    b, h, w = maps.shape
    # rank 0 = most salient pixel
    order = jnp.argsort(-maps.reshape(b, -1), axis=1)
    ranks = jnp.argsort(order, axis=1).reshape(b, h, w)
    base_img = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    fractions = jnp.linspace(0.0, 1.0, steps + 1)
    probs = _probs_fn(model, variables)

    @inference_jit
    def run(x, base_img, ranks, t):
        def one(f):
            chosen = (ranks < jnp.round(f * h * w))[..., None]
            if insert:
                xi = jnp.where(chosen, x, base_img)
            else:
                xi = jnp.where(chosen, base_img, x)
            return jnp.take_along_axis(probs(xi), t[:, None], axis=1)[:, 0]

        return jax.lax.map(one, fractions)

    curve = np.asarray(run(x, base_img, ranks, t))  # (steps + 1, B)
    return np.asarray(fractions), curve


def auc(fractions, curve) -> np.ndarray:
    """Area under each curve (trapezoid rule): (B,)."""
    c = np.asarray(curve)
    dx = np.diff(fractions)[:, None]
    return np.sum(dx * (c[1:] + c[:-1]) / 2.0, axis=0)


def deletion_curve(model, variables, images, maps, targets=None, steps: int = 16,
                   baseline: float = 0.0):
    """``(fractions (steps+1,), probabilities (steps+1, B))`` as the most salient
    fraction of pixels is replaced by ``baseline``. ``targets`` default: predicted class."""
    return _curve(model, variables, images, maps, targets, steps, baseline, insert=False)


def insertion_curve(model, variables, images, maps, targets=None, steps: int = 16,
                    baseline: float = 0.0):
    """Like ``deletion_curve``, inserting the most salient pixels into the baseline."""
    return _curve(model, variables, images, maps, targets, steps, baseline, insert=True)


def confidence_drop(model, variables, images, maps, targets=None, baseline: float = 0.0):
    """(B,) ``max(0, p - p_masked) / p`` with ``p_masked`` the target's probability for
    ``baseline + map * (image - baseline)``: 0 when the highlighted region alone keeps
    the confidence."""
    x = jnp.asarray(images, jnp.float32)
    m = jnp.asarray(maps, jnp.float32)[..., None]
    t = jnp.asarray(_targets(model, variables, x, targets))
    probs = _probs_fn(model, variables)
    p = jnp.take_along_axis(probs(x), t[:, None], axis=1)[:, 0]
    pm = jnp.take_along_axis(probs(baseline + m * (x - baseline)), t[:, None], axis=1)[:, 0]
    return np.asarray(jnp.maximum(0.0, p - pm) / p)


__all__ = ["auc", "confidence_drop", "deletion_curve", "insertion_curve"]
