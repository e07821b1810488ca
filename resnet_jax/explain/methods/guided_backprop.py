"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's
backward pass keeping only positive gradients at positive inputs."""

from ... import ops
from ..relu import guided_relu
from .base import AttributionMethod


class GuidedBackprop(AttributionMethod):
    name = "guided_backprop"

    def attributions(self, model, variables, x, t, *, key=None, **options):
        guided = ops.cpu_fast(model.clone(act=guided_relu))
        return self.input_grads(self.forward(guided, variables), x, t, model.num_classes)[1]
