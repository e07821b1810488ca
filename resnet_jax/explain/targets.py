"""Which classes to explain: the caller's targets checked and shaped as a (batch, T)
table, the predicted class filled in, one cotangent per target column."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError


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
