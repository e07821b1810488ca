"""A boundary XLA:CPU does not fuse across: ``on_stored(fn, x)``."""

from __future__ import annotations

from jax import lax


def on_stored(fn, x):
    """``fn(x)`` for a cheap ``fn`` (a transpose, a strided slice, a comparison), run on
    ``x`` as stored rather than fused with the ops that produce it.

    XLA:CPU fuses the elementwise ops that produce ``x`` (BatchNorm, ReLU, a residual
    add) into a following transpose and then reads their inputs in the transposed order,
    several times slower than transposing the stored array. Its CPU pipeline drops
    ``optimization_barrier``; a conditional is a boundary it keeps. Both branches are
    ``fn``, so the predicate (true unless the element is NaN) never changes the result.
    A test compiles a gradient through it and checks the conditional is still there.
    """
    if x.size == 0:
        return fn(x)
    first = x[(0,) * x.ndim]
    return lax.cond(first == first, fn, fn, x)
