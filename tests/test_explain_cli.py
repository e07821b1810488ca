"""Bad input to the explain API and the ``gradcam`` / ``visualize`` commands."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax.cli import main
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import gradcam
from resnet_jax.explain.base import prepare_images
from resnet_jax.viz.overlays import image_grid, overlay, save_grid, save_overlay


@pytest.fixture(scope="module")
def small_resnet():
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    return model, resnet_jax.init_variables(model, 0, 32)


def test_unknown_layer_lists_valid_names(small_resnet, rng):
    model, variables = small_resnet
    x = rng.random((2, 32, 32, 3), np.float32)
    with pytest.raises(ResNetJaxError, match=r"unknown layer 'layer4'.*conv1, bn1, relu, "
                                             r"layer1.0, layer1, layer2.0, layer2"):
        gradcam(model, variables, x, layer="layer4")  # my_resnet has two stages
    with pytest.raises(ResNetJaxError, match="no spatial map"):
        gradcam(model, variables, x, layer="fc")
    with pytest.raises(ResNetJaxError, match="unknown method"):
        gradcam(model, variables, x, layer="layer2", method="scorecam")


def test_class_index_out_of_range(small_resnet, rng):
    model, variables = small_resnet
    x = rng.random((2, 32, 32, 3), np.float32)
    with pytest.raises(ResNetJaxError, match=r"class index 2 is out of range.*0\.\.1"):
        gradcam(model, variables, x, targets=2, layer="layer2")
    with pytest.raises(ResNetJaxError, match="class index -3"):
        gradcam(model, variables, x, targets=[[0, -3]] * 2, layer="layer2")
    with pytest.raises(ResNetJaxError, match="3 targets for 2 images"):
        gradcam(model, variables, x, targets=[0, 1, 1], layer="layer2")


def test_grayscale_and_any_size_are_converted(small_resnet, rng):
    model, variables = small_resnet
    gray = rng.random((32, 32), np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    a = gradcam(model, variables, gray, layer="layer2")
    b = gradcam(model, variables, rgb[None], layer="layer2")
    assert a.shape == b.shape == (1, 32, 32) and np.allclose(a, b, atol=1e-6)
    # a list of images of different sizes (one grayscale, one RGBA uint8) -> the model's size
    imgs = [rng.random((40, 50), np.float32), rng.integers(0, 255, (17, 23, 4), np.uint8)]
    maps = gradcam(model, variables, imgs, layer="layer2")
    assert maps.shape == (2, 32, 32)
    # the digit CNN takes 28x28 grayscale only: RGB of another size is converted and resized
    digit = resnet_jax.create_model("digit_cnn")
    x = prepare_images(digit, rng.random((3, 40, 36, 3), np.float32))
    assert x.shape == (3, 28, 28, 1)
    maps = gradcam(digit, resnet_jax.init_variables(digit, 0), rng.random((3, 40, 36, 3)),
                   layer="conv2")
    assert maps.shape == (3, 28, 28)
    with pytest.raises(ResNetJaxError, match="shape"):
        prepare_images(model, np.zeros((2, 3, 4, 5, 6)))


def test_overlays_and_grids(tmp_path, rng):
    img = rng.random((20, 30, 3), np.float32)
    cam = np.zeros((20, 30), np.float32)
    cam[5:10, 5:10] = 1.0
    out = overlay(img, cam, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(img, cam, alpha=0.0), overlay(img, cam * 0, alpha=0.0))
    p = save_overlay(tmp_path / "o.png", img, cam, label="tabby cat (281): 0.830")
    assert Image.open(p).size[0] >= 30
    grid = image_grid([img] * 5, labels=[f"#{i}" for i in range(5)], ncols=3, title="t")
    assert grid.ndim == 3 and grid.shape[1] > 3 * 30
    save_grid(tmp_path / "g.png", [img[..., :1]] * 4)
    assert (tmp_path / "g.png").is_file()


@pytest.fixture(scope="module")
def saved_digit_model(tmp_path_factory):
    model = resnet_jax.create_model("digit_cnn")
    d = tmp_path_factory.mktemp("m") / "digits"
    resnet_jax.save(d, model, resnet_jax.init_variables(model, 1), arch="digit_cnn")
    return d


def test_gradcam_command(saved_digit_model, tmp_path, rng, capsys):
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 255, (40, 33), np.uint8)).save(gray)
    color = tmp_path / "color.png"
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(color)
    out = tmp_path / "out"
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(gray), str(color),
               "--target", "3", "--target", "7", "--layer", "conv2", "--out", str(out),
               "--save-maps"])
    assert rc == 0
    for stem in ("gray", "color"):
        for k in (3, 7):
            assert (out / f"{stem}_gradcam_{k}.png").is_file()
        maps = np.load(out / f"{stem}_gradcam.npy")
        assert maps.shape == (2, 28, 28) and maps.min() >= 0 and maps.max() <= 1
    assert "class 3" in capsys.readouterr().out

    rc = main(["gradcam", "--weights", str(saved_digit_model), str(gray), "--layer", "layer4",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "valid layer names: conv1, pool1, conv2" in err
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(gray), "--target", "10",
               "--out", str(out)])
    assert rc == 2 and "out of range" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(bad), "--out", str(out)])
    assert rc == 2 and "cannot read image" in capsys.readouterr().err


def test_visualize_command(saved_digit_model, tmp_path, capsys):
    grid = tmp_path / "filters.png"
    rc = main(["visualize", "--weights", str(saved_digit_model), "--layer", "conv2",
               "--units", "0-3", "--steps", "4", "--out", str(grid)])
    assert rc == 0 and grid.is_file()
    grid = tmp_path / "classes.png"
    rc = main(["visualize", "--weights", str(saved_digit_model), "--class", "0,5",
               "--l1", "0.1", "--steps", "4", "--out", str(grid)])
    assert rc == 0 and grid.is_file()
    assert "wrote 2 images" in capsys.readouterr().out
    rc = main(["visualize", "--weights", str(saved_digit_model), "--layer", "conv9",
               "--units", "0", "--out", str(grid)])
    assert rc == 2 and "valid layer names" in capsys.readouterr().err
    rc = main(["visualize", "--weights", str(saved_digit_model), "--layer", "hidden",
               "--units", "0-100", "--out", str(grid)])
    assert rc == 2 and "out of range" in capsys.readouterr().err
    rc = main(["visualize", "--weights", str(saved_digit_model), "--class", "12",
               "--out", str(grid)])
    assert rc == 2 and "out of range" in capsys.readouterr().err
