"""Explain what a network learned, with ``jax.grad``.

- ``gradcam`` / ``explain``: the Grad-CAM family (Grad-CAM, Grad-CAM++, HiResCAM,
  Guided Grad-CAM) and gradient saliency (vanilla, SmoothGrad, Integrated Gradients,
  guided backpropagation), batched, several targets per image from one forward pass.
- ``maximize``: activation maximisation of composable ``objectives`` (channels, neurons,
  class logits, L1/L2/TV penalties) over a ``param`` (raw pixels, Fourier with
  decorrelated colour) with random ``transforms``, compiled as one ``lax.scan``.
- ``faithfulness``: deletion / insertion curves and the confidence drop.
- ``metrics``: ROAD (most / least relevant first, combined) with its noisy linear
  imputation, and the confidence change under the map-multiplied image.
- ``concepts``: Deep Feature Factorization, k concepts of a layer (NMF of its
  activations), each a map per image and its top classes.
- ``top_examples``: the real images of a data set that excite a unit most, with
  each one's receptive-field crop (``explain.examples``).
- ``load_model`` / ``Preprocessing``: a saved model with the preprocessing it was trained
  with; pass ``preprocess=`` to ``gradcam``/``explain``/``maximize`` to apply it.
"""

from . import faithfulness, metrics, objectives, param, targets, transforms
from .api import Explanation, compiled, default_layer, explain, gradcam
from .concepts import Concepts, concepts
from .examples import Examples, top_examples
from .faithfulness import baseline_images, deletion_curve, insertion_curve
from .inputs import Preprocessing, SavedModel, load_model, preprocessing_for
from .maximize import dead_units, evaluate, make_maximizer, maximize
from .methods import METHODS, get_method
from .metrics import cam_mult_confidence_change, road_combined, road_lerf, road_morf
from .objectives import Objective, channel, class_log_prob, class_logit, l1, l2, neuron, stack, tv
from .targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FunctionTarget,
    Target,
)

__all__ = [
    "METHODS", "Explanation", "Objective", "Preprocessing", "SavedModel", "channel",
    "class_log_prob", "class_logit", "compiled", "dead_units", "default_layer", "evaluate", "explain",
    "faithfulness", "get_method", "gradcam", "l1", "l2", "load_model", "make_maximizer",
    "maximize", "neuron", "objectives", "param", "preprocessing_for", "stack", "transforms",
    "tv",
]
__all__ += ["Concepts", "concepts"]
__all__ += ["BinaryClassifierOutputTarget", "ClassifierOutputReST", "ClassifierOutputSoftmaxTarget",
            "ClassifierOutputTarget", "FunctionTarget", "Target", "targets"]
__all__ += ["Examples", "top_examples"]
__all__ += ["baseline_images", "cam_mult_confidence_change", "deletion_curve", "insertion_curve",
            "metrics", "road_combined", "road_lerf", "road_morf"]
