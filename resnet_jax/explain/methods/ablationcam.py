"""Ablation-CAM (Desai & Ramaswamy 2020), with pytorch-grad-cam's conventions.

The layer's output A is replaced by copies with one channel k ablated, and the target's
score y^k of each copy is compared with the original score y:
w_k = (y - y^k) / y,  map = ReLU(sum_k w_k A^k).
A channel is ablated to 0 when the image's smallest activation is 0 (after a ReLU), and
otherwise to that minimum - 1e7. (pytorch-grad-cam lowers that minimum in place as it
ablates the copies of one batch, so its i-th copy gets minimum - (i + 1) * 1e7; after a
ReLU, where both ablate to 0, the two agree.)

The copies are fed through the model's ``perturbations`` collection (the layer's output
plus ``ablated - A``), ``forward_batch`` channels per forward pass, each over the whole
batch, as a ``lax.map`` inside the compiled program. Only what follows the layer is
batched over the copies: the layers before it do not depend on the copy.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ...models.registry import tapped_outputs
from ..taps import model_variables
from .base import CAMMethod, LayerPass
from .scorecam import check_forward_batch, chunked_map, forward_batch

ABLATION_VALUE = 1e7


def ablated(acts):
    """(B,) the value a channel of each image is ablated to."""
    low = jnp.min(acts, axis=(1, 2, 3))
    return jnp.where(low == 0, 0.0, low - ABLATION_VALUE).astype(acts.dtype)


@dataclasses.dataclass(frozen=True)
class AblationCAM(CAMMethod):
    """``forward_batch``: ablated channels per forward pass (pytorch-grad-cam's
    ``batch_size``); an option of ``explain``/``gradcam`` as well."""

    name: ClassVar[str] = "ablationcam"
    uses_gradients: ClassVar[bool] = False
    forward_batch: int = 32

    def __post_init__(self):
        check_forward_batch(self.forward_batch)

    def pass_weights(self, p: LayerPass):
        v = model_variables(p.variables)
        delta = ablated(p.acts)[:, None, None, None] - p.acts  # (B, h, w, K)
        k = p.acts.shape[-1]

        def one(c):  # the logits (B, classes) with channel c of every image ablated
            pert = jnp.where(jnp.arange(k) == c, delta, 0.0)
            return tapped_outputs(p.model, v, p.x, perturbations={p.layer: pert})[0]

        logits = chunked_map(one, k, forward_batch(self, p))  # (K, B, classes)
        scores = p.scores(jnp.moveaxis(logits, 0, 1))  # (T, B, K)
        original = p.scores(p.logits)[..., None]  # (T, B, 1)
        return (original - scores) / original
