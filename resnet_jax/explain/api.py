"""``gradcam`` and ``explain``: the Grad-CAM family and gradient saliency on any model.

    maps = resnet_jax.explain.gradcam(model, variables, images_nhwc)            # (B, H, W)
    maps = resnet_jax.explain.gradcam(model, variables, x, targets=[[1, 7]] * len(x))
    # -> (B, 2, H, W): two classes per image from one forward pass

Each (model, method, layer, options) compiles once into a program that runs the forward
pass, resolves the targets (the predicted class by default), pulls every target's
cotangent back in one batched backward pass and post-processes the maps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import ops, xla_cpu
from ..errors import ResNetJaxError
from .images import batch_ready, prepare_images
from .maps import as_batch_maps
from .methods import CAMMethod, get_method
from .taps import check_layer, layer_shapes, model_variables
from .targets import TargetTable, normalize_targets, num_classes_of, target_scores


@dataclasses.dataclass
class Explanation:
    """Maps with what they explain.

    maps: (B, H, W), or (B, T, H, W) when several targets per image were asked for.
    targets: (B,) or (B, T) class indices explained (-1: a function target with no class).
    scores: their softmax probabilities; with function targets, each target's own score.
    logits: (B, classes). images: the batch the model saw (after conversion/resizing; the
    caller's own array, numpy or jax, when it needed neither).
    """

    maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    images: np.ndarray | jax.Array
    method: str
    layer: str | tuple[str, ...] | None


@functools.lru_cache(maxsize=32)
def compiled(model, method_name: str, layer: str | None, options: tuple = ()):
    """The jitted program ``(variables, x, targets (B, T), key) -> (logits, targets, maps)``."""
    method = get_method(method_name)
    opts = dict(options)
    fast = ops.cpu_fast(model)  # gradient rules XLA:CPU compiles well (same values)

    def run(variables, x, targets, key):
        return method.compute(fast, variables, x, targets, layer=layer, key=key, **opts)

    return xla_cpu.inference_jit(run)


def explain(model, variables, images, targets=None, layer=None,
            method: str = "gradcam", *, preprocess=None, image_size=None,
            batch_size: int | None = None, seed: int = 0, **options) -> Explanation:
    """Explain ``model``'s scores for ``images`` with ``method``; see ``gradcam``."""
    m = get_method(method)
    shown = None
    if preprocess is not None:
        if image_size is not None:
            raise ResNetJaxError("give either preprocess= (which sets the image size) or "
                                 "image_size=, not both")
        shown = preprocess.pixels(images)
        images, image_size = preprocess.normalize(shown), preprocess.image_size
    ready = batch_ready(model, images, image_size)
    x = prepare_images(model, images, image_size)
    n = x.shape[0]
    t, multi = normalize_targets(targets, n, num_classes_of(model))
    table = isinstance(t, TargetTable)
    if table and not isinstance(m, CAMMethod):
        raise ResNetJaxError(f"method {m.name!r} explains class indices only; functions of "
                             "the outputs as targets work with the CAM methods")
    layer = _layers(m, model, variables, x.shape, layer)
    fn = compiled(model, m.name, layer, hashable_options(options))
    v = model_variables(variables)
    step = batch_size or n
    outs = []
    for i in range(0, n, step):
        key = jax.random.fold_in(jax.random.key(seed), i)
        ti = t.rows(i, i + step) if table else jnp.asarray(t[i:i + step])
        outs.append(fn(v, x[i:i + step], ti, key))
    logits = np.concatenate([np.asarray(o[0]) for o in outs])
    tt = np.concatenate([np.asarray(o[1]) for o in outs])
    maps = np.concatenate([np.asarray(o[2]) for o in outs], axis=1)
    if table:
        tab = TargetTable(jnp.asarray(tt), jnp.asarray(t.which), t.kinds)
        scores = np.asarray(_table_scores(jnp.asarray(logits), tab)).T
    else:
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
        scores = np.take_along_axis(probs, tt, axis=1)
    return Explanation(
        maps=as_batch_maps(maps, multi),
        targets=tt if multi else tt[:, 0],
        scores=scores if multi else scores[:, 0],
        logits=logits, images=shown if shown is not None else images if ready else np.asarray(x),
        method=m.name, layer=layer,
    )


@jax.jit
def _table_scores(logits, table):
    return target_scores(logits, table, table.categories)


def _layers(method, model, variables, image_shape, layer):
    """The checked layer name, a tuple of names for several, or None (no layer used)."""
    if not method.uses_layer:
        return None
    if layer is None:
        layer = default_layer(model, variables, image_shape)
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    if not names:
        raise ResNetJaxError("layer= is an empty sequence; give a layer name or several")
    if len(names) > 1 and not isinstance(method, CAMMethod):
        raise ResNetJaxError(f"method {method.name!r} uses one layer; several layers at once "
                             "work with the CAM methods")
    for name in names:
        check_layer(model, variables, image_shape, name)
    return names[0] if isinstance(layer, str) or len(names) == 1 else names


def hashable_options(options: dict) -> tuple:
    """Options as a sorted tuple for the compiled-program cache (lists become tuples)."""
    def frozen(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return tuple(frozen(e) for e in np.asarray(v, object).tolist()) \
                if isinstance(v, np.ndarray) else tuple(frozen(e) for e in v)
        return v

    out = tuple(sorted((k, frozen(v)) for k, v in options.items()))
    try:
        hash(out)
    except TypeError as e:
        raise ResNetJaxError(f"explain options must be plain values (numbers, strings, "
                             f"tuples): {e}") from None
    return out


def gradcam(model, variables, images_nhwc, targets=None, layer=None,
            method: str = "gradcam", **options) -> np.ndarray:
    """Class activation maps of shape (batch, height, width) in [0, 1] at the input's size.

    Args:
      model, variables: a model from ``create_model``/``load``/``port.from_torch`` and its
        ``{'params', 'batch_stats'}``.
      images_nhwc: without ``preprocess``: a batch (NHWC/NHW) or a list of images of any
        sizes (HW/HWC), already normalised as the model expects; grayscale is repeated for
        an RGB model and sizes are resized as the model requires (see
        ``explain.images.prepare_images``). With ``preprocess``: raw images (paths, uint8, or floats
        in [0, 1]) that it resizes, crops and normalises as the model's evaluation does.
      targets: None (each image's predicted class), one class for all, one per image, or a
        (batch, T) table of T classes per image -> maps of shape (batch, T, H, W). CAM
        methods also take functions of one image's logits ``(classes,) -> score``
        anywhere a class goes (``ClassifierOutputSoftmaxTarget(c)``,
        ``BinaryClassifierOutputTarget(1)``, ... in ``explain.targets``, or any callable).
      layer: the named output whose activations and gradients make the map (CAM methods);
        ``None`` (default) picks the last spatial stage (``layer4`` on torchvision ResNets,
        ``layer2`` on my_resnet, ``conv2`` on digit_cnn); a sequence of names combines
        their maps as pytorch-grad-cam does. Unknown names raise a ResNetJaxError that
        lists the valid ones.
      method: a name of ``explain.METHODS`` (gradcam, gradcam++, hirescam, xgradcam,
        layercam, eigencam, eigengradcam, gradcam_elementwise, kpcacam, shapleycam,
        finercam, fem, fullgrad, ..., saliency, smoothgrad, integrated_gradients,
        guided_backprop, guided_gradcam).
      **options: ``preprocess`` (a ``Preprocessing``, e.g. ``load_model(dir).preprocess``;
        then ``Explanation.images`` are the [0, 1] pixels shown to the model),
        ``batch_size``, ``image_size``, ``seed``; for every CAM method ``eigen_smooth``
        and ``aug_smooth`` (bools); and method options (smoothgrad: ``samples``,
        ``noise``; integrated_gradients: ``steps``, ``baseline``; kpcacam: ``kernel``,
        ``gamma``; fem: ``k``; finercam: ``alpha``, ``comparison``, ``base``).
    """
    return explain(model, variables, images_nhwc, targets, layer, method, **options).maps


def default_layer(model, variables, image_shape) -> str:
    """The last stage's output (``layer4`` on torchvision ResNets, ``conv2`` on digit_cnn)."""
    shapes = layer_shapes(model, variables, image_shape)
    stages = [n for n, s in shapes.items() if len(s) == 4 and n.startswith("layer") and "." not in n]
    if stages:
        return stages[-1]
    convs = [n for n, s in shapes.items() if len(s) == 4 and "pool" not in n]
    return (convs or [n for n, s in shapes.items() if len(s) == 4])[-1]
