"""Deep Feature Factorization (Collins et al. 2018): the concepts a layer uses.

    c = resnet_jax.explain.concepts(model, variables, images, "layer4", k=5)
    c.maps         # (B, k, H, W) in [0, 1]: where each concept is, per image
    c.top_classes  # (k, top): the classes each concept votes for

The layer's activations of the whole batch form a (channels, positions) matrix A. Each
channel is shifted by its minimum (A' = A - min), and a non-negative factorisation
A' ~= W H with k components is found by coordinate descent (scikit-learn's ``cd`` solver
with its ``init='random'`` start, as pytorch-grad-cam's ``DeepFeatureFactorization``).
Column j of W + min is concept j's embedding in the layer's channel space; row j of H
reshaped to (B, h, w) is where the concept is. Each map is scaled to [0, 1] and resized to
the input (bilinear). A concept's class scores are the model's logits when the layer's
output is that embedding at every position: for a ResNet's last stage this is the linear
head applied to the embedding. Everything from the forward pass to the class scores is
one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..models.registry import tapped_outputs
from .images import prepare_images
from .maps import minmax, resize_maps
from .taps import check_layer, model_variables

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class Concepts:
    """What ``concepts`` found.

    maps: (B, k, H, W) in [0, 1], each concept's map at the input's size.
    embeddings: (k, channels), each concept in the layer's channel space.
    logits: (k, classes) the model's logits for each concept; probs: their softmax.
    top_classes: (k, top) class indices by falling score; top_probs: their probabilities.
    iterations: coordinate-descent sweeps the factorisation ran.
    """

    maps: np.ndarray
    embeddings: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    top_classes: np.ndarray
    top_probs: np.ndarray
    iterations: int
    layer: str


def random_init(x_mean, shape: tuple[int, int], k: int, seed: int = 0):
    """scikit-learn's ``init='random'`` start for an (n, m) matrix of mean ``x_mean``:
    ``|N(0, 1)| * sqrt(mean / k)``, H drawn before W from ``RandomState(seed)``."""
    rng = np.random.RandomState(seed)
    h = rng.standard_normal(size=(k, shape[1])).astype(np.float32)
    w = rng.standard_normal(size=(shape[0], k)).astype(np.float32)
    avg = jnp.sqrt(x_mean / k)
    return jnp.abs(avg * w), jnp.abs(avg * h)


def cd_sweep(x, w, ht):
    """One cyclic coordinate-descent sweep over the columns of ``w`` (n, k) for
    x ~= w @ ht.T, as scikit-learn's ``_update_cdnmf_fast``: for each component t,
    w_t <- max(0, w_t - grad_t / hess_t). Returns (w, the summed projected gradient)."""
    hht = jnp.matmul(ht.T, ht, precision=HIGHEST)
    xht = jnp.matmul(x, ht, precision=HIGHEST)

    def column(t, carry):
        w, violation = carry
        grad = jnp.matmul(w, hht[t], precision=HIGHEST) - xht[:, t]
        wt = w[:, t]
        pg = jnp.where(wt == 0, jnp.minimum(grad, 0.0), grad)
        hess = hht[t, t]
        new = jnp.where(hess != 0, jnp.maximum(wt - grad / hess, 0.0), wt)
        return w.at[:, t].set(new), violation + jnp.sum(jnp.abs(pg))

    return jax.lax.fori_loop(0, w.shape[1], column, (w, jnp.zeros((), x.dtype)))


def nmf(x, w, h, max_iter: int = 200, tol: float = 1e-4):
    """Non-negative x (n, m) ~= w (n, k) @ h (k, m) from the start (w, h) by alternating
    coordinate descent, stopping when a sweep's projected gradient falls to ``tol`` times
    the first sweep's (scikit-learn's ``solver='cd'``). Returns (w, h, sweeps)."""

    def step(state):
        w, ht, i, first, _ = state
        w, vw = cd_sweep(x, w, ht)
        ht, vh = cd_sweep(x.T, ht, w)
        violation = vw + vh
        first = jnp.where(i == 0, violation, first)
        return w, ht, i + 1, first, violation

    def going(state):
        _, _, i, first, violation = state
        done = (i > 0) & ((first == 0) | (violation / first <= tol))
        return (i < max_iter) & ~done

    zero = jnp.zeros((), x.dtype)
    w, ht, i, _, _ = jax.lax.while_loop(going, step, (w, h.T, 0, zero, zero))
    return w, ht.T, i


@functools.lru_cache(maxsize=16)
def _program(model, layer: str, k: int, top: int, seed: int, max_iter: int, tol: float):
    def run(variables, x):
        v = model_variables(variables)
        _, outs = tapped_outputs(model, v, x)
        acts = outs[layer]  # (B, h, w, C)
        b, hh, ww, c = acts.shape
        a = jnp.nan_to_num(acts, nan=0.0).reshape(-1, c).T  # (C, B*h*w)
        offset = jnp.min(a, axis=1, keepdims=True)
        a = a - offset
        w0, h0 = random_init(jnp.mean(a), a.shape, k, seed)
        w, h, iters = nmf(a, w0, h0, max_iter, tol)
        emb = (w + offset).T  # (k, C)
        maps = h.reshape(k, b, hh, ww).transpose(1, 0, 2, 3)
        maps = resize_maps(minmax(maps), x.shape[1:3])
        logits = concept_logits(model, v, x[:1], layer, acts[:1], emb)
        probs = jax.nn.softmax(logits, axis=-1)
        top_p, top_c = jax.lax.top_k(probs, top)
        return maps, emb, logits, probs, top_c, top_p, iters

    return jax.jit(run)


def concept_logits(model, variables, x1, layer: str, acts1, emb):
    """(k, classes): the logits when ``layer``'s output is each embedding at every
    position (the layers before it run once, on one image)."""

    def one(e):
        pert = jnp.broadcast_to(e, acts1.shape) - acts1
        return tapped_outputs(model, variables, x1, perturbations={layer: pert})[0][0]

    return jax.vmap(one)(emb)


def concepts(model, variables, images, layer: str | None = None, k: int = 5, *,
             top: int = 5, image_size=None, seed: int = 0, max_iter: int = 200,
             tol: float = 1e-4) -> Concepts:
    """Deep Feature Factorization of ``layer``'s activations over ``images`` into ``k``
    concepts shared by the batch: each concept's map per image and its top classes.

    ``images``: normalised as the model expects (any form ``gradcam`` takes); ``layer``:
    a spatial named output (default: the last stage); ``seed``: the factorisation's
    random start (scikit-learn's ``random_state``); ``max_iter``/``tol``: its stopping
    rule. See the module docstring for the method.
    """
    from .api import default_layer

    x = prepare_images(model, images, image_size)
    if layer is None:
        layer = default_layer(model, variables, x.shape)
    shape = check_layer(model, variables, x.shape, layer)
    if not 1 <= int(k) <= shape[-1]:
        raise ResNetJaxError(f"k must be between 1 and the layer's {shape[-1]} channels, "
                             f"got {k}")
    classes = int(model.num_classes)
    top = min(int(top), classes)
    run = _program(model, layer, int(k), top, int(seed), int(max_iter), float(tol))
    out = [np.asarray(o) for o in run(model_variables(variables), x)]
    maps, emb, logits, probs, top_c, top_p, iters = out
    return Concepts(maps=maps, embeddings=emb, logits=logits, probs=probs,
                    top_classes=top_c, top_probs=top_p, iterations=int(iters), layer=layer)


def concept_figure(image, found: Concepts, index: int = 0, class_names=None,
                   top: int = 2, scale: int | None = None) -> np.ndarray:
    """One row as uint8 (H, W, 3): image ``index`` of the batch (RGB, [0, 1] or uint8, at
    the input's size), then each concept's map over it, captioned under the picture with
    the concept's ``top`` classes and their probabilities. ``class_names``: a sequence of
    names (ImageNet's for a 1000-class model when None, else the class indices)."""
    from ..viz.overlays import cam_figure

    if not 0 <= index < found.maps.shape[0]:
        raise ResNetJaxError(f"index {index} is out of range for {found.maps.shape[0]} images")
    if class_names is None and found.logits.shape[-1] == 1000:
        from ..imagenet import class_names as imagenet_names

        class_names = imagenet_names()
    labels = []
    for j in range(found.maps.shape[1]):
        parts = []
        for c, p in list(zip(found.top_classes[j], found.top_probs[j]))[:top]:
            name = class_names[int(c)].split(",")[0] if class_names is not None else f"#{c}"
            parts.append(f"{name} {p:.2f}")
        labels.append(f"concept {j}: " + ", ".join(parts))
    return cam_figure(image, list(found.maps[index]), labels, show_map=False, scale=scale)
