"""Named intermediate outputs of a model and the gradients of its scores with respect to
them, all read with ``resnet_jax.models.registry.tapped_outputs``.

The gradient of a score with respect to a named intermediate output comes from the
model's ``perturbations`` collection: every model publishes its named outputs with
``Tap.tap(name, x)``, which adds the ``perturbations`` entry of that name to ``x``.
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
from ..models.registry import tapped_outputs


def layer_shapes(model, variables, image_shape) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every named output for a batch of ``image_shape``, in forward
    order, computed abstractly (nothing is run) and remembered per model, variable shapes
    and image shape: tracing a large model costs as much as explaining one image."""
    v = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    leaves, treedef = jax.tree.flatten(v)
    specs = tuple((tuple(np.shape(a)), np.dtype(a.dtype).name) for a in leaves)
    return dict(_layer_shapes(model, treedef, specs, tuple(int(d) for d in image_shape)))


@functools.lru_cache(maxsize=64)
def _layer_shapes(model, treedef, specs, image_shape) -> tuple:
    order: list[str] = []

    def run(v, x):
        outputs = tapped_outputs(model, v, x)[1]
        order.extend(outputs)  # forward order (eval_shape sorts the keys)
        return outputs

    v = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])
    outputs = jax.eval_shape(run, v, jax.ShapeDtypeStruct(image_shape, jnp.float32))
    return tuple((name, tuple(outputs[name].shape)) for name in order)


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


def layer_vjp(model, variables, x, layer: str, layer_shape):
    """One forward pass: ``(logits, activation, pullback)`` where ``pullback(cotangent)``
    is the gradient of ``sum(cotangent * logits)`` with respect to ``layer``'s output."""

    def f(pert):
        logits, acts = tapped_outputs(model, variables, x, perturbations={layer: pert})
        return logits, acts[layer]

    zeros = jnp.zeros(layer_shape, x.dtype)
    logits, vjp, acts = jax.vjp(f, zeros, has_aux=True)
    return logits, acts, lambda ct: vjp(ct)[0]


def input_vjp(fn, x):
    """``(logits, pullback)`` for the gradient of ``sum(cotangent * fn(x))`` w.r.t. ``x``."""
    logits, vjp = jax.vjp(fn, x)
    return logits, lambda ct: vjp(ct)[0]
