"""FEM, the Feature Explanation Method (Fuad et al. 2020): channels weighted by how often
they fire far above their own mean; no gradients, the same map for every target.

w_k = mean_ij [A^k_ij > mean(A^k) + k_sigma * std(A^k)],  map = ReLU(sum_k w_k A^k)
(``k`` option, default 2; population standard deviation over the positions).
"""

import jax.numpy as jnp

from .base import CAMMethod, LayerPass


class FEM(CAMMethod):
    name = "fem"
    uses_gradients = False
    eigen_smoothable = False
    k = 2.0

    def pass_cam(self, p: LayerPass):
        a = p.acts
        k = float(p.options.get("k", self.k))
        th = jnp.mean(a, axis=(1, 2), keepdims=True) + k * jnp.std(a, axis=(1, 2), keepdims=True)
        w = jnp.mean((a > th).astype(a.dtype), axis=(1, 2))  # (B, K)
        return jnp.einsum("bk,bhwk->bhw", w, a)[None]
