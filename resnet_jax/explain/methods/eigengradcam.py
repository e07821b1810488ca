"""EigenGradCAM (pytorch-grad-cam): EigenCAM of the activations times the gradients.

map = ReLU(first principal component of (G * A)), as ``eigencam``'s projection.
"""

from ..maps import principal_projection
from .base import CAMMethod


class EigenGradCAM(CAMMethod):
    name = "eigengradcam"
    eigen_smoothable = False

    def raw_cam(self, acts, grads):
        return principal_projection(grads * acts[None])
