"""Explain what a network learned, with ``jax.grad``.

- ``gradcam`` / ``explain``: the Grad-CAM family (Grad-CAM, Grad-CAM++, HiResCAM,
  Guided Grad-CAM) and gradient saliency (vanilla, SmoothGrad, Integrated Gradients,
  guided backpropagation), batched, several targets per image from one forward pass.
"""

from .api import Explanation, compiled, default_layer, explain, gradcam
from .methods import METHODS, get_method

__all__ = ["METHODS", "Explanation", "compiled", "default_layer", "explain", "get_method", "gradcam"]
