"""The two shapes an explanation method takes, shared by every method file.

``CAMMethod``: a map made from one layer's activations ``A`` (batch, h, w, K) and the
gradients ``G`` of each target score with respect to them (targets, batch, h, w, K),
from one forward pass and one batched backward pass. A subclass defines ``weights``
(one weight per channel) or ``raw_cam``; the base applies ReLU, scales to [0, 1],
upsamples bilinearly to the input size and scales again (pytorch-grad-cam's order).

``AttributionMethod``: a map at the input's resolution made from gradients with respect
to the input itself (vanilla gradients and their smoothed, integrated and guided forms).
A subclass defines ``attributions`` -> (targets, batch, H, W, C); the base reduces the
channels (``reduce``) and scales each map to [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..maps import finish_cam, finish_saliency, reduce_channels
from ..taps import input_vjp, layer_shapes, layer_vjp, model_variables
from ..targets import one_hot_cotangents, resolve_targets


class Method:
    name: str = ""
    uses_layer: bool = False

    def compute(self, model, variables, x, targets, *, layer=None, key=None, **options):
        """-> (logits (B, classes), resolved targets (B, T), maps (T, B, H, W) in [0, 1])."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LayerPass:
    """What one forward pass and one batched backward pass through ``layer`` give a CAM
    method, plus what a forward-only method needs to run the model again.

    acts (B, h, w, K); grads (T, B, h, w, K) of each target score; logits (B, classes);
    t (B, T) resolved targets; cotangents (T, B, classes) the scores' gradients w.r.t. the
    logits; model/variables/x/layer as the caller gave them."""

    model: object
    variables: dict
    x: jax.Array
    layer: str
    logits: jax.Array
    t: jax.Array
    cotangents: jax.Array
    acts: jax.Array
    grads: jax.Array


class CAMMethod(Method):
    uses_layer = True

    def weights(self, acts, grads):
        """(T, B, K) channel weights from acts (B, h, w, K) and grads (T, B, h, w, K)."""
        raise NotImplementedError

    def pass_weights(self, p: LayerPass):
        """(T, B, K) channel weights from a whole layer pass; methods that run the model
        again (ScoreCAM, AblationCAM) override this instead of ``weights``."""
        return self.weights(p.acts, p.grads)

    def raw_cam(self, acts, grads):
        """(T, B, h, w) before ReLU: sum_k w_k A^k."""
        w = self.weights(acts, grads)
        return jnp.einsum("tbk,bhwk->tbhw", w, acts)

    def pass_cam(self, p: LayerPass):
        """(T, B, h, w) before ReLU from a whole layer pass."""
        if type(self).raw_cam is not CAMMethod.raw_cam:
            return self.raw_cam(p.acts, p.grads)
        return jnp.einsum("tbk,bhwk->tbhw", self.pass_weights(p), p.acts)

    def layer_pass(self, model, variables, x, targets, layer) -> LayerPass:
        shape = layer_shapes(model, variables, x.shape)[layer]
        logits, acts, pull = layer_vjp(model, variables, x, layer, shape)
        t = resolve_targets(logits, targets)
        ct = one_hot_cotangents(t, logits.shape[-1], logits.dtype)
        grads = jax.vmap(pull)(ct)
        return LayerPass(model, variables, x, layer, logits, t, ct, acts, grads)

    def compute(self, model, variables, x, targets, *, layer=None, key=None, **options):
        p = self.layer_pass(model, variables, x, targets, layer)
        return p.logits, p.t, finish_cam(self.pass_cam(p), x.shape[1:3])


class AttributionMethod(Method):
    reduce: str = "absmax"

    def forward(self, model, variables):
        v = model_variables(variables)
        return lambda x: model.apply(v, x, train=False)

    def attributions(self, model, variables, x, t, *, key=None, **options):
        """(T, B, H, W, C) attributions for resolved targets ``t`` (B, T)."""
        raise NotImplementedError

    def input_grads(self, fwd, x, t, num_classes):
        """(logits, (T, B, H, W, C) gradients of each target score w.r.t. ``x``)."""
        logits, pull = input_vjp(fwd, x)
        ct = one_hot_cotangents(t, num_classes, logits.dtype)
        return logits, jax.vmap(pull)(ct)

    def compute(self, model, variables, x, targets, *, layer=None, key=None, **options):
        logits = self.forward(model, variables)(x)
        t = resolve_targets(logits, targets)
        attr = self.attributions(model, variables, x, t, key=key, **options)
        return logits, t, finish_saliency(reduce_channels(attr, self.reduce))
