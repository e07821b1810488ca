"""LayerCAM (Jiang et al. 2021): each position weighted by its own positive gradient.

map = ReLU(sum_k ReLU(G^k) * A^k), element-wise.
"""

import jax.numpy as jnp

from .base import CAMMethod


class LayerCAM(CAMMethod):
    name = "layercam"

    def weighted(self, acts, grads):
        return jnp.maximum(grads, 0) * acts[None]
