"""EigenCAM (Muhammad & Yeasin 2020): the first principal component of the activations,
with no gradients and no class: the same map for every target.

M = A reshaped to (hw, K), centred over the positions; map = ReLU(M v_1) with v_1 the
first right singular vector of M (sign: the projection's largest entry positive).
"""

from ..maps import principal_projection
from .base import CAMMethod


class EigenCAM(CAMMethod):
    name = "eigencam"
    uses_gradients = False
    eigen_smoothable = False

    def raw_cam(self, acts, grads):
        return principal_projection(acts)[None]
