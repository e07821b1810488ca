"""The two shapes an explanation method takes, shared by every method file.

``CAMMethod``: a map made from one layer's activations ``A`` (batch, h, w, K) and the
gradients ``G`` of each target score with respect to them (targets, batch, h, w, K),
from one forward pass and one batched backward pass. A subclass defines ``weights``
(one weight per channel), ``weighted`` (weighted activations, element-wise methods) or
``raw_cam``; methods that need the whole pass (the model, the targets, the options)
override ``pass_weights`` or ``pass_cam``. The base applies ReLU, scales to [0, 1],
upsamples bilinearly to the input size and scales again (pytorch-grad-cam's order), and
adds the options every CAM method has: ``eigen_smooth``, ``aug_smooth`` and several
layers at once.

``AttributionMethod``: a map at the input's resolution made from gradients with respect
to the input itself (vanilla gradients and their smoothed, integrated and guided forms).
A subclass defines ``attributions`` -> (targets, batch, H, W, C); the base reduces the
channels (``reduce``) and scales each map to [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ...models.registry import tapped_outputs
from ..maps import finish_layers, finish_saliency, principal_projection, reduce_channels
from ..taps import input_vjp, layer_shapes, model_variables
from ..targets import (
    TargetTable,
    one_hot_cotangents,
    resolve_targets,
    target_cotangents,
    target_scores,
)


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

    acts (B, h, w, K); grads (T, B, h, w, K) of each target score (None for a method
    that uses no gradients); logits (B, classes); t (B, T) resolved targets; cotangents
    (T, B, classes) the scores' gradients w.r.t. the logits; targets as the program got
    them (an int array or a ``TargetTable``: ``scores`` reads them); model/variables/x/
    layer as the caller gave them; eigen_smooth and the method's other options."""

    model: object
    variables: dict
    x: jax.Array
    layer: str
    logits: jax.Array
    t: jax.Array
    cotangents: jax.Array
    acts: jax.Array
    grads: jax.Array | None
    targets: object = None
    eigen_smooth: bool = False
    options: dict = dataclasses.field(default_factory=dict)

    def scores(self, logits):
        """(T, B, ...) each target's score of ``logits`` (B, ..., classes), e.g. of the
        model's logits on masked copies of the images."""
        return target_scores(logits, self.t if self.targets is None else self.targets,
                             self.t)


def _overrides(obj, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(CAMMethod, name)


class CAMMethod(Method):
    """Options of every CAM method (``compute``'s keywords): ``eigen_smooth`` (the first
    principal component of the weighted activations instead of their sum),
    ``aug_smooth`` (the mean map over horizontal flips times brightness factors 0.9, 1,
    1.1), and ``layer`` as a sequence of names (maps combined as pytorch-grad-cam's
    ``aggregate_multi_layers``)."""

    uses_layer = True
    uses_gradients = True  # False: one forward pass, no backward pass
    eigen_smoothable = True  # False: the map ignores eigen_smooth (as pytorch-grad-cam's)
    aug_factors = (0.9, 1.0, 1.1)

    def weights(self, acts, grads):
        """(T, B, K) channel weights from acts (B, h, w, K) and grads (T, B, h, w, K)."""
        raise NotImplementedError

    def weighted(self, acts, grads):
        """(T, B, h, w, K) weighted activations; element-wise methods override this."""
        return self.weights(acts, grads)[:, :, None, None, :] * acts[None]

    def pass_weights(self, p: LayerPass):
        """(T, B, K) channel weights from a whole layer pass; methods that run the model
        again (ScoreCAM, AblationCAM) override this instead of ``weights``."""
        return self.weights(p.acts, p.grads)

    def raw_cam(self, acts, grads):
        """(T, B, h, w) before ReLU: sum_k w_k A^k."""
        if _overrides(self, "weighted"):
            return jnp.sum(self.weighted(acts, grads), axis=-1)
        w = self.weights(acts, grads)
        return jnp.einsum("tbk,bhwk->tbhw", w, acts)

    def pass_weighted(self, p: LayerPass):
        """(T, B, h, w, K) weighted activations from a whole layer pass."""
        if _overrides(self, "weighted"):
            return self.weighted(p.acts, p.grads)
        return self.pass_weights(p)[:, :, None, None, :] * p.acts[None]

    def pass_cam(self, p: LayerPass):
        """(T, B, h, w) before ReLU from a whole layer pass: the sum over channels of the
        weighted activations, or with ``eigen_smooth`` their first principal component."""
        if p.eigen_smooth and self.eigen_smoothable:
            return principal_projection(self.pass_weighted(p))
        if _overrides(self, "raw_cam") or _overrides(self, "weighted"):
            return self.raw_cam(p.acts, p.grads)
        return jnp.einsum("tbk,bhwk->tbhw", self.pass_weights(p), p.acts)

    def target_cotangents(self, logits, targets, t, options):
        """(T, B, classes) the gradient of each target score w.r.t. the logits."""
        return target_cotangents(logits, targets, t)

    def layer_passes(self, model, variables, x, targets, layers, options=None,
                     eigen_smooth=False) -> list[LayerPass]:
        """One ``LayerPass`` per layer from one forward and one batched backward pass."""
        options = dict(options or {})
        logits, acts, pull = layers_vjp(model, variables, x, layers,
                                        grads=self.uses_gradients)
        t = resolve_targets(logits, targets)
        ct = self.target_cotangents(logits, targets, t, options)
        grads = jax.vmap(pull)(ct) if self.uses_gradients else dict.fromkeys(layers)
        return [LayerPass(model, variables, x, name, logits, t, ct, acts[name], grads[name],
                          targets, eigen_smooth, options) for name in layers]

    def layer_pass(self, model, variables, x, targets, layer, options=None) -> LayerPass:
        return self.layer_passes(model, variables, x, targets, (layer,), options)[0]

    def cams(self, model, variables, x, targets, layers, eigen_smooth, options):
        """(logits, t, [(T, B, h_l, w_l) map before ReLU per layer])."""
        ps = self.layer_passes(model, variables, x, targets, layers, options, eigen_smooth)
        cams = [jnp.broadcast_to(self.pass_cam(p), p.t.shape[::-1] + p.acts.shape[1:3])
                for p in ps]
        return ps[0].logits, ps[0].t, cams

    def compute(self, model, variables, x, targets, *, layer=None, key=None,
                eigen_smooth=False, aug_smooth=False, **options):
        if aug_smooth:
            return augmented(self, model, variables, x, targets, layer=layer, key=key,
                             eigen_smooth=eigen_smooth, **options)
        layers = (layer,) if isinstance(layer, str) or layer is None else tuple(layer)
        return self.cam_maps(model, variables, x, targets, layers, bool(eigen_smooth), options)

    def cam_maps(self, model, variables, x, targets, layers, eigen_smooth, options):
        """(logits, t, (T, B, H, W) maps in [0, 1]) without test-time augmentation."""
        logits, t, cams = self.cams(model, variables, x, targets, layers, eigen_smooth,
                                    options)
        return logits, t, finish_layers(cams, x.shape[1:3])


def augmented(method, model, variables, x, targets, *, factors=None, **kw):
    """pytorch-grad-cam's ``aug_smooth``: the maps of every horizontal flip times each of
    ``method.aug_factors`` (ttach's HorizontalFlip x Multiply), flipped back and averaged.
    All copies run as one batch; each copy's own predicted class fills -1 targets."""
    factors = method.aug_factors if factors is None else factors
    copies = [(flip, f) for flip in (False, True) for f in factors]
    xs = jnp.concatenate([(x[:, :, ::-1] if flip else x) * f for flip, f in copies])
    n, b = len(copies), x.shape[0]
    tiled = targets.tile(n) if isinstance(targets, TargetTable) else jnp.tile(targets, (n, 1))
    logits, t, maps = method.compute(model, variables, xs, tiled, **kw)
    maps = maps.reshape(maps.shape[0], n, b, *maps.shape[2:])
    back = [maps[:, i, :, :, ::-1] if flip else maps[:, i] for i, (flip, _) in enumerate(copies)]
    plain = copies.index((False, 1.0)) if (False, 1.0) in copies else 0
    keep = slice(plain * b, (plain + 1) * b)
    return logits[keep], t[keep], jnp.mean(jnp.stack(back), axis=0)


def layers_vjp(model, variables, x, layers, grads: bool = True):
    """One forward pass: ``(logits, {layer: activation}, pullback)``, ``pullback(ct)`` the
    gradients ``{layer: d sum(ct * logits) / d output}`` (None without ``grads``)."""
    if not grads:
        logits, outs = tapped_outputs(model, variables, x)
        return logits, {n: outs[n] for n in layers}, None
    shapes = layer_shapes(model, variables, x.shape)

    def f(perts):
        logits, outs = tapped_outputs(model, variables, x, perturbations=perts)
        return logits, {n: outs[n] for n in layers}

    zeros = {n: jnp.zeros(shapes[n], x.dtype) for n in layers}
    logits, vjp, acts = jax.vjp(f, zeros, has_aux=True)
    return logits, acts, lambda ct: vjp(ct)[0]


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
