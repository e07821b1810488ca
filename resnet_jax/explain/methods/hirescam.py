"""HiResCAM (Draelos & Carin 2020): map = ReLU(sum_k G^k * A^k), element-wise, so the map
is exactly the target score's first-order contribution of each position."""

import jax.numpy as jnp

from .base import CAMMethod


class HiResCAM(CAMMethod):
    name = "hirescam"

    def raw_cam(self, acts, grads):
        return jnp.sum(grads * acts[None], axis=-1)
