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


__all__ = ["Objective", "channel", "class_log_prob", "class_logit", "l1", "l2", "neuron", "stack", "total", "tv"]
