"""Vanilla gradient saliency (Simonyan et al. 2014): max over channels of |dy/dx|."""

from .base import AttributionMethod


class Saliency(AttributionMethod):
    name = "saliency"

    def attributions(self, model, variables, x, t, *, key=None, **options):
        fwd = self.forward(model, variables)
        return self.input_grads(fwd, x, t, model.num_classes)[1]
