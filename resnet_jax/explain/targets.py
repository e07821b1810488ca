"""Which scores to explain: the caller's targets checked and shaped as a (batch, T)
table, the predicted class filled in, one cotangent per target column.

A target is a class index (its logit is the score, as today), ``None`` (the predicted
class), or a function of one image's logits ``(classes,) -> score``: one of the ready
``Target`` classes below (pytorch-grad-cam's names) or any callable. Class-index targets
travel as an int array; a table with a function in it travels as a ``TargetTable``
whose distinct functions are part of the compiled program (define a function once and
reuse it: a new lambda per call compiles a new program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError


@dataclasses.dataclass(frozen=True)
class Target:
    """A score of one image's logits. ``category``: the class it is about (``None`` = the
    predicted class) or, for targets that do not index the logits, their label."""

    category: int | None = None
    uses_class: ClassVar[bool] = True  # category is an index into the logits

    def score(self, logits, category):
        """The score of ``logits`` (classes,) for ``category`` (an int scalar)."""
        raise NotImplementedError

    @property
    def kind(self) -> Target:
        """What the compiled program holds: the target without its category."""
        return dataclasses.replace(self, category=None)

    def check(self, num_classes: int) -> None:
        c = self.category
        if self.uses_class and c is not None and not 0 <= int(c) < num_classes:
            raise ResNetJaxError(
                f"{type(self).__name__}({c}): class index out of range; the model has "
                f"{num_classes} classes (valid indices 0..{num_classes - 1})")

    def __call__(self, logits):
        if self.category is None and self.uses_class:
            raise ResNetJaxError(f"{type(self).__name__}(None) needs the predicted class: "
                                 "pass it as a target to explain/gradcam")
        return self.score(jnp.asarray(logits), self.category)


def _pick(v, c):
    return jnp.take(v, c, axis=-1, mode="clip")


class ClassifierOutputTarget(Target):
    """The logit of ``category``: the same as giving the class index."""

    def score(self, logits, category):
        return _pick(logits, category)


class ClassifierOutputSoftmaxTarget(Target):
    """The softmax probability of ``category``."""

    def score(self, logits, category):
        return _pick(jax.nn.softmax(logits, axis=-1), category)


class ClassifierOutputReST(Target):
    """The logit minus the cross-entropy of ``category``: y_c - (logsumexp(y) - y_c)
    (pre- and post-softmax together, the target ShapleyCAM's paper proposes)."""

    def score(self, logits, category):
        y = _pick(logits, category)
        return y - (jax.nn.logsumexp(logits, axis=-1) - y)


class BinaryClassifierOutputTarget(Target):
    """A model with one output (a sigmoid logit): the logit for ``category`` 1, minus the
    logit for ``category`` 0."""

    uses_class: ClassVar[bool] = False

    def score(self, logits, category):
        return jnp.where(category == 1, 1.0, -1.0) * jnp.sum(logits, axis=-1)

    def check(self, num_classes: int) -> None:
        if num_classes != 1:
            raise ResNetJaxError(
                f"BinaryClassifierOutputTarget scores a model with one output (a sigmoid "
                f"logit); this model has {num_classes}: use ClassifierOutputTarget or "
                "ClassifierOutputSoftmaxTarget")
        if self.category not in (0, 1):
            raise ResNetJaxError(f"BinaryClassifierOutputTarget({self.category!r}): the "
                                 "category must be 0 or 1")


@dataclasses.dataclass(frozen=True)
class FunctionTarget(Target):
    """Any function of one image's logits ``(classes,) -> score`` (jax-traceable)."""

    fn: Callable | None = None
    uses_class: ClassVar[bool] = False

    def score(self, logits, category):
        return jnp.asarray(self.fn(logits)).reshape(())

    @property
    def kind(self) -> Target:
        return self


def as_target(t) -> Target | None:
    """A ``Target`` for a callable entry of a targets table, ``None`` for a class index."""
    if isinstance(t, Target):
        return t
    if callable(t):
        return FunctionTarget(fn=t)
    return None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TargetTable:
    """A (batch, T) table with functions in it: ``categories`` (-1 = the predicted class),
    ``which`` (an index into ``kinds``), and ``kinds``, the distinct targets without their
    categories (static: part of the compiled program)."""

    categories: jax.Array
    which: jax.Array
    kinds: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self):
        return self.categories.shape

    def rows(self, start: int, stop: int) -> TargetTable:
        return TargetTable(jnp.asarray(self.categories[start:stop]),
                           jnp.asarray(self.which[start:stop]), self.kinds)

    def tile(self, n: int) -> TargetTable:
        """The table repeated ``n`` times along the batch (for augmented copies)."""
        return TargetTable(jnp.tile(self.categories, (n, 1)), jnp.tile(self.which, (n, 1)),
                           self.kinds)


def num_classes_of(model) -> int:
    return int(model.num_classes)


def _rows(targets, batch: int) -> tuple[list[list], bool]:
    """The caller's targets as ``batch`` rows of entries, and whether several per image."""
    if targets is None or np.isscalar(targets) or callable(targets) or (
            isinstance(targets, np.ndarray) and targets.ndim == 0):
        return [[targets]] * batch, False
    items = list(targets)
    if items and all(np.isscalar(t) or t is None or callable(t) for t in items):
        if len(items) == 1 and batch > 1:
            items = items * batch
        if len(items) != batch:
            raise ResNetJaxError(
                f"got {len(items)} targets for {batch} images; give one per image, "
                "one for all, or a (batch, T) list of several per image")
        return [[t] for t in items], False
    rows = [list(r) for r in items]
    if len(rows) == 1 and batch > 1:
        rows = rows * batch
    if len(rows) != batch or len({len(r) for r in rows}) != 1:
        raise ResNetJaxError(
            f"several targets per image must form a (batch={batch}, T) table, "
            f"got rows of lengths {[len(r) for r in rows]}")
    return rows, True


def normalize_targets(targets, batch: int, num_classes: int):
    """Targets as an int array ``(batch, T)`` (-1 = the predicted class), or a
    ``TargetTable`` when a function is among them, and whether the caller asked for
    several targets per image.

    ``None``: the predicted class; an int or a function: that target for every image; a
    sequence of ``batch`` of them: one per image; a ``(batch, T)`` nested sequence: T per
    image. A function is a ``Target`` (e.g. ``ClassifierOutputSoftmaxTarget(3)``) or any
    callable of one image's logits.
    """
    rows, multi = _rows(targets, batch)
    fns = [[as_target(t) for t in r] for r in rows]
    if any(f is not None for r in fns for f in r):
        return _table(rows, fns, num_classes), multi
    arr = np.array([[-1 if t is None else int(t) for t in r] for r in rows], np.int64)
    bad = arr[(arr != -1) & ((arr < 0) | (arr >= num_classes))]
    if bad.size:
        raise ResNetJaxError(
            f"class index {int(bad[0])} is out of range: the model has {num_classes} "
            f"classes (valid indices 0..{num_classes - 1})")
    return arr, multi


def _table(rows, fns, num_classes: int) -> TargetTable:
    kinds: list[Target] = []
    cats = np.full((len(rows), len(rows[0])), -1, np.int64)
    which = np.zeros_like(cats)
    for i, (row, frow) in enumerate(zip(rows, fns)):
        for j, (t, f) in enumerate(zip(row, frow)):
            f = f if f is not None else ClassifierOutputTarget(None if t is None else int(t))
            f.check(num_classes)
            if f.kind not in kinds:
                kinds.append(f.kind)
            which[i, j] = kinds.index(f.kind)
            cats[i, j] = -1 if f.category is None else int(f.category)
    return TargetTable(cats, which, tuple(kinds))


def resolve_targets(logits, targets):
    """The (batch, T) categories: -1 replaced with each image's predicted class (for
    targets that index the logits; a function of the logits keeps -1)."""
    pred = jnp.argmax(logits, axis=-1)[:, None]
    if isinstance(targets, TargetTable):
        uses = jnp.asarray([k.uses_class for k in targets.kinds])[targets.which]
        return jnp.where((targets.categories < 0) & uses, pred, targets.categories)
    return jnp.where(targets < 0, pred, targets)


def one_hot_cotangents(targets, num_classes: int, dtype=jnp.float32):
    """(T, batch, classes) cotangents: one backward pass per target column."""
    return jnp.moveaxis(jax.nn.one_hot(targets, num_classes, dtype=dtype), 1, 0)


def _entry_score(kinds: tuple, logits, category, which):
    """One table entry's score of one image's ``logits`` (classes,)."""
    if len(kinds) == 1:
        return kinds[0].score(logits, category)
    return jax.lax.switch(which, [k.score for k in kinds], logits, category)


def target_scores(logits, targets, t=None):
    """(T, batch, ...) each target's score of ``logits`` (batch, ..., classes); ``t`` the
    resolved categories (batch, T) (computed from ``logits`` when not given)."""
    if t is None:
        t = resolve_targets(logits, targets)
    if not isinstance(targets, TargetTable):
        idx = t.T.reshape(t.shape[1], t.shape[0], *([1] * (logits.ndim - 1)))
        return jnp.take_along_axis(logits[None], idx, axis=-1)[..., 0]
    one = lambda lg, c, w: _entry_score(targets.kinds, lg, c, w)  # noqa: E731
    for _ in range(logits.ndim - 2):  # extra axes between the batch and the classes
        one = jax.vmap(one, in_axes=(0, None, None))
    per_image = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, 0, 0))
    return jnp.moveaxis(per_image(logits, t, targets.which), 1, 0)


def target_cotangents(logits, targets, t=None):
    """(T, batch, classes): each target score's gradient with respect to the logits."""
    if t is None:
        t = resolve_targets(logits, targets)
    if not isinstance(targets, TargetTable):
        return one_hot_cotangents(t, logits.shape[-1], logits.dtype)
    grad = jax.grad(lambda lg, c, w: _entry_score(targets.kinds, lg, c, w))
    per_image = jax.vmap(jax.vmap(grad, in_axes=(None, 0, 0)), in_axes=(0, 0, 0))
    return jnp.moveaxis(per_image(logits, t, targets.which), 1, 0).astype(logits.dtype)
