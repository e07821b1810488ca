"""KPCA-CAM (Karmani et al. 2024): EigenCAM with kernel PCA, as pytorch-grad-cam runs
scikit-learn's ``KernelPCA(n_components=1, kernel, gamma)``; no gradients, the same map
for every target.

X = A reshaped to (hw, K), centred over the positions; Kxx = kernel(X, X) centred
(``Kc = Kxx - row means - column means + mean``); map = ReLU(sqrt(lambda_1) u_1) with
(lambda_1, u_1) the largest eigenpair of Kc, u_1's sign fixed as scikit-learn's
``svd_flip`` (its largest entry positive). Options: ``kernel`` (sigmoid, the default;
rbf, poly, linear, cosine), ``gamma`` (default 1 / K), ``degree`` (3), ``coef0`` (1).
"""

import jax
import jax.numpy as jnp

from ...errors import ResNetJaxError
from ..maps import flip_sign
from .base import CAMMethod, LayerPass

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def kernel_matrix(x, kernel: str, gamma, degree: float = 3, coef0: float = 1.0):
    """(..., n, n) scikit-learn's ``pairwise_kernels(x, metric=kernel)`` of rows (..., n, K)."""
    hp = jax.lax.Precision.HIGHEST
    dot = jnp.einsum("...ik,...jk->...ij", x, x, precision=hp)
    gamma = 1.0 / x.shape[-1] if gamma is None else float(gamma)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return jnp.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    if kernel == "rbf":
        sq = jnp.sum(x * x, axis=-1)
        d2 = jnp.maximum(sq[..., :, None] + sq[..., None, :] - 2 * dot, 0)
        n = x.shape[-2]
        return jnp.exp(-gamma * jnp.where(jnp.eye(n, dtype=bool), 0.0, d2))
    if kernel == "cosine":
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1))
        norm = jnp.where(norm == 0, 1.0, norm)
        return dot / norm[..., :, None] / norm[..., None, :]
    raise ResNetJaxError(f"unknown kernel {kernel!r} for kpcacam; choose one of: "
                         f"{', '.join(KERNELS)}")


def kernel_projection(acts, kernel="sigmoid", gamma=None, degree=3, coef0=1.0):
    """(..., h, w) the first kernel principal component of acts (..., h, w, K)."""
    *lead, h, w, k = acts.shape
    x = jnp.nan_to_num(acts.reshape(*lead, h * w, k))
    x = x - jnp.mean(x, axis=-2, keepdims=True)
    km = kernel_matrix(x, kernel, gamma, degree, coef0)
    km = (km - jnp.mean(km, axis=-2, keepdims=True) - jnp.mean(km, axis=-1, keepdims=True)
          + jnp.mean(km, axis=(-2, -1), keepdims=True))
    lam, vec = jnp.linalg.eigh(km)
    proj = flip_sign(vec[..., -1]) * jnp.sqrt(jnp.maximum(lam[..., -1:], 0))
    return proj.reshape(*lead, h, w)


class KPCACAM(CAMMethod):
    name = "kpcacam"
    uses_gradients = False
    eigen_smoothable = False

    def pass_cam(self, p: LayerPass):
        o = p.options
        return kernel_projection(p.acts, o.get("kernel", "sigmoid"), o.get("gamma"),
                                 o.get("degree", 3), o.get("coef0", 1.0))[None]
