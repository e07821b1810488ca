"""Preprocessing identical to torchvision's ImageClassification preset, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torchvision
from conftest import run_python
from PIL import Image

from resnet_jax import imagenet

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "retina", "logo"]


@pytest.mark.parametrize("name", PHOTOS)
def test_preprocess_matches_torchvision_within_one_grey_level(name):
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    img = Image.fromarray(pixels)
    # V1 weights resize to 256, the V2 recipes to 232; both crop 224.
    for weights in (torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                    torchvision.models.ResNet50_Weights.IMAGENET1K_V2):
        preset = weights.transforms()
        ref = preset(img.convert("RGB")).numpy().transpose(1, 2, 0)
        ours = imagenet.preprocess(img, resize_size=preset.resize_size[0])
        assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
        grey_levels = np.abs(ours - ref) * np.asarray(imagenet.STD) * 255
        assert grey_levels.max() <= 1.0


def test_small_images_are_padded_like_torchvision():
    img = Image.fromarray(skimage.data.astronaut()).resize((100, 60))
    preset = torchvision.transforms.Compose([
        torchvision.transforms.CenterCrop(224), torchvision.transforms.PILToTensor()])
    ref = preset(img).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(imagenet.center_crop(img, 224)), ref)


def test_grayscale_and_rgba_files_are_converted(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(skimage.data.camera()).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(skimage.data.astronaut()).convert("RGBA").save(rgba)
    for path in (gray, rgba):
        x = imagenet.preprocess(path)
        assert x.shape == (224, 224, 3)
    g = imagenet.preprocess(gray)
    np.testing.assert_allclose(g[..., 0] * imagenet.STD[0] + imagenet.MEAN[0],
                               g[..., 1] * imagenet.STD[1] + imagenet.MEAN[1], atol=1e-6)


def test_unreadable_images_are_reported(tmp_path):
    bad = tmp_path / "broken.jpg"
    Image.fromarray(skimage.data.astronaut()).save(bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(imagenet.ImageError, match="broken.jpg: it is truncated or not an image"):
        imagenet.load_image(bad)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(imagenet.ImageError, match="notes.png"):
        imagenet.load_image(text)
    with pytest.raises(imagenet.ImageError, match="does not exist"):
        imagenet.load_image(tmp_path / "nothing.png")


def test_class_names_are_torchvisions():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert list(imagenet.class_names()) == list(_IMAGENET_CATEGORIES)


@pytest.mark.parametrize("first", ["resnet_jax.imagenet", "resnet_jax.data"])
def test_one_imagenet_mean_and_std_whichever_module_loads_first(first):
    """resnet_jax.data's default preprocessing takes imagenet's MEAN and STD (one source),
    and the two modules import in either order (each needs the other)."""
    code = (f"import {first}\n"
            "from resnet_jax import imagenet\n"
            "from resnet_jax.data import Preprocess\n"
            "p = Preprocess(224)\n"
            "assert p.mean is imagenet.MEAN and p.std is imagenet.STD, (p.mean, p.std)\n")
    run_python(code)
    # the values themselves are torchvision's preset's
    preset = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert tuple(preset.mean) == imagenet.MEAN and tuple(preset.std) == imagenet.STD
