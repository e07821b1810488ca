"""ROAD and the confidence change against pytorch-grad-cam; deletion / insertion baselines
against direct numpy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import imagenet_photos, nchw, torchvision_model

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import faithfulness, metrics
from resnet_jax.explain import targets as targets_mod
from resnet_jax.port import from_torch

pgc = pytest.importorskip("pytorch_grad_cam")
skimage_data = pytest.importorskip("skimage.data")
from pytorch_grad_cam.metrics import road as pgc_road  # noqa: E402
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange  # noqa: E402
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

TOL = 1e-3
photos = imagenet_photos


@pytest.fixture(scope="module")
def scene():
    """A ported resnet18 (random weights and BatchNorm), two photos and a map of each: its
    blurred brightness, scaled to [0, 1] (any map does; this one has no ties)."""
    tv = torchvision_model("resnet18", seed=0)
    model, variables = from_torch(tv)
    x = photos(["chelsea", "coffee"], (32, 40))
    bright = faithfulness.baseline_images(x, "blur", 2.0).mean(-1)
    lo, hi = bright.min((1, 2), keepdims=True), bright.max((1, 2), keepdims=True)
    return tv, model, variables, x, ((bright - lo) / (hi - lo)).astype(np.float32)


class Recorded:
    """Replays the noise torch drew (``torch.randn_like``, (C, N) per image) as our
    imputer draws it ((N, C) per image), in the same order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def standard_normal(self, shape):
        d = self.draws.pop(0).T
        assert d.shape == shape, (d.shape, shape)
        return d


@pytest.fixture
def record_torch_noise(monkeypatch):
    draws, randn_like = [], torch.randn_like

    def recording(t, *args, **kwargs):
        out = randn_like(t, *args, **kwargs)
        draws.append(out.numpy().copy())
        return out

    monkeypatch.setattr(torch, "randn_like", recording)
    return draws


def _given(rng, n):
    return [int(k) for k in rng.integers(1000, size=n)]


def test_road_matches_pytorch_grad_cam(scene, record_torch_noise, rng):
    """One percentile, most and least relevant first: the imputed images and the score
    changes, with pytorch-grad-cam's own noise replayed into our imputer."""
    tv, model, variables, x, maps = scene
    given = _given(rng, len(x))
    targets = [ClassifierOutputTarget(k) for k in given]
    for cls, ours_fn, morf in [(pgc_road.ROADMostRelevantFirst, metrics.road_morf, True),
                               (pgc_road.ROADLeastRelevantFirst, metrics.road_lerf, False)]:
        record_torch_noise.clear()
        ref, shown = cls(percentile=70)(nchw(x), maps, targets, tv, return_visualization=True)
        drawn = list(record_torch_noise)
        assert [d.shape for d in drawn] == [(3, int((~metrics.road_keep(m, 70, morf)).sum()))
                                            for m in maps]
        imputed = metrics.road_images(x, maps, [70], morf, rng=Recorded(drawn))[0]
        assert np.abs(imputed - shown.numpy().transpose(0, 2, 3, 1)).max() <= 1e-5
        ours = ours_fn(model, variables, x, maps, given, 70, rng=Recorded(drawn))
        # a random network's scores move little: the bound is also 1% of the change
        assert np.abs(ours - ref).max() <= min(TOL, 1e-2 * np.abs(ref).max()), (ours, ref)


def test_cam_mult_confidence_change_matches_pytorch_grad_cam(scene):
    tv, model, variables, x, maps = scene
    pred = tv(nchw(x)).argmax(1).tolist()
    ref = CamMultImageConfidenceChange()(nchw(x), maps, [ClassifierOutputTarget(k) for k in pred],
                                         tv)
    ours = metrics.cam_mult_confidence_change(model, variables, x, maps)  # predicted class
    assert np.abs(ours - ref).max() <= min(TOL, 1e-2 * np.abs(ref).max()), (ours, ref)


@pytest.mark.slow
def test_road_combined_over_nine_percentiles_matches_pytorch_grad_cam(scene, record_torch_noise,
                                                                      rng):
    """ROADCombined draws LeRF's noise for every percentile, then MoRF's; the confidence
    change of the softmax probability too."""
    tv, model, variables, x, maps = scene
    given = _given(rng, len(x))
    for target, score in [(ClassifierOutputTarget, "logit"),
                          (ClassifierOutputSoftmaxTarget, "probability")]:
        record_torch_noise.clear()
        ref = pgc_road.ROADCombined()(nchw(x), maps, [target(k) for k in given], tv)
        assert len(record_torch_noise) == 2 * len(metrics.ROAD_PERCENTILES) * len(x)
        ours = metrics.road_combined(model, variables, x, maps, given, score=score,
                                     rng=Recorded(list(record_torch_noise)))
        assert np.abs(ours - ref).max() <= min(TOL, 1e-2 * np.abs(ref).max()), (ours, ref)
        # the same with our target functions of the same names
        ours = metrics.road_combined(model, variables, x, maps,
                                     [getattr(targets_mod, target.__name__)(k) for k in given],
                                     rng=Recorded(record_torch_noise))
        assert np.abs(ours - ref).max() <= min(TOL, 1e-2 * np.abs(ref).max()), (ours, ref)
    targets = [ClassifierOutputSoftmaxTarget(k) for k in given]
    ref = CamMultImageConfidenceChange()(nchw(x), maps, targets, tv)
    ours = metrics.cam_mult_confidence_change(model, variables, x, maps, given,
                                              score="probability")
    assert np.abs(ours - ref).max() <= min(TOL, 1e-2 * np.abs(ref).max()), (ours, ref)


@pytest.fixture(scope="module")
def small():
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    return model, resnet_jax.init_variables(model, 0, 16)


def test_baseline_images_match_numpy(rng):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = rng.standard_normal((2, 12, 20, 3)).astype(np.float32)
    for sigma in (None, 0.8, 7.0):  # 7 > the height: the mirror repeats
        s = 12 / 32 if sigma is None else sigma
        ref = ndimage.gaussian_filter(x.astype(np.float64), (0, s, s, 0), mode="reflect")
        ours = faithfulness.baseline_images(x, "blur", sigma)
        assert np.abs(ours - ref).max() < 1e-5, sigma
    mean = np.broadcast_to(x.mean((1, 2), keepdims=True), x.shape)
    assert np.allclose(faithfulness.baseline_images(x, "mean"), mean, atol=1e-6)
    assert np.array_equal(faithfulness.baseline_images(x, -0.5), np.full_like(x, -0.5))
    with pytest.raises(ResNetJaxError, match="unknown baseline 'noise'"):
        faithfulness.baseline_images(x, "noise")
    with pytest.raises(ResNetJaxError, match=r"does not broadcast .* \(2, 12, 20, 3\)"):
        faithfulness.baseline_images(x, np.zeros((5, 12, 20, 3)))


def test_deletion_and_insertion_curves_match_a_direct_computation(small, rng):
    model, variables = small
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    maps = rng.random((2, 16, 16)).astype(np.float32)
    steps, t = 4, np.array([1, 0])
    probs = jax.jit(lambda z: jax.nn.softmax(model.apply(variables, z, train=False)))
    order = np.argsort(-maps.reshape(2, -1), axis=1)
    for baseline in ["blur", "mean", 0.0]:
        base = faithfulness.baseline_images(x, baseline)
        for insert, fn in [(False, faithfulness.deletion_curve),
                           (True, faithfulness.insertion_curve)]:
            f, curve = fn(model, variables, x, maps, t, steps=steps, baseline=baseline)
            assert np.allclose(f, np.linspace(0, 1, steps + 1))
            imgs = []
            for frac in f:
                top = np.zeros((2, 256), bool)
                np.put_along_axis(top, order[:, :int(round(frac * 256))], True, axis=1)
                top = top.reshape(2, 16, 16, 1)
                imgs.append(np.where(top, x, base) if insert else np.where(top, base, x))
            p = np.asarray(probs(jnp.asarray(np.concatenate(imgs)))).reshape(steps + 1, 2, -1)
            ref = p[:, [0, 1], t]
            assert np.abs(curve - ref).max() < 1e-5, (baseline, insert)
    # the default baseline is the blurred image
    _, default = faithfulness.deletion_curve(model, variables, x, maps, t, steps=steps)
    _, blurred = faithfulness.deletion_curve(model, variables, x, maps, t, steps=steps,
                                             baseline="blur")
    assert np.array_equal(default, blurred)


def test_metric_inputs_are_checked(small):
    model, variables = small
    x = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(ResNetJaxError, match=r"maps of shape \(2, 8, 8\) do not fit"):
        metrics.cam_mult_confidence_change(model, variables, x, np.zeros((2, 8, 8)))
    with pytest.raises(ResNetJaxError, match="one target per image"):
        metrics.road_morf(model, variables, x, np.zeros((2, 16, 16)), [[0, 1], [1, 0]])
    with pytest.raises(ResNetJaxError, match="unknown score 'margin'"):
        metrics.cam_mult_confidence_change(model, variables, x, np.ones((2, 16, 16)),
                                           score="margin")
    with pytest.raises(ResNetJaxError, match=r"maps of shape \(2, 16\) do not fit"):
        faithfulness.deletion_curve(model, variables, x, np.zeros((2, 16)))
    with pytest.raises(ResNetJaxError, match="at least 1 step"):
        faithfulness.insertion_curve(model, variables, x, np.zeros((2, 16, 16)), steps=0)
    with pytest.raises(ResNetJaxError, match="one class's probability per image"):
        faithfulness.deletion_curve(model, variables, x, np.zeros((2, 16, 16)),
                                    targets_mod.ClassifierOutputTarget(1))
