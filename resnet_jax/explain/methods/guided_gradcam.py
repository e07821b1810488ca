"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the upsampled
Grad-CAM map, pixel by pixel; the map is max over channels of the absolute product."""


from ..maps import finish_saliency, reduce_channels
from .base import CAMMethod
from .gradcam import GradCAM
from .guided_backprop import GuidedBackprop


class GuidedGradCAM(CAMMethod):
    name = "guided_gradcam"

    def compute(self, model, variables, x, targets, *, layer=None, key=None, **options):
        logits, t, cams = GradCAM().compute(model, variables, x, targets, layer=layer)
        guided = GuidedBackprop().attributions(model, variables, x, t)
        product = guided * cams[..., None]
        return logits, t, finish_saliency(reduce_channels(product, "absmax"))
