"""Named intermediate outputs of a model and the gradients of its scores with respect to
them.

The gradient of a score with respect to a named intermediate output comes from the
model's ``perturbations`` collection: every model publishes its named outputs with
``Tap.tap(name, x)``, which adds the ``perturbations`` entry ``tap_key(name)`` to ``x``.
Differentiating the logits with respect to a zero perturbation of that shape gives the
gradient with respect to the output itself, from one forward pass (``jax.vjp``); several
target classes per image are several cotangents pulled back through the same forward
pass (``jax.vmap`` over the VJP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..models.layers import tap_key, tap_name


def layer_shapes(model, variables, image_shape) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every named output for a batch of ``image_shape``, in forward
    order, computed abstractly (nothing is run) and remembered per model, variable shapes
    and image shape: tracing a resnet50 costs about 0.3 s, as much as a batch-1 Grad-CAM."""
    v = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    leaves, treedef = jax.tree.flatten(v)
    specs = tuple((tuple(np.shape(a)), np.dtype(a.dtype).name) for a in leaves)
    return dict(_layer_shapes(model, treedef, specs, tuple(int(d) for d in image_shape)))


@functools.lru_cache(maxsize=64)
def _layer_shapes(model, treedef, specs, image_shape) -> tuple:
    order: list[str] = []

    def run(v, x):
        state = model.apply(v, x, train=False, mutable=["intermediates"])[1]
        order.extend(state["intermediates"])  # forward order (eval_shape sorts the keys)
        return state

    v = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])
    state = jax.eval_shape(run, v, jax.ShapeDtypeStruct(image_shape, jnp.float32))
    inter = state["intermediates"]
    return tuple((tap_name(k), tuple(inter[k][0].shape)) for k in order)


def check_layer(model, variables, image_shape, layer: str, spatial: bool = True) -> tuple:
    """The shape of ``layer``'s output, or a ResNetJaxError listing the valid names."""
    shapes = layer_shapes(model, variables, image_shape)
    valid = [n for n, s in shapes.items() if len(s) == 4] if spatial else list(shapes)
    if layer not in shapes:
        raise ResNetJaxError(
            f"unknown layer {layer!r}; valid layer names: {', '.join(valid)}"
        )
    if spatial and len(shapes[layer]) != 4:
        raise ResNetJaxError(
            f"layer {layer!r} has no spatial map (its output has shape {shapes[layer]}); "
            f"choose a convolutional output: {', '.join(valid)}"
        )
    return shapes[layer]


def model_variables(variables) -> dict:
    """Only the collections a forward pass reads."""
    return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


def apply_with_taps(model, variables, x, perturbations: dict | None = None):
    """``(logits, {name: output})`` for every named output, with ``perturbations``
    (``{name: array}``) added to the named outputs.

    flax requires an entry for every tap once the ``perturbations`` collection exists, so
    the others get zeros made inside the program, which XLA folds away (x + 0 = x).
    """
    v = model_variables(variables)
    if perturbations:
        shapes = layer_shapes(model, v, x.shape)
        pert = {tap_key(n): jnp.zeros(s, x.dtype) for n, s in shapes.items()}
        pert.update({tap_key(n): p for n, p in perturbations.items()})
        v = {**v, "perturbations": pert}
    logits, state = model.apply(v, x, train=False, mutable=["intermediates"])
    return logits, {tap_name(k): val[0] for k, val in state["intermediates"].items()}


def layer_vjp(model, variables, x, layer: str, layer_shape):
    """One forward pass: ``(logits, activation, pullback)`` where ``pullback(cotangent)``
    is the gradient of ``sum(cotangent * logits)`` with respect to ``layer``'s output."""

    def f(pert):
        logits, acts = apply_with_taps(model, variables, x, {layer: pert})
        return logits, acts[layer]

    zeros = jnp.zeros(layer_shape, x.dtype)
    logits, vjp, acts = jax.vjp(f, zeros, has_aux=True)
    return logits, acts, lambda ct: vjp(ct)[0]


def input_vjp(fn, x):
    """``(logits, pullback)`` for the gradient of ``sum(cotangent * fn(x))`` w.r.t. ``x``."""
    logits, vjp = jax.vjp(fn, x)
    return logits, lambda ct: vjp(ct)[0]
