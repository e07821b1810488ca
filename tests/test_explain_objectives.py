"""Lucent's objectives (direction, channel_interpolate, diversity, alignment, weighted
neurons and channels) against torch-lucent 0.1.8: the same values on the same
activations, and an optimisation that does at least as well as lucent's render_vis on
the same ported weights; snapshots of the image during the optimisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import evaluate, maximize, param
from resnet_jax.explain import objectives as O
from resnet_jax.explain.maximize import save_snapshot_strip

torch = pytest.importorskip("torch")
L = pytest.importorskip("lucent.optvis.objectives")


def _lucent_cases(d, w):
    """(ours, lucent's, B): ours summed over the batch is B times minus lucent's loss
    (B = 1 where lucent sums over the batch itself)."""
    td, tw = torch.from_numpy(np.array(d)), torch.from_numpy(np.array(w))  # writable copies
    return [
        (O.direction("a", d), L.direction("a", td), 5),
        (O.direction_neuron("a", d, y=3, x=3), L.direction_neuron("a", td, x=3, y=3), 5),
        (O.neuron_weight("a", w, y=2, x=4), L.neuron_weight("a", tw, x=4, y=2), 5),
        (O.neuron_weight("a", None, y=2, x=4), L.neuron_weight("a", None, x=4, y=2), 5),
        (O.channel_weight("a", w), L.channel_weight("a", tw), 5),
        (O.localgroup_weight("a", w, y=1, x=2, wy=3, wx=2),
         L.localgroup_weight("a", tw, x=2, y=1, wx=2, wy=3), 5),
        (O.channel_interpolate("a", 3, "b", 1), L.channel_interpolate("a", 3, "b", 1), 1),
        (O.alignment("a"), L.alignment("a"), 1),
        (O.alignment("a", decay_ratio=3.0), L.alignment("a", decay_ratio=3.0), 1),
        (O.diversity("a"), L.diversity("a"), 5),
        (O.channel("a", [5] * 5, reduce="mean") - 1e2 * O.diversity("a"),
         L.channel("a", 5) - 1e2 * L.diversity("a"), 5),
    ]


def test_each_objective_is_lucents_on_the_same_activations():
    """Non-square layers (6x7), a batch of 5, numpy draws: every objective equals lucent's
    own function given the same activations (NCHW for lucent)."""
    rng = np.random.default_rng(0)
    acts = {"a": rng.standard_normal((5, 6, 7, 8)).astype(np.float32),
            "b": rng.standard_normal((5, 3, 3, 4)).astype(np.float32)}
    d, w = rng.standard_normal((2, 8)).astype(np.float32)
    ja = {k: jnp.asarray(v) for k, v in acts.items()}

    def hook(name):
        return torch.from_numpy(np.ascontiguousarray(acts[name].transpose(0, 3, 1, 2)))

    for ours, theirs, scale in _lucent_cases(d, w):
        got = float(np.sum(np.asarray(ours(ja, None)))) / scale
        want = -float(theirs(hook))
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (ours.name, got, want)
    # dot product (Lucid's direction) instead of cosine similarity
    a = acts["a"]
    np.testing.assert_allclose(O.direction("a", d, cossim=False)(ja, None),
                               (a @ d).mean(axis=(1, 2)), rtol=1e-5)


def test_objectives_name_what_is_wrong():
    acts = {"a": jnp.zeros((1, 4, 4, 8)), "d": jnp.zeros((3, 8))}
    with pytest.raises(ResNetJaxError, match="3 entries but layer 'a' has 8 channels"):
        O.direction("a", np.ones(3))(acts, None)
    with pytest.raises(ResNetJaxError, match="batch of 2 or more"):
        O.channel_interpolate("a", 0, "a", 1)(acts, None)
    with pytest.raises(ResNetJaxError, match="spatial layer"):
        O.diversity("d")({"d": jnp.zeros((3, 8))}, None)
    with pytest.raises(ResNetJaxError, match="out of range"):
        O.channel_interpolate("a", 0, "a", 9)({"a": jnp.zeros((2, 4, 4, 8))}, None)


def test_snapshots_are_the_images_at_those_steps(tmp_path):
    """Step 0 is the starting image, the last the result, and every snapshot scores what
    the loop recorded for that step (no transforms for the digit CNN); written as one
    row per image."""
    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model, 0)
    objective = O.class_logit([1, 2])
    steps = [0, 3, 10]
    images, values, snaps = maximize(model, variables, objective, steps=10, seed=4,
                                     return_values=True, snapshots=steps,
                                     redirect_relu_steps=0)
    assert snaps.shape == (3, 2, 28, 28, 1)
    start = param.box().init(jax.random.split(jax.random.key(4))[0], (2, 28, 28, 1))
    np.testing.assert_array_equal(snaps[0], np.asarray(start))
    np.testing.assert_array_equal(snaps[-1], images)
    np.testing.assert_allclose(evaluate(model, variables, objective, snaps[1]), values[3],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(snaps[1] - snaps[0]).max() > 0 and np.abs(snaps[2] - snaps[1]).max() > 0
    from PIL import Image

    out = save_snapshot_strip(tmp_path / "steps.png", snaps, steps)
    w, h = Image.open(out).size
    assert w > 3 * 112 and 2 * 112 < h < 3 * 112 + 80  # 3 columns, 2 rows of 112 px tiles
    with pytest.raises(ResNetJaxError, match="snapshot steps must be distinct"):
        maximize(model, variables, objective, steps=10, snapshots=[0, 11])


def test_composed_transforms_fill_as_lucents_chain():
    """Lucent's pad (grey), shrink and rotation run one after another, then the
    upsampling: what the shrink and the rotation bring in from outside their input is
    black, as kornia and zero padding make it, not the padding's grey; the one composed
    resample gives the same image up to interpolation detail at the edges."""
    from lucent.optvis import transform as LT
    from scipy.ndimage import gaussian_filter

    from resnet_jax.explain import transforms as T

    rng = np.random.default_rng(0)
    x = gaussian_filter(rng.uniform(0, 1, (2, 40, 40, 3)), (0, 2, 2, 0)).astype(np.float32)
    for degrees in (10, -7):
        for ours, theirs in (([], []), ([T.random_scale([0.9])], [LT.random_scale([0.9])])):
            chain = LT.compose([LT.pad(12, mode="constant", constant_value=0.5), *theirs,
                                LT.random_rotate([degrees]),
                                torch.nn.Upsample(size=40, mode="bilinear", align_corners=True)])
            want = chain(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
            got = T.compose([T.pad(12, 0.5), *ours, T.random_rotate([degrees]), T.resize(40)])(
                jax.random.key(0), jnp.asarray(x))
            diff = np.abs(np.asarray(got) - want.transpose(0, 2, 3, 1))
            assert diff.mean() < 0.01 and np.quantile(diff, 0.99) < 0.15, (degrees, diff.max())
            assert np.abs(np.asarray(got)[:, 0, 0]).max() < 0.05  # a corner turned in: black


# --------------------------------------------------------------------------- against render_vis


SIZE, STEPS = 64, 64


@pytest.fixture(scope="module")
def ported():
    """A torchvision resnet18 with random weights and BatchNorm, its port, and a
    direction in layer3 taken from a real photo (the activation vector at its centre)."""
    from conftest import torchvision_model
    from skimage import data as skdata
    from skimage.transform import resize

    from resnet_jax import imagenet
    from resnet_jax.models.registry import tapped_outputs
    from resnet_jax.port import from_torch

    tv = torchvision_model("resnet18", seed=0)
    model, variables = from_torch(tv)
    photo = resize(skdata.astronaut(), (SIZE, SIZE), anti_aliasing=True).astype(np.float32)
    x = (photo[None] - np.asarray(imagenet.MEAN)) / np.asarray(imagenet.STD)
    _, acts = tapped_outputs(model, variables, jnp.asarray(x, jnp.float32))
    d = np.asarray(acts["layer3"])[0, 2, 2]
    return tv, model, variables, d


def _pair(name, d, w):
    """(ours, lucent's, batch) for one kind of objective, as lucent's docs combine them."""
    td, tw = torch.from_numpy(np.array(d)), torch.from_numpy(np.array(w))  # writable copies
    ci = (O.channel_interpolate("layer3", 5, "layer4", 7),
          L.channel_interpolate("layer3", 5, "layer4", 7))
    return {
        "direction": (O.direction("layer3", d), L.direction("layer3", td), 1),
        "direction_neuron": (O.direction_neuron("layer3", d),
                             L.direction_neuron("layer3", td), 1),
        # Non-negative weights: a weighted sum of the centre neuron's channels that 64 steps
        # raise (from about 0.75 to 2.6 on both sides). With signed random weights the value
        # stays at noise level (about -0.035 +- 0.025 over ten seeds, on both sides alike),
        # where a 5% margin compares noise.
        "neuron_weight": (O.neuron_weight("layer3", np.abs(w)),
                          L.neuron_weight("layer3", torch.from_numpy(np.abs(w))), 1),
        "channel_weight": (O.channel_weight("layer3", w), L.channel_weight("layer3", tw), 1),
        "channel_interpolate": (*ci, 3),
        "diversity": (O.channel("layer3", [5] * 3, reduce="mean") - 1e2 * O.diversity("layer3"),
                      L.channel("layer3", 5) - 1e2 * L.diversity("layer3"), 3),
        "alignment": (ci[0] + 0.1 * O.alignment("layer3"), ci[1] + 0.1 * L.alignment("layer3"),
                      3),
    }[name]


@pytest.mark.slow  # 64 steps of resnet18 twice per objective
@pytest.mark.parametrize("name", ["direction", "direction_neuron", "neuron_weight",
                                  "channel_weight", "channel_interpolate", "diversity",
                                  "alignment"])
def test_optimisation_does_as_well_as_lucents_render_vis(ported, name):
    """The same setting on both sides: Fourier images with decorrelated colour, Lucent's
    standard transforms brought back to 64 px, Adam 0.05, ImageNet normalisation, plain
    ReLU gradients, 64 steps from each side's own seeded random start. Both final images are scored by our
    objective on the ported weights (no transforms): ours is higher, or within 5%."""
    from lucent.optvis import param as lparam
    from lucent.optvis import render

    from resnet_jax.explain import transforms as T

    tv, model, variables, d = ported
    w = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    ours_obj, theirs_obj, batch = _pair(name, d, w)
    ours = maximize(model, variables, ours_obj, steps=STEPS, batch=batch, image_size=SIZE,
                    transforms=T.standard_transforms(SIZE), seed=0,
                    redirect_relu_steps=0)  # render_vis has no redirected ReLU
    torch.manual_seed(0)
    np.random.seed(0)  # lucent draws its transforms with numpy
    theirs = render.render_vis(tv, theirs_obj, lambda: lparam.image(SIZE, batch=batch),
                               thresholds=(STEPS,), show_image=False, progress=False,
                               fixed_image_size=SIZE)[-1]
    v_ours = float(np.sum(evaluate(model, variables, ours_obj, ours)))
    v_theirs = float(np.sum(evaluate(model, variables, ours_obj, theirs)))
    assert v_ours >= v_theirs - 0.05 * abs(v_theirs), (name, v_ours, v_theirs)
