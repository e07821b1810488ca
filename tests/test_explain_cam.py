"""The Grad-CAM family and gradient saliency against pytorch-grad-cam and JAX references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import nchw, torchvision_model

import resnet_jax
from resnet_jax.explain import explain, faithfulness, gradcam, testing
from resnet_jax.explain.maps import bilinear_matrix, resize_maps
from resnet_jax.explain.methods import GuidedBackprop
from resnet_jax.port import from_torch

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-3


@pytest.fixture(scope="module")
def ported():
    """A torchvision resnet18 with random weights and BatchNorm, and its port.

    Fixed seeds: with random weights an earlier-stage Grad-CAM map is a sum whose terms
    nearly cancel on some draws, and the [0, 1] scaling then magnifies float32 rounding
    (a fresh-clone run drew one whose layer2 map was 4.5e-3 from pytorch-grad-cam's)."""
    tv = torchvision_model("resnet18", seed=0)
    model, variables = from_torch(tv)
    return tv, model, variables


def _reference(cls, tv, layer, x, targets=None):
    cam = cls(tv, [tv.get_submodule(layer)])
    with cam:
        t = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets]
        return cam(nchw(x), targets=t)


@pytest.mark.parametrize("layer", ["layer4", pytest.param("layer2", marks=pytest.mark.slow)])
def test_gradcam_and_plusplus_match_pytorch_grad_cam(ported, layer):
    tv, model, variables = ported
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 96, 128, 3)).astype(np.float32)  # non-square on purpose
    k = int(rng.integers(1000))
    for cls, method in [(pgc.GradCAM, "gradcam"), (pgc.GradCAMPlusPlus, "gradcam++"),
                        (pgc.HiResCAM, "hirescam")]:
        # Two targets per image from one forward pass: the predicted class (None) and k.
        ours = gradcam(model, variables, x, targets=[[None, k]] * 3, layer=layer,
                       method=method)
        assert ours.shape == (3, 2, 96, 128)
        assert 0.0 <= ours.min() and ours.max() <= 1.0
        for j, targets in enumerate([None, [k] * 3]):
            ref = _reference(cls, tv, layer, x, targets)
            err = np.abs(ours[:, j] - ref).max()
            assert err <= TOL, (method, layer, targets, err)


@pytest.mark.slow  # the guided ReLU field is also held by test_the_relu_variant_is_part_of_the_compiled_program
def test_guided_backprop_matches_pytorch_grad_cam(ported):
    tv, model, variables = ported
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
    target = int(rng.integers(1000))
    ref = pgc.GuidedBackpropReLUModel(tv, device="cpu")(nchw(x), target_category=target)
    ours = GuidedBackprop().attributions(model, variables, jnp.asarray(x),
                                         jnp.asarray([[target]]))[0, 0]
    # The guided ReLU keeps a gradient only where it is positive, so a float32 rounding
    # of a gradient near zero can switch a unit on or off: 1e-3 of the largest value (a
    # fresh-clone run drew an input at 4.7e-4 of it).
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-3 * np.abs(ref).max()
    # the plain input gradient is different: the ReLUs really were swapped
    xt = nchw(x).requires_grad_(True)
    (plain,) = torch.autograd.grad(tv(xt)[0, target], [xt])
    plain = plain[0].permute(1, 2, 0).numpy()
    assert np.abs(plain - ref).max() > 1e-2 * np.abs(ref).max()


def test_resize_matches_opencv(rng):
    cv2 = pytest.importorskip("cv2")
    for h, w, H, W in [(7, 7, 224, 224), (3, 4, 96, 128), (5, 9, 31, 17)]:
        m = rng.random((h, w)).astype(np.float32)
        ref = cv2.resize(m, (W, H))
        ours = np.asarray(resize_maps(jnp.asarray(m), (H, W)))
        assert np.abs(ours - ref).max() < 1e-5
    assert np.allclose(bilinear_matrix(10, 4).sum(1), 1.0)


@pytest.fixture(scope="module")
def patch_model():
    """A small ResNet trained to tell noise from noise with a checker patch somewhere."""
    x, y, _ = testing.patch_task(2000, size=24, patch=6, seed=0)
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    variables = testing.train_classifier(model, x, y, steps=150, batch=32, lr=3e-3)
    return model, variables


@pytest.mark.slow
def test_localization_on_synthetic_patches(patch_model):
    model, variables = patch_model
    x, y, boxes = testing.patch_task(400, size=24, patch=6, seed=123)
    assert testing.accuracy(model, variables, x, y) > 0.95
    pos = y == 1
    maps = gradcam(model, variables, x[pos], targets=1, layer="layer2")
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    inside = np.mean([b[0] <= py < b[2] and b[1] <= px < b[3]
                      for (py, px), b in zip(peaks, boxes[pos])])
    assert inside >= 0.95, inside


@pytest.mark.slow
def test_saliency_methods_against_jax_references(patch_model, rng):
    model, variables = patch_model
    x, y, _ = testing.patch_task(6, size=24, patch=6, seed=int(rng.integers(1 << 30)))
    score = lambda x, k: model.apply(variables, x, train=False)[:, k]  # noqa: E731

    # vanilla: max over channels of |d y_k / d x|, min-max scaled
    g = np.asarray(jax.grad(lambda x: score(x, 1).sum())(jnp.asarray(x)))
    ref = np.abs(g).max(-1)
    ref = (ref - ref.min((1, 2), keepdims=True))
    ref = ref / (1e-7 + ref.max((1, 2), keepdims=True))
    ours = gradcam(model, variables, x, targets=1, method="saliency")
    assert np.abs(ours - ref).max() < 1e-4

    # Integrated Gradients is complete: attributions sum to f(x) - f(baseline)
    from resnet_jax.explain.methods import IntegratedGradients

    attr = IntegratedGradients().attributions(model, variables, jnp.asarray(x),
                                              jnp.ones((6, 1), jnp.int32), steps=64)
    total = np.asarray(attr[0]).sum((1, 2, 3))
    expected = np.asarray(score(jnp.asarray(x), 1) - score(jnp.zeros_like(x), 1))
    assert np.allclose(total, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())

    for method in ["smoothgrad", "integrated_gradients", "guided_backprop", "guided_gradcam",
                   "gradcam++", "hirescam"]:
        maps = gradcam(model, variables, x, layer="layer2", method=method, samples=4)
        assert maps.shape == (6, 24, 24) and np.isfinite(maps).all()
        assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6


@pytest.mark.slow
def test_faithfulness_prefers_gradcam_to_its_inverse(patch_model):
    model, variables = patch_model
    x, y, _ = testing.patch_task(64, size=24, patch=6, seed=7)
    x = x[y == 1]
    maps = gradcam(model, variables, x, targets=1, layer="layer2")
    f, good = faithfulness.deletion_curve(model, variables, x, maps, targets=1, steps=8)
    _, bad = faithfulness.deletion_curve(model, variables, x, 1.0 - maps, targets=1, steps=8)
    assert good.shape == (9, len(x)) and np.allclose(good[0], bad[0])
    assert faithfulness.auc(f, good).mean() < faithfulness.auc(f, bad).mean()
    _, ins = faithfulness.insertion_curve(model, variables, x, maps, targets=1, steps=8)
    _, ins_bad = faithfulness.insertion_curve(model, variables, x, 1.0 - maps, targets=1, steps=8)
    assert faithfulness.auc(f, ins).mean() > faithfulness.auc(f, ins_bad).mean()
    drop = faithfulness.confidence_drop(model, variables, x, maps, targets=1)
    assert drop.shape == (len(x),) and np.all((drop >= 0) & (drop <= 1))


def test_the_relu_variant_is_part_of_the_compiled_program(rng):
    """Saliency of ``model.clone(act=guided_relu)`` is guided backpropagation, and the
    plain model's saliency, compiled first, is not reused for it (no stale trace)."""
    from resnet_jax.explain.relu import guided_relu

    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    variables = resnet_jax.init_variables(model, 0, 16)
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    plain = gradcam(model, variables, x, targets=1, method="saliency")
    guided = gradcam(model.clone(act=guided_relu), variables, x, targets=1, method="saliency")
    np.testing.assert_allclose(
        guided, gradcam(model, variables, x, targets=1, method="guided_backprop"), atol=1e-6)
    assert np.abs(guided - plain).max() > 0.1


@pytest.mark.slow
def test_explanation_reports_targets_and_scores(patch_model):
    model, variables = patch_model
    x, _, _ = testing.patch_task(4, size=24, patch=6, seed=3)
    e = explain(model, variables, x, targets=[[0, 1]] * 4, layer="layer2")
    assert e.maps.shape == (4, 2, 24, 24) and e.targets.tolist() == [[0, 1]] * 4
    assert np.allclose(e.scores.sum(1), 1.0, atol=1e-5)  # two classes: p0 + p1 = 1
    default = explain(model, variables, x, layer=None)  # last stage, predicted class
    assert default.layer == "layer2"
    assert default.targets.tolist() == np.argmax(e.logits, 1).tolist()
