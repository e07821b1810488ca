"""ShapleyCAM (Cai 2025): Grad-CAM's weights corrected by the second-order term, the
Hessian-vector product of the target score with the activations themselves.

w_k = mean_ij (G - 0.5 * H A)^k_ij,  map = ReLU(sum_k w_k A^k), where H is the Hessian of
the target score with respect to the layer's output A. ``H A`` is a forward-mode
derivative (``jax.jvp``) of the reverse-mode gradient. A ResNet is piecewise linear after
any layer, so H is zero for a logit target and the map is Grad-CAM's; a softmax target
(``ClassifierOutputSoftmaxTarget``) or ``ClassifierOutputReST`` makes the term count.
"""

import jax
import jax.numpy as jnp

from ...models.registry import tapped_outputs
from .base import CAMMethod, LayerPass


class ShapleyCAM(CAMMethod):
    name = "shapleycam"

    def pass_weights(self, p: LayerPass):
        def total(pert, col):  # target column ``col``'s score summed over the batch
            logits = tapped_outputs(p.model, p.variables, p.x, perturbations={p.layer: pert})[0]
            return jnp.sum(p.scores(logits)[col])

        def one(col):
            g = jax.grad(total)
            return jax.jvp(lambda q: g(q, col), (jnp.zeros_like(p.acts),), (p.acts,))

        grads, hvp = jax.vmap(one)(jnp.arange(p.t.shape[1]))
        return jnp.mean(grads - 0.5 * hvp, axis=(2, 3))
