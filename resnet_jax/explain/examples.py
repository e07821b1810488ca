"""Dataset examples: the real images that excite a unit most.

    ex = top_examples(model, variables, x_test, ("conv2", 7), k=9)      # a channel
    ex = top_examples(model, variables, x_test, ("layer3", 5, 2, 2))    # one position
    ex = top_examples(model, variables, image_set, 3, k=16)             # class 3's logit
    ex.images, ex.values, ex.indices, ex.labels, ex.boxes, ex.crops

A unit is a class logit (an int), a channel of a layer (``(layer, k)``: its mean over
positions, or ``channel_unit(layer, k, "max")`` its largest value), or one position of a
channel (``(layer, k, y, x)``); a unit of a dense layer is ``(layer, k)``. The data is
read once, one batch at a time, each batch one compiled program that scores it and
merges it into a running top-k (values, data-set positions, images): memory does not
grow with the data set. Ties go to the earlier image. For a spatial unit each example
also has the receptive field of the position where the unit fired most: the box of
input pixels that position depends on, found from the network's geometry (below).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..models.registry import tapped_outputs
from .taps import layer_shapes, model_variables

_NO_INDEX = np.iinfo(np.int32).max  # the index of an empty slot: loses every tie


@dataclasses.dataclass(frozen=True)
class Unit:
    """``kind`` "class", "channel" (``reduce`` "mean" or "max" over positions) or
    "neuron" (channel ``index`` at position (y, x)) of the named output ``layer``."""

    kind: str
    layer: str
    index: int
    reduce: str = "mean"
    y: int | None = None
    x: int | None = None

    def __str__(self):
        if self.kind == "class":
            return f"class {self.index}"
        if self.kind == "neuron":
            return f"{self.layer} channel {self.index} at ({self.y}, {self.x})"
        return f"{self.layer} channel {self.index} ({self.reduce})"


def class_unit(index: int, layer: str = "fc") -> Unit:
    return Unit("class", layer, int(index))


def channel_unit(layer: str, index: int, reduce: str = "mean") -> Unit:
    if reduce not in ("mean", "max"):
        raise ResNetJaxError(f"a channel is reduced over positions by 'mean' or 'max', got "
                             f"{reduce!r}")
    return Unit("channel", layer, int(index), reduce)


def neuron_unit(layer: str, index: int, y: int, x: int) -> Unit:
    return Unit("neuron", layer, int(index), y=int(y), x=int(x))


def as_unit(unit) -> Unit:
    """A ``Unit`` from an int (a class), (layer, k) or (layer, k, y, x)."""
    if isinstance(unit, Unit):
        return unit
    if isinstance(unit, (int, np.integer)):
        return class_unit(int(unit))
    if isinstance(unit, (tuple, list)) and len(unit) in (2, 3, 4) and isinstance(unit[0], str):
        if len(unit) == 2:
            return channel_unit(unit[0], unit[1])
        if len(unit) == 3:
            return channel_unit(*unit)
        return neuron_unit(*unit)
    raise ResNetJaxError(f"cannot read the unit {unit!r}: give a class index (3), (layer, "
                         "channel), (layer, channel, 'max') or (layer, channel, y, x)")


def check_unit(unit: Unit, shapes: dict) -> tuple:
    """The unit's layer shape, or a ResNetJaxError naming what would be valid."""
    if unit.layer not in shapes:
        raise ResNetJaxError(f"unknown layer {unit.layer!r}; valid layer names: "
                             f"{', '.join(shapes)}")
    shape = shapes[unit.layer]
    n = shape[-1]
    if not 0 <= unit.index < n:
        raise ResNetJaxError(f"unit {unit.index} is out of range for layer {unit.layer!r}, "
                             f"which has {n} channels/units (valid 0..{n - 1})")
    if unit.kind == "neuron":
        if len(shape) != 4:
            raise ResNetJaxError(f"layer {unit.layer!r} has no positions (shape {shape}); "
                                 "give (layer, channel) for a dense unit")
        if not (0 <= unit.y < shape[1] and 0 <= unit.x < shape[2]):
            raise ResNetJaxError(f"position ({unit.y}, {unit.x}) is outside layer "
                                 f"{unit.layer!r}'s {shape[1]}x{shape[2]} grid")
    return shape


def _score(unit: Unit, acts, index, yx):
    """(values (B,), positions (B, 2) on the layer's grid, -1 for a unit without one);
    ``index`` and ``yx`` are the unit's channel and position, traced, so one compiled
    program serves every unit of a kind and layer."""
    a = acts[unit.layer]
    b = a.shape[0]
    none = jnp.full((b, 2), -1, jnp.int32)
    if a.ndim != 4:
        return jnp.take(a.reshape(b, -1), index, axis=1), none
    if unit.kind == "neuron":
        pos = jnp.tile(yx[None, :], (b, 1))
        return a[:, yx[0], yx[1], index], pos
    m = jnp.take(a, index, axis=3).reshape(b, -1)
    best = jnp.argmax(m, axis=1).astype(jnp.int32)
    pos = jnp.stack([best // a.shape[2], best % a.shape[2]], axis=1)
    return (jnp.mean(m, axis=1) if unit.reduce == "mean" else jnp.max(m, axis=1)), pos


def _merge(state, batch, k: int):
    """The best ``k`` of the running state and a scored batch: larger value first, then
    the smaller data-set index (so ties are deterministic)."""
    both = jax.tree.map(lambda s, b: jnp.concatenate([s, b]), state, batch)
    order = jnp.arange(both["value"].shape[0])
    _, _, order = jax.lax.sort((-both["value"], both["index"], order), num_keys=2)
    return jax.tree.map(lambda a: a[order[:k]], both)


def make_update(model, unit: Unit, k: int, norm):
    """The compiled ``update(state, variables, images, labels, indices) -> state``:
    score a batch (images in [0, 1]; index -1 marks padding) and merge it into the top
    k. Units that differ only in channel or position share one compiled program."""
    norm = None if norm is None else (tuple(norm[0]), tuple(norm[1]))
    generic = dataclasses.replace(unit, index=0, y=None, x=None)
    run = _compiled_update(model, generic, int(k), norm)
    index = jnp.asarray(unit.index, jnp.int32)
    yx = jnp.asarray([unit.y or 0, unit.x or 0], jnp.int32)
    return lambda state, variables, images, labels, indices: run(
        state, variables, images, labels, indices, index, yx)


@functools.lru_cache(maxsize=32)
def _compiled_update(model, unit: Unit, k: int, norm):
    def update(state, variables, images, labels, indices, index, yx):
        x = images if norm is None else (images - jnp.asarray(norm[0])) / jnp.asarray(norm[1])
        _, acts = tapped_outputs(model, variables, x.astype(jnp.float32))
        values, pos = _score(unit, acts, index, yx)
        pad = indices < 0
        batch = {"value": jnp.where(pad, -jnp.inf, values.astype(jnp.float32)),
                 "index": jnp.where(pad, _NO_INDEX, indices).astype(jnp.int32),
                 "position": pos, "label": labels.astype(jnp.int32),
                 "image": images.astype(jnp.float32)}
        return _merge(state, batch, k)

    return jax.jit(update)


def empty_state(k: int, image_shape) -> dict:
    return {"value": jnp.full((k,), -jnp.inf, jnp.float32),
            "index": jnp.full((k,), _NO_INDEX, jnp.int32),
            "position": jnp.full((k, 2), -1, jnp.int32),
            "label": jnp.full((k,), -1, jnp.int32),
            "image": jnp.zeros((k, *image_shape), jnp.float32)}


# --------------------------------------------------------------------------- the data


def _as_batch(item):
    """(images, labels or None, mask or None) from an array, an (images, labels) pair or
    a ``{'image', 'label', 'mask'}`` dict."""
    if isinstance(item, dict):
        if "image" not in item:
            raise ResNetJaxError(f"a batch dict needs an 'image' entry, got keys {sorted(item)}")
        return item["image"], item.get("label"), item.get("mask")
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1], None
    return item, None, None


def _pixels(images) -> np.ndarray:
    """NHWC float32 in [0, 1] (uint8 is divided by 255; NHW gets one channel)."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ResNetJaxError(f"images must be a batch (N, H, W, C) or (N, H, W), got shape "
                             f"{a.shape}")
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def _rows(dataset, batch_size: int):
    """The data set as batches ``(images, labels or None, data-set indices (-1: a row
    that is padding or unreadable))``, and the normalisation its loader applies (or
    None: the caller's)."""
    from ..data import ImageSet, Loader

    if isinstance(dataset, ImageSet):
        if dataset.images is not None and dataset.preprocess is None:
            return _array_rows(dataset.images, dataset.labels, batch_size), None
        if dataset.preprocess is None:
            raise ResNetJaxError(f"data set {dataset.name!r} has no preprocessing to size "
                                 "its images; give a Loader built with preprocess=")
        dataset = Loader(dataset, batch_size, train=False)
    if isinstance(dataset, Loader):
        pre = dataset.preprocess
        return _loader_rows(dataset), (tuple(pre.mean), tuple(pre.std))
    if isinstance(dataset, (np.ndarray, jax.Array)):
        return _array_rows(dataset, None, batch_size), None
    if isinstance(dataset, Iterable):
        return _iter_rows(dataset), None
    raise ResNetJaxError(f"cannot read a data set from {type(dataset).__name__}: give an "
                         "array of images, an iterable of batches, an ImageSet or a Loader")


def _array_rows(images, labels, batch_size: int):
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield (_pixels(images[start:stop]), None if labels is None else labels[start:stop],
               np.arange(start, stop))


def _loader_rows(loader):
    for j, batch in enumerate(loader.epoch(0)):
        idx = np.asarray(loader.indices(0, j)).copy()
        idx[np.asarray(batch["mask"]) == 0] = -1
        yield _pixels(batch["image"]), batch["label"], idx


def _iter_rows(batches):
    seen = 0
    for item in batches:
        images, labels, mask = _as_batch(item)
        images = _pixels(images)
        idx = np.arange(seen, seen + len(images))
        seen += len(images)
        if mask is not None:
            idx[np.asarray(mask) == 0] = -1
        yield images, labels, idx


def _padded(images, labels, idx, size: int):
    n = len(images)
    labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    if n == size:
        return images, labels, np.asarray(idx, np.int32)
    extra = size - n
    return (np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)]),
            np.concatenate([labels, np.full(extra, -1, np.int32)]),
            np.concatenate([np.asarray(idx, np.int32), np.full(extra, -1, np.int32)]))


# --------------------------------------------------------------------------- receptive fields


@jax.custom_vjp
def _support_act(x):
    """The identity whose gradient is 1 where the incoming one is positive, else 0: a
    backward pass through it marks which inputs a position depends on, never growing
    or vanishing with depth."""
    return x


_support_act.defvjp(lambda x: (x, None), lambda _, g: ((g > 0).astype(g.dtype),))


def _mean_conv(lhs, rhs, *args, **kwargs):
    """The convolution with every kernel weight 1 / (weights per output channel): each
    output depends on every input its window covers, with a positive weight."""
    ones = jnp.ones_like(rhs) / (rhs.size // rhs.shape[-1])
    return jax.lax.conv_general_dilated(lhs, ones, *args, **kwargs)


def _window_pool(x, window_shape, strides=None, padding="VALID"):
    """Max-pooling's window as an average: the same positions, each one's gradient."""
    import flax.linen as nn

    return nn.avg_pool(x, window_shape, strides=strides, padding=padding)


def receptive_fields(model, variables, layer: str, image_shape, positions) -> np.ndarray:
    """(n, 4) boxes (top, left, bottom, right; bottom/right exclusive) of the input
    pixels that ``layer``'s positions (n, 2) of (y, x) depend on, within the image.

    The model is run with its geometry kept and its arithmetic made positive: kernels
    of one constant (``conv`` field), max-pooling as averaging over the same windows
    (``pool``), BatchNorm scales |s| + 1 and a ReLU whose gradient marks where the
    incoming one is positive (``act``). The gradient of one position of the layer with
    respect to the input is then nonzero exactly on the pixels it depends on (through
    any path), and the box around them is the receptive field, clipped by the image's
    borders. One forward pass; one backward pass per position (vmapped)."""
    v = model_variables(variables)
    v = {"params": jax.tree.map(lambda p: jnp.abs(p) + 1.0, v["params"]),
         **({"batch_stats": v["batch_stats"]} if "batch_stats" in v else {})}
    positions = np.asarray(positions, np.int32).reshape(-1, 2)
    return np.asarray(_fields(model, layer, tuple(int(d) for d in image_shape))(
        v, jnp.asarray(positions)))


@functools.lru_cache(maxsize=32)
def _fields(model, layer: str, image_shape):
    probe = model.clone(conv=_mean_conv, pool=_window_pool, act=_support_act)

    def run(v, positions):
        def f(x):
            return tapped_outputs(probe, v, x)[1][layer]

        out, pull = jax.vjp(f, jnp.zeros((1, *image_shape[1:]), jnp.float32))

        def box(pos):
            ct = jnp.zeros_like(out).at[0, pos[0], pos[1], :].set(1.0)
            hit = jnp.any(pull(ct)[0][0] > 0, axis=-1)  # (H, W)
            rows, cols = jnp.any(hit, axis=1), jnp.any(hit, axis=0)
            return jnp.stack([jnp.argmax(rows), jnp.argmax(cols),
                              rows.shape[0] - jnp.argmax(rows[::-1]),
                              cols.shape[0] - jnp.argmax(cols[::-1])])

        return jax.vmap(box)(positions)

    return jax.jit(run)


# --------------------------------------------------------------------------- the result


@dataclasses.dataclass
class Examples:
    """The top k of a data set for ``unit``, best first. ``images`` (k, H, W, C) in
    [0, 1] as the model saw them before normalisation; ``indices`` their positions in the
    data set; ``labels`` their labels (-1 where the data had none); ``positions`` (k, 2)
    where a spatial unit fired most (-1 otherwise) and ``boxes`` (k, 4) that position's
    receptive field (top, left, bottom, right; None for units without positions)."""

    unit: Unit
    values: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray | None

    @property
    def crops(self) -> list[np.ndarray] | None:
        """Each example cut to its receptive field (sizes differ at the borders)."""
        if self.boxes is None:
            return None
        return [im[t:b, left:r] for im, (t, left, b, r) in zip(self.images, self.boxes)]

    def __len__(self) -> int:
        return len(self.values)


def top_examples(model, variables, dataset, unit, k: int = 9, *, batch_size: int = 64,
                 normalize="auto", preprocess=None) -> Examples:
    """The ``k`` images of ``dataset`` that activate ``unit`` most (see the module
    docstring for units and data sets).

    Arrays and batches hold images in [0, 1] (or uint8), normalised for the model as
    ``maximize`` does (``normalize``: "auto", None or (mean, std); or ``preprocess``'s);
    an ``ImageSet`` or ``Loader`` is read by the project's loader (evaluation
    transform) and normalised with its preprocessing. Every batch is padded to the
    first batch's size, so one compiled program serves the whole pass.
    """
    from .maximize import _normalization

    unit = as_unit(unit)
    k = int(k)
    if k <= 0:
        raise ResNetJaxError(f"k must be a positive number of examples, got {k}")
    rows, loader_norm = _rows(dataset, int(batch_size))
    norm = loader_norm if loader_norm is not None else _normalization(model, normalize,
                                                                      preprocess)
    v = model_variables(variables)
    update, state, size = None, None, None
    for images, labels, idx in rows:
        if update is None:
            shape = _check_batch(model, v, unit, images)
            update, state, size = make_update(model, unit, k, norm), empty_state(k, shape), \
                len(images)
        state = update(state, v, *_padded(images, labels, idx, max(size, len(images))))
    if state is None:
        raise ResNetJaxError("the data set holds no images")
    return _result(model, v, unit, jax.device_get(state))


def _check_batch(model, variables, unit: Unit, images) -> tuple:
    c = int(getattr(model, "in_channels", images.shape[-1]))
    if images.shape[-1] != c:
        raise ResNetJaxError(f"the model takes {c}-channel images, the data has "
                             f"{images.shape[-1]} channels (shape {images.shape})")
    check_unit(unit, layer_shapes(model, variables, (1, *images.shape[1:])))
    return tuple(images.shape[1:])


def _result(model, variables, unit: Unit, state) -> Examples:
    keep = np.asarray(state["index"]) != _NO_INDEX
    s = {name: np.asarray(a)[keep] for name, a in state.items()}
    boxes = None
    if len(s["value"]) and s["position"][0, 0] >= 0:
        boxes = receptive_fields(model, variables, unit.layer, (1, *s["image"].shape[1:]),
                                 s["position"])
    return Examples(unit, s["value"], s["index"], s["label"], s["image"], s["position"],
                    boxes)


# --------------------------------------------------------------------------- the picture


def _tile(image, scale: int, box=None) -> np.ndarray:
    """An image enlarged ``scale`` times (nearest-neighbour), its receptive field (if
    any) outlined in red."""
    from PIL import Image, ImageDraw

    from ..viz.overlays import enlarge, to_uint8_rgb

    tile = enlarge(to_uint8_rgb(image), scale)
    if box is None:
        return tile
    canvas = Image.fromarray(tile)
    t, left, b, r = (int(v) * scale for v in box)
    ImageDraw.Draw(canvas).rectangle([left, t, r - 1, b - 1], outline=(230, 20, 20), width=2)
    return np.asarray(canvas)


def _fit(image, side: int) -> np.ndarray:
    """``image`` enlarged by the largest whole factor that fits a ``side`` square (at
    least 1), centred on white."""
    from ..viz.overlays import enlarge, to_uint8_rgb

    img = to_uint8_rgb(image)
    img = enlarge(img, max(1, side // max(img.shape[:2])))[:side, :side]
    out = np.full((side, side, 3), 255, np.uint8)
    y, x = (side - img.shape[0]) // 2, (side - img.shape[1]) // 2
    out[y:y + img.shape[0], x:x + img.shape[1]] = img
    return out


def _captioned(pictures, captions, width: int):
    from ..viz.overlays import _side_by_side, _stack, caption_lines, caption_strip

    n = caption_lines(captions, width)
    return _side_by_side([_stack([p, caption_strip(c, width, n)]) for p, c in
                          zip(pictures, captions)])


def examples_figure(optimised, examples: Examples, title: str | None = None,
                    class_names=None, value: float | None = None,
                    dead: bool = False) -> np.ndarray:
    """One unit answered both ways, as uint8 (H, W, 3): the optimised image (a crossed
    tile when ``dead``: the unit never activates), then its top real examples
    (receptive field outlined), and under each example its crop; captions under every
    picture, ``title`` above."""
    from ..viz.overlays import MIN_SIDE, _stack, caption_strip, dead_tile

    h, w = np.asarray(optimised).shape[:2]
    scale = max(1, -(-MIN_SIDE // max(h, w)))
    side = max(h, w) * scale
    boxes = examples.boxes if examples.boxes is not None else [None] * len(examples)
    first = dead_tile(side, side) if dead else _fit(optimised, side)
    top = [first] + [_tile(im, scale, b) for im, b in zip(examples.images, boxes)]
    caps = ["optimised: never activates" if dead else
            "optimised" + (f": {value:.3g}" if value is not None else "")]
    for i, lab, v in zip(examples.indices, examples.labels, examples.values):
        name = "" if lab < 0 else (f", {class_names[lab]}" if class_names else f", class {lab}")
        caps.append(f"#{i}{name}: {v:.3g}")
    rows = [_captioned(top, caps, side)]
    if examples.boxes is not None:
        crops = [np.full((side, side, 3), 255, np.uint8)] + [_fit(c, side) for c in
                                                             examples.crops]
        rows.append(_captioned(crops, [""] + ["receptive field"] * len(examples), side))
    out = _stack(rows, pad=4)
    if title:
        out = _stack([caption_strip(title, out.shape[1]), out])
    return out


__all__ = ["Examples", "Unit", "as_unit", "channel_unit", "class_unit", "examples_figure",
           "neuron_unit", "receptive_fields", "top_examples"]
