"""Grad-CAM++ (Chattopadhay et al. 2018, eq. 19), with pytorch-grad-cam's conventions.

alpha_ij = g^2 / (2 g^2 + sum_ab A_ab * g^3 + eps), zero where g == 0;
w_k = sum_ij alpha_ij * ReLU(g_ij);  map = ReLU(sum_k w_k A^k).
"""

import jax.numpy as jnp

from .base import CAMMethod


class GradCAMPlusPlus(CAMMethod):
    name = "gradcam++"
    eps = 1e-6

    def weights(self, acts, grads):
        g2 = grads * grads
        g3 = g2 * grads
        sum_acts = jnp.sum(acts, axis=(1, 2), keepdims=True)[None]  # (1, B, 1, 1, K)
        alpha = g2 / (2 * g2 + sum_acts * g3 + self.eps)
        alpha = jnp.where(grads != 0, alpha, 0.0)
        return jnp.sum(jnp.maximum(grads, 0) * alpha, axis=(2, 3))
