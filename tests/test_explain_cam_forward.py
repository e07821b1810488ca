"""The forward-only CAM methods (ScoreCAM, AblationCAM) and Deep Feature Factorization
against pytorch-grad-cam on the same ported resnet18 (random weights, randomized
BatchNorm), on scikit-image photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from conftest import nchw, torchvision_model
from PIL import Image

from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import concepts, explain, gradcam
from resnet_jax.imagenet import normalize
from resnet_jax.port import from_torch

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (  # noqa: E402
    DeepFeatureFactorization,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-3
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def ported():
    tv = torchvision_model("resnet18", seed=0)
    model, variables = from_torch(tv)
    return tv, model, variables


def photos(n: int, size: int) -> np.ndarray:
    """``n`` scikit-image photos resized to size x size, normalised as ImageNet's."""
    out = []
    for name in PHOTOS[:n]:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        out.append(np.asarray(img.resize((size, size), Image.BILINEAR)))
    return normalize(np.stack(out)).astype(np.float32)


def reference(cls, tv, layer, x, targets):
    """pytorch-grad-cam's maps (None: its own predicted classes)."""
    cam = cls(tv, [tv.get_submodule(layer)])
    if cls is pgc.ScoreCAM:
        cam.batch_size = 64  # forward passes per batch: same scores, fewer calls
    with cam:
        t = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets]
        return cam(nchw(x), targets=t)


METHODS = {"scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}


@pytest.mark.parametrize("method,layer", [("scorecam", "layer1"), pytest.param(
    "ablationcam", "layer1", marks=pytest.mark.slow)])
def test_forward_methods_match_pytorch_grad_cam(ported, rng, method, layer):
    """One call covers a given class (image 0) and the predicted class (image 1, None).
    32 px and layer1 (64 channels) keep the per-channel forward passes cheap; the sweep
    below runs layers 2 to 4 at 64 px."""
    tv, model, variables = ported
    x = photos(2, 32)
    k = int(rng.integers(1000))
    ours = gradcam(model, variables, x, targets=[k, None], layer=layer, method=method)
    with torch.no_grad():
        pred = int(tv(nchw(x[1:])).argmax())
    ref = reference(METHODS[method], tv, layer, x, [k, pred])
    assert ours.shape == (2, 32, 32) and ref.shape == ours.shape
    assert ours.max() > 0.5  # a map, not zeros
    err = np.abs(ours - ref).max()
    assert err <= TOL, (method, layer, err)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer2", "layer3", "layer4"])
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_forward_methods_match_pytorch_grad_cam_sweep(ported, rng, method, layer):
    """Three photos at 64 px: given classes (images 0 and 2) and the predicted class
    (image 1), in chunks of 7 forward passes (the last chunk padded)."""
    tv, model, variables = ported
    x = photos(3, 64)
    k, k2 = (int(c) for c in rng.integers(1000, size=2))
    ours = gradcam(model, variables, x, targets=[k, None, k2], layer=layer, method=method,
                   forward_batch=7)
    with torch.no_grad():
        pred = int(tv(nchw(x[1:2])).argmax())
    ref = reference(METHODS[method], tv, layer, x, [k, pred, k2])
    err = np.abs(ours - ref).max()
    assert err <= TOL, (method, layer, err)


def test_forward_batch_must_be_positive(ported):
    _, model, variables = ported
    for method, bad in [("scorecam", 0), ("ablationcam", 2.5)]:
        with pytest.raises(ResNetJaxError, match="forward_batch"):
            explain(model, variables, photos(1, 32), layer="layer4", method=method,
                    forward_batch=bad)


def dff_reference(tv, layer, x, k):
    d = DeepFeatureFactorization(tv, tv.get_submodule(layer),
                                 computation_on_concepts=tv.fc if layer == "layer4" else None)
    out = d(nchw(x), k)
    return out[0], np.stack(out[1]), (out[2] if len(out) > 2 else None)


@pytest.mark.parametrize("layer", ["layer4", pytest.param("layer3", marks=pytest.mark.slow)])
def test_concepts_match_pytorch_grad_cam_dff(ported, layer):
    """The same coordinate-descent NMF from the same random start (scikit-learn's
    ``random_state=0``) as pytorch-grad-cam's DeepFeatureFactorization: the maps, the
    concept embeddings and the concepts' logits (the head on each embedding) agree."""
    tv, model, variables = ported
    x = photos(3, 64)
    c = concepts(model, variables, x, layer, k=4, top=3)
    emb, maps, logits = dff_reference(tv, layer, x, 4)
    assert c.maps.shape == maps.shape == (3, 4, 64, 64)
    assert np.abs(c.maps - maps).max() <= TOL
    assert np.abs(c.embeddings - emb.T).max() <= TOL * np.abs(emb).max()
    if logits is not None:
        assert np.abs(c.logits - logits).max() <= TOL * np.abs(logits).max()
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        assert np.array_equal(c.top_classes, np.argsort(-probs, axis=1)[:, :3])
        assert np.allclose(c.top_probs, np.sort(probs, axis=1)[:, ::-1][:, :3], atol=1e-5)


def test_concepts_reject_a_bad_k(ported):
    _, model, variables = ported
    with pytest.raises(ResNetJaxError, match="k must be between 1 and the layer's 512"):
        concepts(model, variables, photos(1, 32), "layer4", k=0)
