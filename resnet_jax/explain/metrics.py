"""How faithful a map is, scored as pytorch-grad-cam 1.5.7 scores it.

- ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods"): remove a percentile of the pixels, most relevant first (``road_morf``) or
  least relevant first (``road_lerf``), fill them by *noisy linear imputation* and report
  ``score(imputed) - score(image)``. A faithful map makes MoRF fall far and LeRF stay
  close to 0; ``road_combined`` is ``(LeRF - MoRF) / 2`` averaged over percentiles
  (higher is better).
- ``cam_mult_confidence_change``: ``score(image * map) - score(image)``, the change when
  the model sees only what the map keeps (pytorch-grad-cam's CamMultImageConfidenceChange).

Noisy linear imputation: every removed pixel becomes the weighted mean of its 8
neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals, the weights of
neighbours outside the image dropped), kept neighbours entering as known values. That is
one sparse linear system per image, solved for all channels at once (``scipy``'s
``spsolve``), plus Gaussian noise of standard deviation ``noise`` on the filled pixels.

Which pixels go, as pytorch-grad-cam decides it: MoRF at percentile p keeps the pixels
whose map value is below the map's p-th percentile; LeRF at p keeps the pixels whose
``1 - map`` is below its p-th percentile.

Targets: None (each image's predicted class), a class or one per image, scored by
``score="logit"`` (pytorch-grad-cam's ``ClassifierOutputTarget``), ``"probability"``
(``ClassifierOutputSoftmaxTarget``) or a function ``(logits (N, classes), targets (N,))
-> (N,)``; or target functions of ``explain.targets`` (pytorch-grad-cam's names), which
score themselves. The images are imputed on the host; the
model scores the original and every perturbed batch in one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..xla_cpu import inference_jit
from .taps import model_variables
from .targets import (
    TargetTable,
    normalize_targets,
    num_classes_of,
    resolve_targets,
    target_scores,
)

# (row offset, column offset), weight: the imputer's neighbourhood
NEIGHBOR_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def imputation_system(image, keep):
    """The noisy linear imputer's system for one (H, W, C) image and its (H, W) ``keep``
    mask: ``(A (N, N) sparse, b (N, C), flat indices of the N removed pixels)`` with
    ``A v = b`` for the removed pixels' values ``v``."""
    from scipy.sparse import coo_matrix

    h, w = keep.shape
    known = keep.reshape(-1)
    flat = np.asarray(image, np.float32).reshape(h * w, -1)
    removed = np.flatnonzero(~known)
    n = len(removed)
    var = np.zeros(h * w, np.int64)
    var[removed] = np.arange(n)
    y, x = removed // w, removed % w
    b = np.zeros((n, flat.shape[1]), np.float64)
    diag = np.ones(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), weight in NEIGHBOR_WEIGHTS:
        inside = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        diag[~inside] -= weight
        ids = np.flatnonzero(inside)
        nbr = removed[ids] + dy * w + dx
        has = known[nbr]
        b[ids[has]] -= weight * flat[nbr[has]]
        rows.append(ids[~has])
        cols.append(var[nbr[~has]])
        vals.append(np.full(int((~has).sum()), weight))
    vals.insert(0, -diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(n, n)).tocsc()
    return a, b, removed


def noisy_linear_impute(image, keep, noise: float = 0.01, rng=None) -> np.ndarray:
    """(H, W, C) ``image`` with the pixels where ``keep`` is False filled by noisy linear
    imputation. ``rng``: anything with ``standard_normal(shape)`` (a numpy Generator;
    default ``np.random.default_rng()``); it draws (N, C) values for the N filled pixels."""
    from scipy.sparse.linalg import spsolve

    image = np.asarray(image, np.float32)
    keep = np.asarray(keep, bool)
    a, b, removed = imputation_system(image, keep)
    out = image.reshape(-1, image.shape[-1]).copy()
    if len(removed):
        filled = np.asarray(spsolve(a, b), np.float32).reshape(b.shape)
        rng = np.random.default_rng() if rng is None else rng
        draw = np.asarray(rng.standard_normal(b.shape), np.float32)
        out[removed] = filled + np.float32(noise) * draw
    return out.reshape(image.shape)


def road_keep(cam, percentile: float, most_relevant_first: bool) -> np.ndarray:
    """(H, W) pixels ROAD keeps at ``percentile``: MoRF keeps ``cam < P_p(cam)``, LeRF
    keeps ``1 - cam < P_p(1 - cam)`` (float32, as pytorch-grad-cam compares)."""
    m = np.asarray(cam, np.float32)
    if not most_relevant_first:
        m = np.float32(1) - m
    return m < np.float32(np.percentile(m, percentile))


def _score_fn(score):
    if callable(score):
        return score
    if score == "logit":
        return lambda logits, t: jnp.take_along_axis(logits, t[:, None], axis=1)[:, 0]
    if score == "probability":
        return lambda logits, t: jnp.take_along_axis(
            jax.nn.softmax(logits, axis=-1), t[:, None], axis=1)[:, 0]
    raise ResNetJaxError(f"unknown score {score!r}: use 'logit', 'probability' or a function "
                         "(logits, targets) -> one score per image")


@functools.lru_cache(maxsize=16)
def _scorer(model, score):
    """``(variables, x (B,...), perturbed (P, B, ...), targets) -> (before (B,),
    after (P, B))``; targets: (B,) classes (-1: the predicted one) read by ``score``, or a
    ``TargetTable`` of target functions. The predicted class is the original image's."""
    fn = _score_fn(score)

    def run(variables, x, perturbed, targets):
        # the image rides along as the first batch: one forward pass in the program
        logits = jax.lax.map(lambda z: model.apply(variables, z, train=False),
                             jnp.concatenate([x[None], perturbed]))
        if isinstance(targets, TargetTable):
            t = resolve_targets(logits[0], targets)
            one = lambda lg: target_scores(lg, targets, t)[0]  # noqa: E731
        else:
            t = jnp.where(targets < 0, jnp.argmax(logits[0], -1), targets)
            one = lambda lg: fn(lg, t)  # noqa: E731
        scores = jax.vmap(one)(logits)
        return scores[0], scores[1:]

    return inference_jit(run)


def _inputs(model, images, maps, targets):
    x = np.asarray(images, np.float32)
    m = np.asarray(maps, np.float32)
    if x.ndim != 4 or m.shape != x.shape[:3]:
        raise ResNetJaxError(f"maps of shape {m.shape} do not fit images of shape {x.shape}: "
                             "give one (H, W) map per (H, W, C) image")
    return x, m, _targets(model, x.shape[0], targets)


def _targets(model, batch, targets):
    t, multi = normalize_targets(targets, batch, num_classes_of(model))
    if multi:
        raise ResNetJaxError("these metrics score one target per image: give None, one "
                             "class or target function, or one per image")
    return t if isinstance(t, TargetTable) else jnp.asarray(t[:, 0])


def score_change(model, variables, images, perturbed, targets=None, score="logit"):
    """``(P, B)`` score of each perturbed batch minus the score of ``images``, for the
    targets: None (each image's predicted class), classes (scored by ``score``) or target
    functions (``explain.targets``, e.g. ``ClassifierOutputSoftmaxTarget(k)``)."""
    x = np.asarray(images, np.float32)
    t = targets if isinstance(targets, TargetTable | jax.Array) else _targets(
        model, x.shape[0], targets)
    before, after = _scorer(model, score)(model_variables(variables), jnp.asarray(x),
                                          jnp.asarray(perturbed, jnp.float32), t)
    return np.asarray(after, np.float32) - np.asarray(before, np.float32)[None]


def road_images(images, maps, percentiles, most_relevant_first: bool, noise=0.01, rng=None):
    """(P, B, H, W, C): every image imputed at every percentile (percentile-major, the
    order in which pytorch-grad-cam draws its noise)."""
    rng = np.random.default_rng() if rng is None else rng
    return np.stack([np.stack([
        noisy_linear_impute(img, road_keep(cam, p, most_relevant_first), noise, rng)
        for img, cam in zip(images, maps)]) for p in percentiles])


def _percentiles(p):
    return (p,) if np.isscalar(p) else tuple(p)


def _road(model, variables, images, maps, targets, percentiles, morf, noise, rng, score):
    x, m, t = _inputs(model, images, maps, targets)
    imputed = road_images(x, m, _percentiles(percentiles), morf, noise, rng)
    return score_change(model, variables, x, imputed, t, score).mean(0)


def road_morf(model, variables, images, maps, targets=None, percentiles=80, *,
              noise: float = 0.01, rng=None, score="logit") -> np.ndarray:
    """(B,) ROAD, most relevant first: the score change with the top pixels imputed, the
    mean over ``percentiles`` (one or several). Lower (more negative) is better.
    pytorch-grad-cam: ``ROADMostRelevantFirst(p)``, ``ROADMostRelevantFirstAverage(ps)``."""
    return _road(model, variables, images, maps, targets, percentiles, True, noise, rng, score)


def road_lerf(model, variables, images, maps, targets=None, percentiles=20, *,
              noise: float = 0.01, rng=None, score="logit") -> np.ndarray:
    """(B,) ROAD, least relevant first; closer to 0 is better. pytorch-grad-cam:
    ``ROADLeastRelevantFirst(p)``, ``ROADLeastRelevantFirstAverage(ps)``."""
    return _road(model, variables, images, maps, targets, percentiles, False, noise, rng, score)


def road_combined(model, variables, images, maps, targets=None,
                  percentiles=ROAD_PERCENTILES, *, noise: float = 0.01, rng=None,
                  score="logit") -> np.ndarray:
    """(B,) ``(LeRF - MoRF) / 2`` over ``percentiles``; higher is better.
    pytorch-grad-cam: ``ROADCombined``. LeRF's noise is drawn before MoRF's."""
    x, m, t = _inputs(model, images, maps, targets)
    ps = _percentiles(percentiles)
    rng = np.random.default_rng() if rng is None else rng
    both = np.concatenate([road_images(x, m, ps, False, noise, rng),
                           road_images(x, m, ps, True, noise, rng)])
    change = score_change(model, variables, x, both, t, score)
    return (change[:len(ps)].mean(0) - change[len(ps):].mean(0)) / 2


def cam_mult_confidence_change(model, variables, images, maps, targets=None, *,
                               score="logit") -> np.ndarray:
    """(B,) ``score(image * map) - score(image)`` (the map multiplies the normalised
    image, as pytorch-grad-cam's ``CamMultImageConfidenceChange``)."""
    x, m, t = _inputs(model, images, maps, targets)
    return score_change(model, variables, x, (x * m[..., None])[None], t, score)[0]


__all__ = ["NEIGHBOR_WEIGHTS", "ROAD_PERCENTILES", "cam_mult_confidence_change",
           "imputation_system", "noisy_linear_impute", "road_combined", "road_images",
           "road_keep", "road_lerf", "road_morf", "score_change"]
