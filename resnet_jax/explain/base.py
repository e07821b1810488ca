"""What every explanation method shares: input checks, targets, layer activations and
their gradients, resizing and scaling of maps.

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
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..models.layers import tap_key, tap_name

Array = Any


# ---------------------------------------------------------------------------------------
# Layers


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


# ---------------------------------------------------------------------------------------
# Targets


def num_classes_of(model) -> int:
    return int(model.num_classes)


def normalize_targets(targets, batch: int, num_classes: int) -> tuple[np.ndarray, bool]:
    """Targets as an int array ``(batch, T)`` (-1 = the predicted class) and whether the
    caller asked for several targets per image.

    ``None``: the predicted class; an int: that class for every image; a sequence of
    ``batch`` ints (or None): one per image; a ``(batch, T)`` nested sequence: T per image.
    """
    if targets is None:
        return np.full((batch, 1), -1, np.int64), False
    if np.isscalar(targets) or (isinstance(targets, np.ndarray) and targets.ndim == 0):
        arr, multi = np.full((batch, 1), int(targets), np.int64), False
    else:
        items = list(targets)
        if items and all(np.isscalar(t) or t is None for t in items):
            if len(items) == 1 and batch > 1:
                items = items * batch
            if len(items) != batch:
                raise ResNetJaxError(
                    f"got {len(items)} targets for {batch} images; give one per image, "
                    "one for all, or a (batch, T) list of several per image"
                )
            arr = np.array([[-1 if t is None else int(t)] for t in items], np.int64)
            multi = False
        else:
            rows = [list(r) for r in items]
            if len(rows) == 1 and batch > 1:
                rows = rows * batch
            if len(rows) != batch or len({len(r) for r in rows}) != 1:
                raise ResNetJaxError(
                    f"several targets per image must form a (batch={batch}, T) table, "
                    f"got rows of lengths {[len(r) for r in rows]}"
                )
            arr = np.array([[-1 if t is None else int(t) for t in r] for r in rows], np.int64)
            multi = True
    bad = arr[(arr != -1) & ((arr < 0) | (arr >= num_classes))]
    if bad.size:
        raise ResNetJaxError(
            f"class index {int(bad[0])} is out of range: the model has {num_classes} "
            f"classes (valid indices 0..{num_classes - 1})"
        )
    return arr, multi


def resolve_targets(logits, targets):
    """Replace -1 in ``targets`` (batch, T) with each image's predicted class."""
    pred = jnp.argmax(logits, axis=-1)[:, None]
    return jnp.where(targets < 0, pred, targets)


def one_hot_cotangents(targets, num_classes: int, dtype=jnp.float32):
    """(T, batch, classes) cotangents: one backward pass per target column."""
    return jnp.moveaxis(jax.nn.one_hot(targets, num_classes, dtype=dtype), 1, 0)


# ---------------------------------------------------------------------------------------
# Images


def _to_float(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.asarray(a, np.float32)  # no copy when it already is float32


def expected_hw(model) -> tuple[int, int] | None:
    """The input size a model requires, or None when it takes any size (ResNets)."""
    from ..models import DigitCNN, input_shape

    if isinstance(model, DigitCNN):
        return tuple(input_shape(model)[1:3])
    return None


def prepare_images(model, images, image_size=None) -> jnp.ndarray:
    """A float32 NHWC batch the model accepts.

    Accepts one image (HW or HWC) or many (a list of images of any sizes, or an NHWC /
    NHW array); uint8 is scaled to [0, 1]. Channels are converted to the model's: a
    grayscale image is repeated to RGB, RGB is reduced to luminance for a 1-channel
    model, an alpha channel is dropped. Images are resized (bilinear) to ``image_size``,
    or to the size the model requires, or - when their sizes differ - to the model's
    usual input size.
    """
    from ..models import input_shape

    channels = int(getattr(model, "in_channels", 3))
    if batch_ready(model, images, image_size):
        # Already the batch the model takes: no host copy (and no transfer back and
        # forth when it is a device array).
        return jnp.asarray(images)
    if isinstance(images, (list, tuple)):
        items = [_to_float(i) for i in images]
    else:
        a = _to_float(images)
        if a.ndim == 2:  # one grayscale image
            items = [a]
        elif a.ndim == 3 and a.shape[-1] in (1, 3, 4):  # one HWC image
            items = [a]
        elif a.ndim in (3, 4):  # NHW grayscale batch or NHWC batch
            items = list(a)
        else:
            raise ResNetJaxError(
                f"expected an image (HW or HWC) or a batch (NHW or NHWC), got shape {a.shape}"
            )
    if not items:
        raise ResNetJaxError("no images given")
    out = []
    for i, img in enumerate(items):
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
            raise ResNetJaxError(
                f"image {i} has shape {img.shape}; expected HW or HWC with 1, 3 or 4 channels"
            )
        c = img.shape[-1]
        if c in (2, 4):  # drop alpha
            img, c = img[..., : c - 1], c - 1
        if c == 1 and channels == 3:
            img = np.repeat(img, 3, axis=-1)
        elif c == 3 and channels == 1:
            img = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        out.append(img)

    if image_size is not None:
        hw = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    else:
        hw = expected_hw(model)
        if hw is None:
            sizes = {o.shape[:2] for o in out}
            hw = sizes.pop() if len(sizes) == 1 else tuple(input_shape(model)[1:3])
    batch = []
    for img in out:
        if img.shape[:2] != tuple(hw):
            img = np.asarray(jax.image.resize(img, (*hw, img.shape[-1]), "linear"))
        batch.append(img)
    return jnp.asarray(np.stack(batch))


def batch_ready(model, images, image_size=None) -> bool:
    """Whether ``images`` is already a float32 NHWC batch of the model's channels that
    needs no resizing (``prepare_images`` then passes it through)."""
    channels = int(getattr(model, "in_channels", 3))
    shape = getattr(images, "shape", None)
    if isinstance(images, (list, tuple)) or shape is None or len(shape) != 4:
        return False
    if shape[-1] != channels or np.dtype(getattr(images, "dtype", None)) != np.float32:
        return False
    if image_size is not None:
        hw = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    else:
        hw = expected_hw(model)
    return hw is None or tuple(shape[1:3]) == tuple(hw)


# ---------------------------------------------------------------------------------------
# Maps


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of OpenCV's INTER_LINEAR resize along one axis: half-pixel
    centres, ``src = (dst + 0.5) * n_in / n_out - 0.5``, clamped at the borders."""
    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        a, f = i0[o], frac[o]
        if a < 0:
            m[o, 0] = 1.0
        elif a >= n_in - 1:
            m[o, n_in - 1] = 1.0
        else:
            m[o, a] += 1.0 - f
            m[o, a + 1] += f
    return m.astype(np.float32)


def resize_maps(maps, hw: tuple[int, int]):
    """Bilinear upsampling of ``(..., h, w)`` maps to ``hw`` as two small matmuls."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(hw):
        return maps
    my = jnp.asarray(bilinear_matrix(hw[0], h))
    mx = jnp.asarray(bilinear_matrix(hw[1], w))
    return jnp.einsum("Yh,...hw,Xw->...YX", my, maps, mx,
                      precision=jax.lax.Precision.HIGHEST)


def minmax(maps, eps: float = 1e-7):
    """Per-map ``(m - min) / (max + eps)`` over the last two axes, as pytorch-grad-cam."""
    m = maps - jnp.min(maps, axis=(-2, -1), keepdims=True)
    return m / (eps + jnp.max(m, axis=(-2, -1), keepdims=True))


def finish_cam(cam, hw):
    """pytorch-grad-cam's post-processing: ReLU, scale to [0, 1], resize, scale again."""
    cam = jnp.maximum(cam, 0)
    return minmax(resize_maps(minmax(cam), hw))


def finish_saliency(sal):
    """Per-image min-max scaling of an input-resolution map to [0, 1]."""
    return minmax(sal)


def reduce_channels(grads, how: str = "absmax"):
    """(..., H, W, C) input attributions -> (..., H, W) maps."""
    if how == "absmax":
        return jnp.max(jnp.abs(grads), axis=-1)
    if how == "abssum":
        return jnp.sum(jnp.abs(grads), axis=-1)
    if how == "sum":
        return jnp.sum(grads, axis=-1)
    raise ValueError(f"unknown channel reduction {how!r}")


def as_batch_maps(maps: Array, multi: bool) -> np.ndarray:
    """(T, B, H, W) -> (B, H, W) or (B, T, H, W)."""
    maps = np.asarray(maps)
    return np.moveaxis(maps, 0, 1) if multi else maps[0]


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(rows, axis=0)
