"""Grad-CAM (Selvaraju et al. 2017).

w_k = mean_ij dy/dA^k_ij,  map = ReLU(sum_k w_k A^k), upsampled and scaled to [0, 1].
"""

import jax.numpy as jnp

from .base import CAMMethod


class GradCAM(CAMMethod):
    name = "gradcam"

    def weights(self, acts, grads):
        return jnp.mean(grads, axis=(2, 3))
