"""One file per method over a shared base (``base.py``), as in pytorch-grad-cam."""

from ...errors import ResNetJaxError
from .base import AttributionMethod, CAMMethod, Method
from .gradcam import GradCAM
from .gradcam_plusplus import GradCAMPlusPlus
from .guided_backprop import GuidedBackprop
from .guided_gradcam import GuidedGradCAM
from .hirescam import HiResCAM
from .integrated_gradients import IntegratedGradients
from .saliency import Saliency
from .smoothgrad import SmoothGrad

METHODS: dict[str, Method] = {
    m.name: m
    for m in (GradCAM(), GradCAMPlusPlus(), HiResCAM(), Saliency(), SmoothGrad(),
              IntegratedGradients(), GuidedBackprop(), GuidedGradCAM())
}

ALIASES = {
    "gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "vanilla": "saliency",
    "gradient": "saliency", "ig": "integrated_gradients", "integratedgradients":
    "integrated_gradients", "guidedbackprop": "guided_backprop", "guidedgradcam":
    "guided_gradcam",
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
    "ALIASES", "AttributionMethod", "CAMMethod", "GradCAM", "GradCAMPlusPlus", "GuidedBackprop",
    "GuidedGradCAM", "HiResCAM", "IntegratedGradients", "METHODS", "Method", "Saliency",
    "SmoothGrad", "get_method",
]
