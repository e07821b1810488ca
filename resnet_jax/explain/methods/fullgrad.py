"""FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam computes it: the input's
gradient times the input, plus every bias's gradient times the bias, over all layers;
no target layer.

input part: sum_c norm(|x_c * dy/dx_c|); each layer l with a bias (every BatchNorm, whose
bias in evaluation is beta - mean * gamma / sqrt(var + eps), and every convolution with a
bias): sum_k resize(norm(|b_k * dy/dz^k|)), z the layer's output; the map is the sum of
all parts scaled to [0, 1] (``norm``: per map ``(m - min) / (max + 1e-7)``).
With ``eigen_smooth`` the parts are each scaled and resized to 1/8 of the input, replaced
by their first principal component, and resized back (pytorch-grad-cam's order).

The gradients with respect to the layers' outputs come from a zero perturbation added to
each of them by a flax method interceptor, all from one forward pass; several targets
are several cotangents pulled back through it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...models.layers import BatchNorm
from ..maps import minmax, principal_projection, resize_maps
from .base import CAMMethod


def _bias_layer(module, method_name: str) -> bool:
    if method_name != "__call__":
        return False
    return isinstance(module, BatchNorm) or (isinstance(module, nn.Conv) and module.use_bias)


def _bias_of(module):
    """The layer's bias vector in evaluation (a BatchNorm folds its running statistics)."""
    params = module.variables["params"]
    if isinstance(module, BatchNorm):
        stats = module.variables["batch_stats"]
        mul = params["scale"] * jax.lax.rsqrt(stats["var"] + module.epsilon)
        return params["bias"] - stats["mean"] * mul
    return params["bias"]


def bias_forward(model, variables, x, perts=None):
    """``(logits, {path: bias})``; each bias layer's output plus ``perts[path]``."""
    biases = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if not _bias_layer(context.module, context.method_name):
            return out
        path = "/".join(context.module.path)
        biases[path] = _bias_of(context.module)
        return out if perts is None else out + perts[path]

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, x, train=False)
    return logits, biases


def bias_shapes(model, variables, x):
    """``{path: output shape}`` of every bias layer, computed abstractly."""
    shapes = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _bias_layer(context.module, context.method_name):
            shapes["/".join(context.module.path)] = out.shape
        return out

    def run(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x, train=False)

    jax.eval_shape(run, variables, x)
    return shapes


class FullGrad(CAMMethod):
    name = "fullgrad"
    uses_layer = False

    def cam_maps(self, model, variables, x, targets, layers, eigen_smooth, options):
        from ..taps import model_variables
        from ..targets import resolve_targets

        v = model_variables(variables)
        zeros = {k: jnp.zeros(s, x.dtype) for k, s in bias_shapes(model, v, x).items()}
        fwd = lambda x, perts: bias_forward(model, v, x, perts)  # noqa: E731
        logits, pull, biases = jax.vjp(fwd, x, zeros, has_aux=True)
        t = resolve_targets(logits, targets)
        gx, gz = jax.vmap(pull)(self.target_cotangents(logits, targets, t, options))
        hw = x.shape[1:3]
        parts = [_channel_norm(jnp.abs(gx * x[None]))]  # (T, B, C, H, W)
        for path, g in gz.items():
            contrib = _channel_norm(jnp.abs(g * biases[path])).sum(axis=2)
            parts.append(resize_maps(contrib, hw)[:, :, None])
        parts = jnp.concatenate(parts, axis=2)  # (T, B, C + layers, H, W)
        if eigen_smooth:
            small = resize_maps(minmax(parts), (hw[0] // 8, hw[1] // 8))
            proj = principal_projection(jnp.moveaxis(small, 2, -1))
            return logits, t, minmax(resize_maps(minmax(proj), hw))
        return logits, t, minmax(jnp.sum(parts, axis=2))


def _channel_norm(m):
    """(T, B, h, w, K) -> (T, B, K, h, w), each channel's map scaled as ``minmax``."""
    return minmax(jnp.moveaxis(m, -1, 2))
