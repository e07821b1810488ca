"""Occlusion and gradient SHAP against captum on a ported torchvision resnet18."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import imagenet_photos, nchw, torchvision_model

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import gradcam
from resnet_jax.explain.maps import minmax
from resnet_jax.explain.methods import GradientShap, Occlusion, get_method
from resnet_jax.explain.methods.occlusion import occlusion_grid
from resnet_jax.port import from_torch

captum_attr = pytest.importorskip("captum.attr")
skimage_data = pytest.importorskip("skimage.data")

TOL = 1e-3
photos = imagenet_photos


@pytest.fixture(scope="module")
def ported():
    tv = torchvision_model("resnet18", seed=0)
    model, variables = from_torch(tv)
    return tv, model, variables


def test_occlusion_matches_captum(ported, rng):
    tv, model, variables = ported
    # non-square; the last window of each row and column is cut off by the border
    x = photos(["chelsea", "coffee"], (24, 28))
    given = [int(k) for k in rng.integers(1000, size=2)]
    pred = tv(nchw(x)).argmax(1).tolist()
    t = jnp.asarray(np.stack([pred, given], 1))
    opts = dict(window=(8, 6), stride=(6, 5), baseline=0.5, chunk=13)

    @jax.jit
    def run(v, x):
        return Occlusion().attributions(model, v, x, t, **opts)

    ours = np.asarray(run(variables, jnp.asarray(x)))  # (2 targets, B, H, W, C)
    occ = captum_attr.Occlusion(tv)
    for j, target in enumerate([pred, given]):
        ref = occ.attribute(nchw(x), sliding_window_shapes=(3, 8, 6), strides=(3, 6, 5),
                            baselines=0.5, target=target, perturbations_per_eval=32)
        ref = ref.numpy().transpose(0, 2, 3, 1)
        assert np.abs(ref).max() > 1e-2  # the windows do move the scores
        err = np.abs(ours[j] - ref).max()
        assert err <= TOL, (target, err)


@pytest.mark.slow  # test_gradient_shap_is_its_formula holds the same sums in the default run
def test_gradient_shap_matches_captum_with_the_same_draws(ported, rng):
    """captum draws the baseline indices (np.random.choice), then the noise (torch.normal),
    then the points on the line (np.random.uniform); seeding both global generators and
    drawing the same numbers again gives our method captum's draws."""
    tv, model, variables = ported
    b, s, stdev, hw = 2, 3, 0.1, (32, 32)
    x = photos(["chelsea", "astronaut"], hw)
    bases = photos(["coffee", "rocket", "camera"], hw)  # the baseline distribution
    target = [int(k) for k in rng.integers(1000, size=b)]
    seed = int(rng.integers(1 << 30))

    np.random.seed(seed)
    torch.manual_seed(seed)
    ref = captum_attr.GradientShap(tv).attribute(
        nchw(x), baselines=nchw(bases), n_samples=s, stdevs=stdev, target=target)
    ref = ref.detach().numpy().transpose(0, 2, 3, 1)

    np.random.seed(seed)
    torch.manual_seed(seed)
    index = np.random.choice(len(bases), s * b)
    noise = torch.normal(0, torch.tensor(stdev).repeat((b * s, 3) + hw)).numpy()
    alpha = np.random.uniform(0.0, 1.0, s * b).astype(np.float32)
    # captum's samples are image-major (image i, sample j at i * s + j); ours sample-major
    draws = (index.reshape(b, s).T, alpha.reshape(b, s).T,
             noise.transpose(0, 2, 3, 1).reshape((b, s) + hw + (3,)).swapaxes(0, 1))
    @jax.jit
    def run(v, x, draws):
        return GradientShap().attributions(model, v, x, jnp.asarray([[k] for k in target]),
                                           baselines=bases, draws=draws)

    ours = np.asarray(run(variables, jnp.asarray(x), draws))[0]
    # Most draws agree to ~1e-7 of the largest value. A ReLU or max-pool input within
    # float32 rounding of its kink can switch on one side only: one drawn point gave torch's
    # and JAX's plain input gradients, at the identical input, 2.6e-4 apart (6e-3 of their
    # largest value), so the bound is the 1e-3 absolute, and 2% of the largest value.
    err = np.abs(ours - ref).max()
    assert err <= min(TOL, 2e-2 * np.abs(ref).max()), (err, np.abs(ref).max())
    # the noise matters: the same draws without it give another result
    quiet = np.asarray(run(variables, jnp.asarray(x), draws[:2] + (0 * draws[2],)))[0]
    assert np.abs(quiet - ref).max() > 0.1 * np.abs(ref).max()


@pytest.fixture(scope="module")
def small():
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    return model, resnet_jax.init_variables(model, 0, 16)


def test_gradient_shap_is_its_formula(small, rng):
    """mean over draws of (x + eps - x') * dy/dx at x' + alpha (x + eps - x'), with the
    gradients of all draws taken at once by plain ``jax.grad``."""
    model, variables = small
    b, s, hw = 3, 4, (16, 16, 3)
    x = rng.standard_normal((b,) + hw).astype(np.float32)
    bases = rng.standard_normal((2,) + hw).astype(np.float32)
    draws = (rng.integers(2, size=(s, b)), rng.random((s, b)).astype(np.float32),
             0.2 * rng.standard_normal((s, b) + hw).astype(np.float32))
    t = np.array([[1], [0], [1]])
    ours = GradientShap().attributions(model, variables, jnp.asarray(x), jnp.asarray(t),
                                       baselines=bases, draws=draws)
    ref_img = bases[draws[0]]  # (S, B, H, W, C)
    noisy = x[None] + draws[2]
    points = ref_img + draws[1][..., None, None, None] * (noisy - ref_img)

    def total_score(p):
        logits = model.apply(variables, p.reshape((-1,) + hw), train=False)
        return jnp.take_along_axis(logits, jnp.tile(jnp.asarray(t), (s, 1)), axis=1).sum()

    grads = np.asarray(jax.jit(jax.grad(total_score))(jnp.asarray(points)))
    ref = ((noisy - ref_img) * grads).mean(0)
    assert np.abs(np.asarray(ours[0]) - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-7


@pytest.mark.slow  # the method's attributions are held by the parity test above
def test_occlusion_through_gradcam(small, rng):
    """The registered name gives its attributions summed over the channels, scaled."""
    model, variables = small
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    maps = gradcam(model, variables, x, targets=1, method="occlusion", window=4, stride=2)
    attr = Occlusion().attributions(model, variables, jnp.asarray(x), jnp.ones((2, 1), int),
                                    window=4, stride=2)
    ref = np.asarray(minmax(attr[0].sum(-1)))
    assert maps.shape == (2, 16, 16) and np.abs(maps - ref).max() < 1e-5
    assert ref.std() > 0.1


@pytest.mark.slow
def test_gradient_shap_through_gradcam(small, rng):
    """Its random draws come from the seed: the same seed, the same map."""
    model, variables = small
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    assert get_method("Gradient-SHAP").name == "gradient_shap"
    assert get_method("gradshap").name == "gradient_shap"
    shap = [gradcam(model, variables, x, targets=1, method="gradient_shap", samples=4,
                    stdev=0.1, seed=s) for s in (0, 0, 1)]
    assert np.array_equal(shap[0], shap[1]) and not np.allclose(shap[0], shap[2])
    assert shap[0].min() >= 0.0 and shap[0].max() <= 1.0 + 1e-6


def test_bad_options_name_what_would_be_right():
    with pytest.raises(ResNetJaxError, match="stride 9 is larger than the window 8"):
        occlusion_grid((32, 32), window=8, stride=9)
    with pytest.raises(ResNetJaxError, match="positive int"):
        occlusion_grid((32, 32), window=0)
    rows, cols = occlusion_grid((10, 32), window=16, stride=(4, 8))  # clipped to the height
    assert rows.shape == (1, 10) and rows.all() and cols.shape == (3, 32)
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ResNetJaxError, match=r"baselines must be .* \(8, 8, 3\)"):
        GradientShap().attributions(None, {}, x, jnp.zeros((1, 1), int),
                                    baselines=np.zeros((2, 4, 4, 3)), key=jax.random.key(0))
