"""Explain what a network learned, with ``jax.grad``.

- ``gradcam`` / ``explain``: the Grad-CAM family (Grad-CAM, Grad-CAM++, HiResCAM,
  Guided Grad-CAM) and gradient saliency (vanilla, SmoothGrad, Integrated Gradients,
  guided backpropagation), batched, several targets per image from one forward pass.
- ``maximize``: activation maximisation of composable ``objectives`` (channels, neurons,
  class logits, L1/L2/TV penalties) over a ``param`` (raw pixels, Fourier with
  decorrelated colour) with random ``transforms``, compiled as one ``lax.scan``.
- ``faithfulness``: deletion / insertion curves and the confidence drop.
- ``load_model`` / ``Preprocessing``: a saved model with the preprocessing it was trained
  with; pass ``preprocess=`` to ``gradcam``/``explain``/``maximize`` to apply it.
"""

from . import faithfulness, objectives, param, transforms
from .api import Explanation, compiled, default_layer, explain, gradcam
from .inputs import Preprocessing, SavedModel, load_model, preprocessing_for
from .maximize import dead_units, evaluate, make_maximizer, maximize
from .methods import METHODS, get_method
from .objectives import Objective, channel, class_log_prob, class_logit, l1, l2, neuron, stack, tv

__all__ = [
    "METHODS", "Explanation", "Objective", "Preprocessing", "SavedModel", "channel",
    "class_log_prob", "class_logit", "compiled", "dead_units", "default_layer", "evaluate", "explain",
    "faithfulness", "get_method", "gradcam", "l1", "l2", "load_model", "make_maximizer",
    "maximize", "neuron", "objectives", "param", "preprocessing_for", "stack", "transforms",
    "tv",
]
