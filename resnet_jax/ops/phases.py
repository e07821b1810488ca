"""Scatter-free sums into a strided grid: contributions summed per phase, then interleaved.

A phase is the set of positions ``(s0 * q + a, s1 * r + b)`` for fixed ``(a, b)``. Summing
each phase on the coarse grid and interleaving the phases at the end avoids building
stride-dilated full-size arrays, which XLA:CPU handles poorly.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def sum_by_phase(parts, strides, padded_hw):
    """Sum window-offset contributions into a (padded) input of size ``padded_hw``.

    ``parts`` yields ``(i, j, v)``: v (B, oh, ow, C) is what output (o, p) sends through
    window offset (i, j) to input (strides[0]*o + i, strides[1]*p + j), i.e. to phase
    (i % s0, j % s1) at (o + i // s0, p + j // s1). Returns
    (B, s0*ceil(H/s0), s1*ceil(W/s1), C); the caller crops.
    """
    (sh, sw), (hp, wp) = strides, padded_hw
    ph, pw = -(-hp // sh), -(-wp // sw)
    phases: dict = {}
    for i, j, v in parts:
        (mi, a), (mj, b) = divmod(i, sh), divmod(j, sw)
        oh, ow = v.shape[1:3]
        part = lax.pad(v, jnp.zeros((), v.dtype),
                       ((0, 0, 0), (mi, ph - oh - mi, 0), (mj, pw - ow - mj, 0), (0, 0, 0)))
        phases[a, b] = part if (a, b) not in phases else phases[a, b] + part
    first = next(iter(phases.values()))
    return interleave(phases, strides, (first.shape[0], ph, pw, first.shape[3]))


def interleave(phases: dict, strides, shape):
    """(B, H, W, C) from phase arrays ``phases[a, b]`` of shape ``shape`` (missing: zeros):
    element (q, r) of phase (a, b) goes to (strides[0] * q + a, strides[1] * r + b)."""
    (sh, sw), (batch, ph, pw, c) = strides, shape
    blank = jnp.zeros(shape, next(iter(phases.values())).dtype)
    rows = [jnp.stack([phases.get((a, b), blank) for b in range(sw)], axis=3)
            .reshape(batch, ph, pw * sw, c) for a in range(sh)]
    return jnp.stack(rows, axis=2).reshape(batch, ph * sh, pw * sw, c)
