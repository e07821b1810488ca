"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's
backward pass keeping only positive gradients at positive inputs."""

from ..relu import guided_relu, relu_variant
from .base import AttributionMethod


class GuidedBackprop(AttributionMethod):
    name = "guided_backprop"

    def attributions(self, model, variables, x, t, *, key=None, **options):
        fwd = self.forward(model, variables)
        with relu_variant(guided_relu):
            return self.input_grads(fwd, x, t, model.num_classes)[1]
