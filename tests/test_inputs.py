"""Image files into models: one reader for training and every command, and the
preprocessing stored with a model applied by predict, gradcam and the explain API."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax import imagenet
from resnet_jax.cli import main
from resnet_jax.data import ImageSet, Preprocess, read_image
from resnet_jax.data.transforms import eval_transform
from resnet_jax.errors import ResNetJaxError


def _scaled(arr) -> np.ndarray:
    """The training loader's rule for 16-bit and float images: the maximum becomes 255."""
    a = np.asarray(arr, np.float64)
    return np.clip(a * (255.0 / a.max()), 0, 255).round().astype(np.uint8)


@pytest.fixture
def unusual_images(tmp_path, rng):
    """A 16-bit grayscale PNG (values up to 4000) and a float TIFF (values in [0, 0.7]),
    with the uint8 pixels a reader must give for them."""
    a16 = rng.integers(0, 4001, (18, 14)).astype(np.uint16)
    p16 = tmp_path / "deep.png"
    Image.fromarray(a16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    af = (rng.random((15, 17)) * 0.7).astype(np.float32)
    pf = tmp_path / "float.tif"
    Image.fromarray(af, mode="F").save(pf)
    return {p16: _scaled(a16), pf: _scaled(af)}


def test_sixteen_bit_and_float_images_read_as_the_training_loader_reads_them(unusual_images):
    for path, expected in unusual_images.items():
        loader = ImageSet("files", ["a"], [0], 1, paths=[str(path)]).image(0)[..., 0]
        assert np.array_equal(loader, expected), path
        assert np.array_equal(read_image(path, 1)[..., 0], expected)
        # every command reads through the same function
        assert np.array_equal(np.asarray(imagenet.load_image(path, "L")), expected)
        rgb = np.asarray(imagenet.load_image(path))
        assert rgb.shape == (*expected.shape, 3) and np.array_equal(rgb[..., 1], expected)
        from resnet_jax.explain import Preprocessing

        h, w = expected.shape
        pre = Preprocessing(min(h, w), 1.0, (0.0,), (1.0,), 1)
        want = eval_transform(expected[..., None], Preprocess(min(h, w), crop_pct=1.0))
        np.testing.assert_allclose(pre.pixels(path)[0], want / 255.0, atol=1e-7)


def _bomb(tmp_path, monkeypatch, pixels_allowed: int):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels_allowed)
    return path


@pytest.mark.parametrize("allowed", [100, 1000])  # PIL's error, and its warning band
def test_decompression_bomb_images_are_refused_in_one_line_naming_the_file(
        tmp_path, monkeypatch, allowed):
    path = _bomb(tmp_path, monkeypatch, allowed)
    with pytest.raises(ResNetJaxError, match="bomb.png.*decompression bomb") as e:
        read_image(path, 3)
    assert "\n" not in str(e.value)
    with pytest.raises(ResNetJaxError, match="bomb.png"):
        imagenet.load_image(path)


@pytest.fixture(scope="module")
def saved_rgb_model(tmp_path_factory):
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    d = tmp_path_factory.mktemp("rgb") / "model"
    resnet_jax.save(d, model, resnet_jax.init_variables(model, 0, 32), arch="my_resnet")
    return d


def test_bad_image_files_give_one_line_naming_the_file_in_every_command(
        saved_rgb_model, tmp_path, monkeypatch, capsys):
    bomb = _bomb(tmp_path, monkeypatch, 100)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(bomb.read_bytes()[:60])
    missing = tmp_path / "missing.png"
    for bad in (bomb, corrupt, missing):
        for cmd in (["predict"], ["gradcam", "--out", str(tmp_path / "cams")]):
            rc = main([*cmd, "--weights", str(saved_rgb_model), str(bad)])
            err = capsys.readouterr().err
            assert rc == 2, (cmd, bad, err)
            lines = [ln for ln in err.splitlines() if not ln.startswith("note: ")]
            assert len(lines) == 1 and bad.name in err and "Traceback" not in err, err


def test_predict_reads_unusual_images_like_their_eight_bit_equivalents(
        saved_rgb_model, unusual_images, tmp_path, capsys):
    for path, expected in unusual_images.items():
        plain = tmp_path / f"{path.stem}_8bit.png"
        Image.fromarray(expected).save(plain)
        outs = []
        for p in (path, plain):
            assert main(["predict", "--weights", str(saved_rgb_model), "--top", "2", str(p)]) == 0
            outs.append(capsys.readouterr().out.split("\n", 1)[1])
        assert outs[0] == outs[1]


def test_models_without_stored_preprocessing_say_what_is_assumed(saved_rgb_model, capsys):
    from resnet_jax.explain import Preprocessing, load_model, preprocessing_for

    m = load_model(saved_rgb_model)
    assert m.preprocess.source.startswith("assumed")
    assert (m.preprocess.image_size, m.preprocess.mean, m.preprocess.std) == (32, (0.0,) * 3,
                                                                              (1.0,) * 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stores no preprocessing; assuming 32x32" in err
    tv = resnet_jax.create_model("resnet18", num_classes=1000)
    assert preprocessing_for(tv) == Preprocessing.imagenet()
    assert capsys.readouterr().err == ""  # torchvision's preset is known, nothing to say


def test_imagenet_preset_is_the_eval_transform_of_torchvision(rng, tmp_path):
    """The ImageNet preset through the shared eval transform equals imagenet.preprocess
    (which test_imagenet checks against torchvision itself)."""
    from resnet_jax.explain import Preprocessing

    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (300, 411, 3), np.uint8)).save(path)
    ours = Preprocessing.imagenet()(path)[0]
    np.testing.assert_allclose(ours, imagenet.preprocess(path), atol=1e-6)


def test_explain_api_applies_a_models_preprocessing_to_raw_images(rng):
    from resnet_jax.explain import Preprocessing, gradcam

    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16),
                                    in_channels=1, num_classes=3)
    variables = resnet_jax.init_variables(model, 0, 12)
    pre = Preprocessing(12, 1.0, (0.3,), (0.4,), 1)
    raw = rng.integers(0, 256, (4, 8, 8, 1), np.uint8)
    x = pre(raw)
    by_hand = (eval_transform(raw[0], Preprocess(12, crop_pct=1.0)) / 255.0 - 0.3) / 0.4
    np.testing.assert_allclose(x[0], by_hand, atol=1e-6)
    res = resnet_jax.explain.explain(model, variables, raw, preprocess=pre)
    ref = resnet_jax.explain.explain(model, variables, x)
    np.testing.assert_allclose(res.maps, ref.maps, atol=1e-6)
    np.testing.assert_allclose(res.images, pre.pixels(raw))
    assert res.layer == "layer2"  # the last stage, found without naming it
    at_size = rng.integers(0, 256, (2, 12, 12, 1), np.uint8)  # floats in [0, 1] alike
    np.testing.assert_allclose(gradcam(model, variables, at_size / 255.0, preprocess=pre),
                               gradcam(model, variables, at_size, preprocess=pre), atol=1e-5)
