"""GradCAMElementWise (pytorch-grad-cam): HiResCAM with a ReLU on every product.

map = ReLU(sum_k ReLU(G^k * A^k)).
"""

import jax.numpy as jnp

from .base import CAMMethod


class GradCAMElementWise(CAMMethod):
    name = "gradcam_elementwise"

    def weighted(self, acts, grads):
        return jnp.maximum(grads * acts[None], 0)
