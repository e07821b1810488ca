"""Bad input to the explain API and the ``gradcam`` / ``visualize`` commands."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax.cli import main
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import gradcam
from resnet_jax.explain.images import prepare_images
from resnet_jax.viz.overlays import image_grid, overlay, save_grid, save_overlay, to_uint8_rgb


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
        gradcam(model, variables, x, layer="layer2", method="nosuchcam")


def test_class_index_out_of_range(small_resnet, rng):
    model, variables = small_resnet
    x = rng.random((2, 32, 32, 3), np.float32)
    with pytest.raises(ResNetJaxError, match=r"class index 2 is out of range.*0\.\.1"):
        gradcam(model, variables, x, targets=2, layer="layer2")
    with pytest.raises(ResNetJaxError, match="class index -3"):
        gradcam(model, variables, x, targets=[[0, -3]] * 2, layer="layer2")
    with pytest.raises(ResNetJaxError, match="3 targets for 2 images"):
        gradcam(model, variables, x, targets=[0, 1, 1], layer="layer2")


@pytest.mark.slow
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


@pytest.mark.slow  # the visualize option and padding tests run by default
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


# --------------------------------------------------------------------------- defaults


@pytest.mark.slow  # builds three architectures; gradcam's default layer runs in the other tests
def test_default_layer_is_the_last_stage_of_every_model(small_resnet, rng):
    model, variables = small_resnet
    x = rng.random((2, 32, 32, 3), np.float32)
    res = resnet_jax.explain.explain(model, variables, x)  # my_resnet: two stages
    assert res.layer == "layer2" and res.maps.shape == (2, 32, 32)
    np.testing.assert_allclose(gradcam(model, variables, x), res.maps)
    digit = resnet_jax.create_model("digit_cnn")
    res = resnet_jax.explain.explain(digit, resnet_jax.init_variables(digit, 0),
                                     rng.random((2, 28, 28, 1), np.float32))
    assert res.layer == "conv2"
    r18 = resnet_jax.create_model("resnet18", num_classes=4)
    res = resnet_jax.explain.explain(r18, resnet_jax.init_variables(r18, 0, 64),
                                     rng.random((1, 64, 64, 3), np.float32))
    assert res.layer == "layer4"


# --------------------------------------------------------------------------- pictures

RED = np.array([255, 0, 0], np.uint8)


def _red_pixels(img) -> int:
    return int(np.all(np.asarray(img) == RED, axis=-1).sum())


def test_captions_sit_beside_tiles_never_on_them():
    tiles = [np.broadcast_to(RED, (12, 12, 3)).copy() for _ in range(5)]
    labels = [f"class {k}: a long class name\n0.{k}3" for k in range(5)]
    for ncols in (1, 2, 5):
        grid = image_grid(tiles, labels, ncols=ncols, title="t")
        n = _red_pixels(grid)
        side = int(round(np.sqrt(n / 5)))
        assert n == 5 * side * side and side % 12 == 0 and side >= 96, (ncols, n)
    # the overlay figure keeps its input tile whole too
    fig = np.asarray(Image.open(save_overlay(
        Path(tempfile.mkdtemp()) / "o.png", tiles[0], np.zeros((12, 12)),
        label="a very long class name (123): p=0.456\ngradcam at layer4 - some/long/path.png")))
    n = _red_pixels(fig)
    assert n == int(round(np.sqrt(n))) ** 2 and n >= 96 * 96


def test_titles_wrap_in_narrow_grids():
    title = "layer2 channels maximised (256 steps, L1 0.2, L2 0.1, TV 0.05) on a long model name"
    grid = image_grid([np.zeros((8, 8))], ["channel 0\n1.23"], title=title)
    ink = np.any(grid < 128, axis=-1)
    assert not ink[:, -3:].any() and not ink[:, :2].any()  # nothing runs off an edge
    assert ink[: grid.shape[0] - 140].sum() > 200  # the title is drawn, on several lines


def test_small_images_are_enlarged_without_smoothing(rng):
    digit = rng.random((12, 12)) * 0.9  # no pure white, so the tile's bounds are its pixels
    grid = image_grid([digit], title=None)[..., 0]
    px = to_uint8_rgb(digit)[..., 0]
    ys, xs = np.nonzero(grid != 255)
    tile = grid[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = tile.shape[0] // 12
    assert tile.shape == (12 * scale, 12 * scale) and scale >= 8
    assert np.array_equal(tile, np.kron(px, np.ones((scale, scale), np.uint8)))


def test_map_figures_have_one_colour_bar(rng, tmp_path):
    from resnet_jax.viz.overlays import colorize

    img = rng.random((20, 30, 3))
    fig = np.asarray(Image.open(save_overlay(tmp_path / "o.png", img, rng.random((20, 30)),
                                             label="x", colormap="viridis")))
    h = 20 * 4  # enlarged to at least 112 pixels across by a whole factor
    ramp = to_uint8_rgb(colorize(np.linspace(1.0, 0.0, h)[:, None], "viridis"))[:, 0]
    cols = [x for x in range(fig.shape[1])
            if any(np.array_equal(fig[y:y + h, x], ramp) for y in range(fig.shape[0] - h + 1))]
    assert cols and cols == list(range(cols[0], cols[0] + len(cols)))  # one bar


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("argv, says", [
    (["--alpha", "1.5"], "--alpha 1.5 is outside [0, 1]"),
    (["--alpha", "-0.1"], "outside [0, 1]"),
    (["--alpha", "nan"], "outside [0, 1]"),
    (["--colormap", "nope"], "unknown colour map 'nope'"),
    (["--target", "-1"], "--target -1 is negative"),
    (["--target", "10"], "--target 10 is out of range: the model has 10 classes (valid indices 0..9)"),
])
def test_gradcam_refuses_options_out_of_range(saved_digit_model, tmp_path, rng, capsys, argv,
                                              says):
    img = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(img), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and says in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps 0: give a positive number"),
    (["--steps", "-3"], "positive number of optimisation steps"),
    (["--size", "0"], "--size 0: give a positive image side"),
    (["--size", "-5"], "positive image side"),
    (["--lr", "nan"], "--lr nan: the learning rate must be a finite number above 0"),
    (["--lr", "inf"], "finite number above 0"),
    (["--l1", "-1"], "--l1 -1.0: a penalty weight must be a finite number >= 0"),
])
def test_visualize_refuses_options_out_of_range(saved_digit_model, tmp_path, capsys, argv, says):
    out = tmp_path / "g.png"
    rc = main(["visualize", "--weights", str(saved_digit_model), "--class", "0", "--out",
               str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and says in err, err
    assert not out.exists()


@pytest.mark.slow
def test_visualize_with_padding_transforms_or_another_size_works_or_says_why(
        saved_digit_model, tmp_path, capsys):
    out = tmp_path / "g.png"
    # the digit CNN takes 28x28 only: a padding transform's output is brought back to it
    rc = main(["visualize", "--weights", str(saved_digit_model), "--layer", "conv2", "--units",
               "0-1", "--steps", "3", "--transforms", "standard", "--out", str(out)])
    assert rc == 0 and out.is_file(), capsys.readouterr().err
    rc = main(["visualize", "--weights", str(saved_digit_model), "--class", "1", "--steps", "3",
               "--size", "20", "--out", str(tmp_path / "h.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "takes 28x28 images only" in err and "give 28" in err
    # a ResNet takes any size, padded or not
    model = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
    d = tmp_path / "resnet"
    resnet_jax.save(d, model, resnet_jax.init_variables(model, 0, 32), arch="my_resnet")
    for size in ("20", "48"):
        rc = main(["visualize", "--weights", str(d), "--class", "0-1", "--steps", "3", "--size",
                   size, "--transforms", "standard", "--out", str(tmp_path / f"r{size}.png")])
        assert rc == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- outputs


def test_gradcam_inputs_with_one_file_name_get_distinct_outputs(saved_digit_model, tmp_path,
                                                               rng, capsys):
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "digit.png")
        Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(paths[-1])
    out = tmp_path / "out"
    rc = main(["gradcam", "--weights", str(saved_digit_model), *map(str, paths), "--target", "3",
               "--out", str(out), "--save-maps"])
    printed = capsys.readouterr().out
    assert rc == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4, written  # two overlays and two map files
    for name in written:
        assert str(out / name) in printed  # the command lists what it wrote
    assert "wrote 4 file(s)" in printed


def test_picture_outputs_fail_in_one_line_naming_the_path(saved_digit_model, tmp_path, rng,
                                                         capsys, monkeypatch):
    img = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(img)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    cases = [
        (["gradcam", str(img), "--out", str(a_file)], a_file),
        (["gradcam", str(img), "--out", str(tmp_path / "no" / "such" / "dir")], None),
        (["visualize", "--class", "1", "--steps", "2", "--out", str(tmp_path / "no" / "g.png")],
         tmp_path / "no" / "g.png"),
        (["visualize", "--class", "1", "--steps", "2", "--out", str(a_file / "g.png")],
         a_file / "g.png"),
        (["visualize", "--class", "1", "--steps", "2", "--out", str(tmp_path)], tmp_path),
    ]
    for argv, named in cases:
        rc = main([argv[0], "--weights", str(saved_digit_model), *argv[1:]])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert str(named or tmp_path / "no" / "such") in err
    assert a_file.read_text() == "keep me"

    # a write that fails half-way (disk full) leaves no partial file behind
    def full_disk(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "pictures"
    out.mkdir()
    for argv in (["gradcam", str(img), "--out", str(out)],
                 ["visualize", "--class", "1", "--steps", "2", "--out", str(out / "g.png")]):
        rc = main([argv[0], "--weights", str(saved_digit_model), *argv[1:]])
        err = capsys.readouterr().err
        assert rc == 1 and "No space left on device" in err and str(out) in err, err
        assert list(out.iterdir()) == []


def test_gradcam_compare_writes_one_row_per_method_from_the_methods_own_maps(
        saved_digit_model, tmp_path, rng, capsys):
    from resnet_jax.explain import explain
    from resnet_jax.explain.inputs import load_model
    from resnet_jax.viz.overlays import comparison_figure

    img = tmp_path / "digit.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(img)
    out = tmp_path / "cmp"
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(img), "--target", "4",
               "--compare", "gradcam,saliency", "--out", str(out)])
    assert rc == 0 and "2 methods for class 4" in capsys.readouterr().out
    written = np.asarray(Image.open(out / "digit_compare_4.png").convert("RGB"))
    m = load_model(saved_digit_model, say=lambda line: None)
    results = [explain(m.model, m.variables, [img], [4], method=name, preprocess=m.preprocess)
               for name in ("gradcam", "saliency")]
    expected = comparison_figure(results[0].images[0], [r.maps[0] for r in results],
                                 ["gradcam at conv2", "saliency"],
                                 title=f"class 4: p={results[0].scores[0]:.3f} - {img}")
    np.testing.assert_array_equal(written, expected)
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(img), "--compare",
               "gradcam,nosuch", "--out", str(out)])
    assert rc == 2 and "unknown method 'nosuch'" in capsys.readouterr().err


def test_gradcam_command_reaches_the_cam_options_and_score_kinds(saved_digit_model, tmp_path,
                                                                  rng, capsys):
    from resnet_jax.explain import explain
    from resnet_jax.explain.inputs import load_model
    from resnet_jax.explain.targets import ClassifierOutputSoftmaxTarget

    img = tmp_path / "digit.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(img)
    out = tmp_path / "opts"
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(img), "--target", "2",
               "--method", "layercam", "--layer", "conv1", "--layer", "conv2", "--score",
               "softmax", "--eigen-smooth", "--save-maps", "--out", str(out)])
    assert rc == 0 and "conv1 + conv2" not in capsys.readouterr().err
    m = load_model(saved_digit_model, say=lambda line: None)
    ref = explain(m.model, m.variables, [img], [[ClassifierOutputSoftmaxTarget(2)]],
                  layer=["conv1", "conv2"], method="layercam", preprocess=m.preprocess,
                  eigen_smooth=True)
    np.testing.assert_allclose(np.load(out / "digit_layercam.npy"), ref.maps[0], atol=1e-6)
    plain = explain(m.model, m.variables, [img], [2], layer="conv2", method="layercam",
                    preprocess=m.preprocess)
    assert np.abs(plain.maps[0] - ref.maps[0, 0]).max() > 1e-3  # the options changed the map
    rc = main(["gradcam", "--weights", str(saved_digit_model), str(img), "--method", "saliency",
               "--aug-smooth", "--out", str(out)])
    assert rc == 2 and "--aug-smooth: only for CAM methods" in capsys.readouterr().err
