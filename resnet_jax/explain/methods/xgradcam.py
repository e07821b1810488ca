"""XGradCAM (Fu et al. 2020), as pytorch-grad-cam computes it.

w_k = sum_ij G^k_ij * A^k_ij / (sum_ij A^k_ij + 1e-7),  map = ReLU(sum_k w_k A^k).
"""

import jax.numpy as jnp

from .base import CAMMethod


class XGradCAM(CAMMethod):
    name = "xgradcam"
    eps = 1e-7

    def weights(self, acts, grads):
        total = jnp.sum(acts, axis=(1, 2), keepdims=True)[None]  # (1, B, 1, 1, K)
        return jnp.sum(grads * acts[None] / (total + self.eps), axis=(2, 3))
