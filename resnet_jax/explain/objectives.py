"""Objectives for activation maximisation: pure functions of the named outputs.

An ``Objective`` maps ``(acts, images)`` - ``acts`` the ``{name: output}`` dict of a batch,
``images`` the batch in [0, 1] before any transformation - to one value per image
(shape (batch,)). Objectives combine with ``+``, ``-``, scalar ``*`` and ``/``:

    channel("conv2", 3)                       # the course's a^k = sum_ij a^k_ij
    neuron("hidden", 5)                       # a unit of a dense layer
    neuron("layer3", 7, y=4, x=4)             # one position of a channel
    class_logit(2) - 0.05 * l1()              # y^i - lambda * sum |x_ij|
    channel("layer4", range(16))              # a batch: image i maximises channel i

A unit index may be a sequence: the objective then covers a batch with one unit per
image, and ``maximize`` optimises the whole batch in one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError


def _units(index):
    """An int, or an int array for one unit per image; and the batch it implies."""
    if index is None:
        return None, None
    if np.isscalar(index):
        return int(index), None
    arr = np.asarray(list(index), dtype=np.int32)
    if arr.ndim != 1:
        raise ResNetJaxError(f"unit indices must be an int or a 1-D sequence, got {index!r}")
    return arr, len(arr)


def _top(layer, idx):
    arr = np.atleast_1d(idx)
    return ((layer, int(arr.max())), (layer, int(arr.min())))


def _merge_batch(a, b):
    if a is None or b is None or a == b:
        return a if a is not None else b
    raise ResNetJaxError(f"objectives cover batches of different sizes ({a} and {b})")


def _pick(values, index):
    """values (B, N) -> (B,) at ``index`` (an int, or one per image)."""
    if isinstance(index, int):
        return values[:, index]
    idx = jnp.asarray(index)
    if idx.shape[0] != values.shape[0]:
        raise ResNetJaxError(
            f"{idx.shape[0]} unit indices for a batch of {values.shape[0]} images"
        )
    return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]


class Objective:
    """A per-image score to maximise; see the module docstring."""

    def __init__(self, fn: Callable, layers: Sequence[str] = (), batch: int | None = None,
                 name: str = "", units: tuple = ()):
        self.fn = fn
        self.units = tuple(units)  # (layer, largest unit index) pairs, for checking
        self.layers = tuple(dict.fromkeys(layers))
        self.batch = batch
        self.name = name

    def __call__(self, acts: dict, images):
        return self.fn(acts, images)

    def check(self, acts_shapes: dict):
        """Raise a ResNetJaxError naming the valid layers if one is unknown."""
        missing = [n for n in self.layers if n not in acts_shapes]
        if missing:
            raise ResNetJaxError(
                f"unknown layer name(s) {missing}; valid layer names: {', '.join(acts_shapes)}"
            )
        for layer, top in self.units:
            shape = acts_shapes[layer]
            n = shape[-1] if len(shape) in (2, 4) else int(np.prod(shape[1:]))
            if not 0 <= top < n:
                raise ResNetJaxError(
                    f"unit {top} is out of range for layer {layer!r}, which has {n} "
                    f"units/channels (valid 0..{n - 1})"
                )

    def __add__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda a, x: self(a, x) + other, self.layers, self.batch, self.name,
                             self.units)
        return Objective(
            lambda a, x: self(a, x) + other(a, x), self.layers + other.layers,
            _merge_batch(self.batch, other.batch), f"{self.name} + {other.name}",
            self.units + other.units,
        )

    __radd__ = __add__

    def __mul__(self, w):
        if not isinstance(w, (int, float)):
            raise TypeError(f"objectives are weighted by numbers, got {type(w).__name__}")
        return Objective(lambda a, x: w * self(a, x), self.layers, self.batch,
                         f"{w:g} * {self.name}", self.units)

    __rmul__ = __mul__

    def __truediv__(self, w):
        return self * (1.0 / w)

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other if isinstance(other, Objective) else -float(other))

    def __rsub__(self, other):
        return (-self) + other

    def __repr__(self):
        return f"Objective({self.name})"


def total(objectives: Sequence[Objective], weights: Sequence[float] | None = None) -> Objective:
    """sum_i w_i * objective_i."""
    weights = [1.0] * len(objectives) if weights is None else list(weights)
    out = weights[0] * objectives[0]
    for w, o in zip(weights[1:], objectives[1:]):
        out = out + w * o
    return out


def stack(objectives: Sequence[Objective]) -> Objective:
    """One batch made of several objectives' batches, in order: image i is scored by the
    objective whose slice holds it. Lets different layers' units (or the same units with
    and without a penalty) share one compiled optimisation."""
    sizes = [o.batch or 1 for o in objectives]
    bounds = np.cumsum([0] + sizes)

    def fn(acts, images):
        parts = []
        for o, a, b in zip(objectives, bounds[:-1], bounds[1:]):
            sub = {k: v[a:b] for k, v in acts.items()}
            parts.append(o(sub, images[a:b]))
        return jnp.concatenate(parts)

    layers = tuple(n for o in objectives for n in o.layers)
    units = tuple(u for o in objectives for u in o.units)
    return Objective(fn, layers, int(bounds[-1]), "stack(" + ", ".join(o.name for o in objectives) + ")",
                     units)


def channel(layer: str, index, reduce: str = "sum") -> Objective:
    """a^k = sum over positions of channel ``index`` of ``layer`` (``reduce='mean'``
    gives Lucid's mean instead)."""
    idx, batch = _units(index)
    red = {"sum": jnp.sum, "mean": jnp.mean}[reduce]

    def fn(acts, images):
        a = acts[layer]
        if a.ndim != 4:
            raise ResNetJaxError(f"channel objectives need a spatial layer; {layer!r} has "
                                 f"shape {a.shape}; use neuron() for dense layers")
        return _pick(red(a, axis=(1, 2)), idx)

    return Objective(fn, (layer,), batch, f"channel({layer}, {index})", _top(layer, idx))


def neuron(layer: str, index, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: ``acts[layer][:, index]`` for a dense layer, or channel ``index`` at
    position (y, x) (default: the centre) of a spatial layer."""
    idx, batch = _units(index)

    def fn(acts, images):
        a = acts[layer]
        if a.ndim == 4:
            h, w = a.shape[1:3]
            yy = h // 2 if y is None else y
            xx = w // 2 if x is None else x
            a = a[:, yy, xx, :]
        elif a.ndim != 2:
            a = a.reshape(a.shape[0], -1)
        return _pick(a, idx)

    return Objective(fn, (layer,), batch, f"neuron({layer}, {index})", _top(layer, idx))


def class_logit(index, layer: str = "fc") -> Objective:
    """y^i: the pre-softmax score of class ``index``."""
    o = neuron(layer, index)
    o.name = f"class_logit({index})"
    return o


def class_log_prob(index, layer: str = "fc") -> Objective:
    """log p(class ``index``) = y^i - logsumexp(y): raising it lowers the other classes
    too, so the image becomes one the model confidently assigns to the class (the raw
    logit ``class_logit`` can grow with every class's score)."""
    idx, batch = _units(index)

    def fn(acts, images):
        y = acts[layer]
        return _pick(jax.nn.log_softmax(y.reshape(y.shape[0], -1), axis=-1), idx)

    return Objective(fn, (layer,), batch, f"class_log_prob({index})", _top(layer, idx))


def _per_image(fn, name):
    return Objective(lambda acts, images: fn(images), (), None, name)


def l1(center: float = 0.0) -> Objective:
    """sum_ij |x_ij - center| over each image (subtract it: ``obj - lam * l1()``)."""
    return _per_image(lambda x: jnp.sum(jnp.abs(x - center), axis=(1, 2, 3)), "l1")


def l2(center: float = 0.0) -> Objective:
    """sum_ij (x_ij - center)^2 (Simonyan et al.'s L2 regulariser)."""
    return _per_image(lambda x: jnp.sum(jnp.square(x - center), axis=(1, 2, 3)), "l2")


def tv(beta: float = 1.0) -> Objective:
    """Total variation: sum of |neighbour differences|^beta along both axes."""

    def fn(x):
        dy = jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]) ** beta
        dx = jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]) ** beta
        return jnp.sum(dy, axis=(1, 2, 3)) + jnp.sum(dx, axis=(1, 2, 3))

    return _per_image(fn, "tv")


# --------------------------------------------------------------------------- Lucent's objectives
#
# Lucent's objectives are losses (minimised) over the whole batch; here each is its
# negative, one value per image, so they compose with the ones above. ``maximize``
# optimises the batch sum: for ``channel_interpolate`` and ``alignment`` that sum is
# Lucent's value, for the others (which Lucent averages over the batch) B times it.


def _acts(acts, layer: str, what: str, spatial: bool = False):
    a = acts[layer]
    if spatial and a.ndim != 4:
        raise ResNetJaxError(f"{what} needs a spatial layer; {layer!r} has shape {a.shape}")
    if a.ndim not in (2, 4):
        a = a.reshape(a.shape[0], -1)
    return a


def _at(a, y, x):
    """(B, C) at position (y, x) (default: the centre) of a spatial output; a dense one as
    it is."""
    if a.ndim == 2:
        return a
    h, w = a.shape[1:3]
    return a[:, h // 2 if y is None else y, w // 2 if x is None else x, :]


def _vector(values, what: str) -> np.ndarray:
    v = np.asarray(values, np.float32)
    if v.ndim != 1 or not len(v):
        raise ResNetJaxError(f"{what} must be a 1-D vector with one entry per channel, got "
                             f"shape {v.shape}")
    return v


def _fits(v, a, layer: str, what: str):
    if a.shape[-1] != len(v):
        raise ResNetJaxError(f"{what} has {len(v)} entries but layer {layer!r} has "
                             f"{a.shape[-1]} channels; give one entry per channel")
    return jnp.asarray(v, a.dtype)


def _cosine(a, d, eps: float = 1e-8):
    """cos(a, d) along the last axis, as torch's ``cosine_similarity``: a.d /
    (max(|a|, eps) max(|d|, eps))."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    return (a @ d) / (na * jnp.maximum(jnp.linalg.norm(d), eps))


def _mean_over_positions(v):
    return v.reshape(v.shape[0], -1).mean(axis=1)


def direction(layer: str, vector, cossim: bool = True, batch: int | None = None) -> Objective:
    """Lucent's ``direction``: mean over positions of cos(a_ij, d), the cosine similarity
    of the activation vector a_ij (channels at position ij) with ``vector`` d. With
    ``cossim=False``, Lucid's original dot product a_ij . d instead."""
    d = _vector(vector, "the direction")

    def fn(acts, images):
        a = _acts(acts, layer, "direction")
        dd = _fits(d, a, layer, "the direction")
        return _mean_over_positions(_cosine(a, dd) if cossim else a @ dd)

    return Objective(fn, (layer,), batch, f"direction({layer})")


def direction_neuron(layer: str, vector, y: int | None = None, x: int | None = None,
                     cossim: bool = True, batch: int | None = None) -> Objective:
    """Lucent's ``direction_neuron``: cos(a_yx, d) at one position (default: the centre)."""
    d = _vector(vector, "the direction")

    def fn(acts, images):
        a = _at(_acts(acts, layer, "direction_neuron"), y, x)
        dd = _fits(d, a, layer, "the direction")
        return _cosine(a, dd) if cossim else a @ dd

    return Objective(fn, (layer,), batch, f"direction_neuron({layer})")


def neuron_weight(layer: str, weight, y: int | None = None, x: int | None = None,
                  batch: int | None = None) -> Objective:
    """Lucent's ``neuron_weight``: mean_k w_k a^k_yx, the channels at one position
    (default: the centre) weighted per channel (``weight`` None: their plain mean)."""
    w = None if weight is None else _vector(weight, "the weight")

    def fn(acts, images):
        a = _at(_acts(acts, layer, "neuron_weight"), y, x)
        return jnp.mean(a if w is None else a * _fits(w, a, layer, "the weight"), axis=-1)

    return Objective(fn, (layer,), batch, f"neuron_weight({layer})")


def channel_weight(layer: str, weight, batch: int | None = None) -> Objective:
    """Lucent's ``channel_weight``: mean over positions and channels of w_k a^k_ij."""
    w = _vector(weight, "the weight")

    def fn(acts, images):
        a = _acts(acts, layer, "channel_weight", spatial=True)
        return jnp.mean(a * _fits(w, a, layer, "the weight"), axis=(1, 2, 3))

    return Objective(fn, (layer,), batch, f"channel_weight({layer})")


def localgroup_weight(layer: str, weight=None, y: int = 0, x: int = 0, wy: int = 1,
                      wx: int = 1, batch: int | None = None) -> Objective:
    """Lucent's ``localgroup_weight``: mean of w_k a^k_ij over the window of ``wy`` x
    ``wx`` positions from (y, x), weighted per channel (``weight`` None: unweighted)."""
    w = None if weight is None else _vector(weight, "the weight")

    def fn(acts, images):
        a = _acts(acts, layer, "localgroup_weight", spatial=True)[:, y:y + wy, x:x + wx]
        return jnp.mean(a if w is None else a * _fits(w, a, layer, "the weight"),
                        axis=(1, 2, 3))

    return Objective(fn, (layer,), batch, f"localgroup_weight({layer})")


def _channel_mean(acts, layer: str, index: int, what: str):
    a = _acts(acts, layer, what)
    if not 0 <= index < a.shape[-1]:
        raise ResNetJaxError(f"unit {index} is out of range for layer {layer!r}, which has "
                             f"{a.shape[-1]} channels (valid 0..{a.shape[-1] - 1})")
    return _mean_over_positions(a[..., index])


def _batch_of(acts, layer: str, what: str) -> int:
    n = acts[layer].shape[0]
    if n < 2:
        raise ResNetJaxError(f"{what} compares the images of a batch; give a batch of 2 or "
                             f"more (batch=), got {n}")
    return n


def channel_interpolate(layer1: str, index1: int, layer2: str, index2: int,
                        batch: int | None = None) -> Objective:
    """Lucent's ``channel_interpolate``: image n of a batch of B maximises
    (1 - t_n) mean(a^{k1}) + t_n mean(a^{k2}), t_n = n / (B - 1): a walk from one channel
    to the other across the batch."""

    def fn(acts, images):
        n = _batch_of(acts, layer1, "channel_interpolate")
        t = jnp.arange(n, dtype=jnp.float32) / (n - 1)
        m1 = _channel_mean(acts, layer1, int(index1), "channel_interpolate")
        m2 = _channel_mean(acts, layer2, int(index2), "channel_interpolate")
        return (1.0 - t) * m1 + t * m2

    return Objective(fn, (layer1, layer2), batch,
                     f"channel_interpolate({layer1}, {index1}, {layer2}, {index2})",
                     ((layer1, int(index1)), (layer2, int(index2))))


def alignment(layer: str, decay_ratio: float = 2.0, batch: int | None = None) -> Objective:
    """Lucent's ``alignment`` (as a value to raise, so add it: ``+ w * alignment(...)``):
    minus sum over images a, b = a + d (d = 1..4) of mean((A_a - A_b)^2) / decay_ratio^d,
    A the layer's output; each pair's term is shared half and half by its two images."""

    def fn(acts, images):
        a = acts[layer].reshape(acts[layer].shape[0], -1)
        n = _batch_of(acts, layer, "alignment")
        out = jnp.zeros((n,), a.dtype)
        for d in range(1, min(4, n - 1) + 1):
            term = jnp.mean(jnp.square(a[:-d] - a[d:]), axis=1) / float(decay_ratio) ** d
            out = out.at[:-d].add(-0.5 * term).at[d:].add(-0.5 * term)
        return out

    return Objective(fn, (layer,), batch, f"alignment({layer})")


def diversity(layer: str, batch: int | None = None) -> Objective:
    """Lucent's ``diversity``, the similarity to penalise (subtract it:
    ``channel(...) - w * diversity(...)``): G_i, the Gram matrix of image i's channels
    over positions scaled to unit Frobenius norm; image i's value is
    sum_{j != i} <G_i, G_j> (its mean over the batch is Lucent's)."""

    def fn(acts, images):
        a = _acts(acts, layer, "diversity", spatial=True)
        _batch_of(acts, layer, "diversity")
        flat = a.reshape(a.shape[0], -1, a.shape[-1])
        grams = jnp.einsum("bpc,bpd->bcd", flat, flat)
        norm = jnp.sqrt(jnp.sum(jnp.square(grams), axis=(1, 2), keepdims=True))
        grams = grams / jnp.maximum(norm, 1e-12)
        sims = jnp.einsum("icd,jcd->ij", grams, grams)
        return jnp.sum(sims, axis=1) - jnp.diagonal(sims)

    return Objective(fn, (layer,), batch, f"diversity({layer})")


__all__ = ["Objective", "alignment", "channel", "channel_interpolate", "channel_weight",
           "class_log_prob", "class_logit", "direction", "direction_neuron", "diversity",
           "l1", "l2", "localgroup_weight", "neuron", "neuron_weight", "stack", "total", "tv"]
