"""Finer-CAM (Zhang et al. 2025): a base CAM (Grad-CAM) of the target's score relative to
the classes the model finds most similar to it, as pytorch-grad-cam's ``FinerCAM``.

For target class c (the predicted class by default), the classes are sorted by
|y_j - y_c|; the first is c itself (m), the ``comparison`` ranks (default 1, 2, 3) are the
most similar classes j, and the explained score is
s = sum_j p_j (y_m - alpha y_j) / (sum_j p_j + 1e-9), p = softmax(y) (``alpha`` default 1).
Options: ``alpha``, ``comparison`` (a tuple of ranks), ``base`` (the CAM method whose map
is made from the gradients of s; default gradcam). Function targets are explained as given.
"""

import jax
import jax.numpy as jnp

from ..targets import TargetTable, target_cotangents
from .base import CAMMethod, LayerPass


def finer_score(logits, main, comparison, alpha):
    """s of one image's ``logits`` (classes,), ``main`` its class, ``comparison`` (J,)."""
    p = jax.nn.softmax(logits)
    w = p[comparison]
    return jnp.sum(w * (logits[main] - alpha * logits[comparison])) / (jnp.sum(w) + 1e-9)


class FinerCAM(CAMMethod):
    name = "finercam"

    def target_cotangents(self, logits, targets, t, options):
        if isinstance(targets, TargetTable):
            return target_cotangents(logits, targets, t)
        classes = logits.shape[-1]
        given = options.get("comparison")
        ranks = ((1, 2, 3)[:max(classes - 1, 0)] if given is None
                 else tuple(int(r) for r in given if int(r) < classes))
        ranks = jnp.asarray(ranks, jnp.int32)
        alpha = float(options.get("alpha", 1.0))
        ref = jnp.take_along_axis(logits, t, axis=1)  # (B, T)
        order = jnp.argsort(jnp.abs(logits[:, None, :] - ref[..., None]), axis=-1)
        main, comp = order[..., 0], order[..., ranks]  # (B, T), (B, T, J)
        grad = jax.grad(finer_score)
        per = jax.vmap(jax.vmap(grad, in_axes=(None, 0, 0, None)), in_axes=(0, 0, 0, None))
        return jnp.moveaxis(per(logits, main, comp, alpha), 1, 0).astype(logits.dtype)

    def pass_cam(self, p: LayerPass):
        from . import get_method

        return get_method(p.options.get("base", "gradcam")).pass_cam(p)
