"""One file per method over a shared base (``base.py``), as in pytorch-grad-cam."""

from ...errors import ResNetJaxError
from .ablationcam import AblationCAM
from .base import AttributionMethod, CAMMethod, Method
from .eigencam import EigenCAM
from .eigengradcam import EigenGradCAM
from .fem import FEM
from .finercam import FinerCAM
from .fullgrad import FullGrad
from .gradcam import GradCAM
from .gradcam_elementwise import GradCAMElementWise
from .gradcam_plusplus import GradCAMPlusPlus
from .gradient_shap import GradientShap
from .guided_backprop import GuidedBackprop
from .guided_gradcam import GuidedGradCAM
from .hirescam import HiResCAM
from .integrated_gradients import IntegratedGradients
from .kpcacam import KPCACAM
from .layercam import LayerCAM
from .occlusion import Occlusion
from .saliency import Saliency
from .scorecam import ScoreCAM
from .shapleycam import ShapleyCAM
from .smoothgrad import SmoothGrad
from .xgradcam import XGradCAM

METHODS: dict[str, Method] = {
    m.name: m
    for m in (GradCAM(), GradCAMPlusPlus(), HiResCAM(), Saliency(), SmoothGrad(),
              IntegratedGradients(), GuidedBackprop(), GuidedGradCAM())
    + (ScoreCAM(), AblationCAM())
    + (Occlusion(), GradientShap())
    + (XGradCAM(), LayerCAM(), EigenCAM(), EigenGradCAM(), GradCAMElementWise(), KPCACAM(),
       ShapleyCAM(), FinerCAM(), FEM(), FullGrad())
}

ALIASES = {
    "gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "vanilla": "saliency",
    "gradient": "saliency", "ig": "integrated_gradients", "integratedgradients":
    "integrated_gradients", "guidedbackprop": "guided_backprop", "guidedgradcam":
    "guided_gradcam", "gradshap": "gradient_shap", "expectedgradients": "gradient_shap",
    "elementwise": "gradcam_elementwise", "kpca": "kpcacam", "kernelpcacam": "kpcacam",
    "shapley": "shapleycam", "finer": "finercam", "featureexplanation": "fem",
}


def get_method(name: str) -> Method:
    """The method called ``name`` (case, '-' and '_' are ignored), or a ResNetJaxError."""
    if isinstance(name, Method):
        return name
    key = str(name).lower().replace("-", "_")
    if key in METHODS:
        return METHODS[key]
    squashed = key.replace("_", "")
    for n in METHODS:
        if n.replace("_", "") == squashed:
            return METHODS[n]
    if squashed in ALIASES:
        return METHODS[ALIASES[squashed]]
    raise ResNetJaxError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")


__all__ = [
    "ALIASES", "AblationCAM", "AttributionMethod", "CAMMethod", "GradCAM", "GradCAMPlusPlus", "GuidedBackprop",
    "GuidedGradCAM", "HiResCAM", "IntegratedGradients", "METHODS", "Method", "Saliency",
    "ScoreCAM", "SmoothGrad", "get_method",
    "GradientShap", "Occlusion",
    "EigenCAM", "EigenGradCAM", "FEM", "FinerCAM", "FullGrad", "GradCAMElementWise", "KPCACAM",
    "LayerCAM", "ShapleyCAM", "XGradCAM",
]
