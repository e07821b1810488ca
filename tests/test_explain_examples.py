"""Dataset examples: the streaming top-k against a brute-force sort, receptive fields
against the convolution geometry, and a trained model's class units against labels."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import testing
from resnet_jax.explain.examples import receptive_fields, top_examples
from resnet_jax.models.registry import tapped_outputs


def _field_boxes(chain, positions, size):
    """Receptive fields from a chain of (kernel, stride, padding), by the textbook
    recursion: the jump J, the first window's start A and its size R."""
    jump, start, span = 1, 0, 1
    for k, s, p in chain:
        start -= p * jump
        span += (k - 1) * jump
        jump *= s
    out = []
    for y, x in positions:
        top, left = y * jump + start, x * jump + start
        out.append([max(top, 0), max(left, 0), min(top + span, size), min(left + span, size)])
    return np.asarray(out)


def _brute_force(acts, unit, k):
    """(indices, values, positions) of the k best images, ties to the smaller index."""
    if isinstance(unit, int):
        values, pos = np.asarray(acts["fc"])[:, unit], None
    elif len(unit) == 4:
        layer, c, y, x = unit
        values = np.asarray(acts[layer])[:, y, x, c]
        pos = np.tile([y, x], (len(values), 1))
    else:
        a = np.asarray(acts[unit[0]])[..., unit[1]]
        flat = a.reshape(len(a), -1)
        values = flat.max(1) if unit[2:] == ("max",) else flat.mean(1)
        best = flat.argmax(1)
        pos = np.stack([best // a.shape[2], best % a.shape[2]], 1)
    order = np.lexsort((np.arange(len(values)), -values))[:k]
    return order, values[order], None if pos is None else pos[order]


@pytest.fixture(scope="module")
def fresh_digit_cnn():
    model = resnet_jax.create_model("digit_cnn")
    return model, resnet_jax.init_variables(model, 0)


def test_streaming_top_k_equals_a_brute_force_sort(fresh_digit_cnn):
    """160 images (10 batches of 16), 20 of them copies of others so that values tie:
    the running top-k equals one sort of all values (larger first, then the earlier
    image), for a class, a channel's max and one position; fed as an array and as an
    iterator of masked batches; each crop is its position's receptive field."""
    model, variables = fresh_digit_cnn
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(160, 28, 28, 1)).astype(np.float32)
    x[130:150] = x[20:40]
    _, acts = tapped_outputs(model, variables, jnp.asarray(x))
    k = 24
    for unit in [3, ("conv2", 7, "max"), ("conv1", 2, 5, 6)]:
        ex = top_examples(model, variables, x, unit, k=k, batch_size=16)
        order, values, pos = _brute_force(acts, unit, k)
        np.testing.assert_array_equal(ex.indices, order)
        np.testing.assert_allclose(ex.values, values, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ex.images, x[order])
        if pos is None:
            assert ex.boxes is None and ex.crops is None
            continue
        np.testing.assert_array_equal(ex.positions, pos)
        chain = [(3, 1, 0)] if unit[0] == "conv1" else [(3, 1, 0), (2, 2, 0), (3, 1, 0)]
        np.testing.assert_array_equal(ex.boxes, _field_boxes(chain, pos, 28))
        t, left, b, r = ex.boxes[0]
        np.testing.assert_array_equal(ex.crops[0], x[order[0], t:b, left:r])
    # the same pass over batches with padding rows (mask 0) that must never win
    batches = []
    for start in range(0, 160, 16):
        img = x[start:start + 16].copy()
        img[-2:] = 1.0  # padding rows: bright images, masked out
        batches.append({"image": img, "mask": np.r_[np.ones(14), np.zeros(2)]})
    ex = top_examples(model, variables, iter(batches), 3, k=k)
    kept = np.asarray([i for i in range(160) if i % 16 < 14])
    order, _, _ = _brute_force({"fc": np.asarray(acts["fc"])[kept]}, 3, k)
    np.testing.assert_array_equal(ex.indices, kept[order])


def test_bad_units_and_data_are_named(fresh_digit_cnn):
    model, variables = fresh_digit_cnn
    x = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(ResNetJaxError, match="valid layer names: conv1, pool1, conv2"):
        top_examples(model, variables, x, ("layer4", 0))
    with pytest.raises(ResNetJaxError, match="out of range"):
        top_examples(model, variables, x, 10)
    with pytest.raises(ResNetJaxError, match="outside layer 'conv2'"):
        top_examples(model, variables, x, ("conv2", 0, 11, 0))
    with pytest.raises(ResNetJaxError, match="1-channel images"):
        top_examples(model, variables, np.zeros((4, 28, 28, 3), np.float32), 0)


@pytest.mark.slow  # resnet18's probe compiles slowly on a loaded 2-core machine
def test_receptive_fields_of_resnet18_follow_its_convolutions():
    model = resnet_jax.create_model("resnet18")
    variables = resnet_jax.init_variables(model, 0, 112)
    stem = [(7, 2, 3), (3, 2, 1)]
    cases = {"layer1": stem + 4 * [(3, 1, 1)],
             "layer2": stem + 4 * [(3, 1, 1)] + [(3, 2, 1)] + 3 * [(3, 1, 1)]}
    for layer, chain in cases.items():
        pos = [(0, 0), (7, 7), (13, 2)]
        got = receptive_fields(model, variables, layer, (1, 112, 112, 3), pos)
        np.testing.assert_array_equal(got, _field_boxes(chain, pos, 112))


@pytest.mark.slow  # trains a digit CNN
def test_top_examples_of_a_trained_class_unit_are_of_that_class():
    """digit_cnn trained on scikit-learn's digits: the 10 test images with the highest
    logit for each class are (>= 90%) images of that class; read from an iterator of
    (images, labels) batches, the labels come back with the examples."""
    xtr, ytr, xte, yte = testing.digits(seed=0)
    model = resnet_jax.create_model("digit_cnn")
    variables = testing.train_classifier(model, xtr, ytr, steps=150, batch=64, lr=3e-3)
    hits = []
    for c in range(10):
        batches = ((xte[i:i + 64], yte[i:i + 64]) for i in range(0, len(xte), 64))
        ex = top_examples(model, variables, batches, c, k=10)
        np.testing.assert_array_equal(ex.labels, yte[ex.indices])
        hits.append(np.mean(ex.labels == c))
    assert min(hits) >= 0.9, hits


@pytest.mark.slow  # three compiled programs (maximiser, top-k pass, receptive fields)
def test_visualize_draws_the_optimised_image_beside_its_top_examples(tmp_path, capsys):
    """resnet-jax visualize --examples K --data digits: one picture; the images it names
    are top_examples' on the same split, read at the model's size."""
    from PIL import Image

    from resnet_jax.cli import main
    from resnet_jax.data import Loader, Preprocess, load_splits

    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model, 0)
    d = tmp_path / "model"
    resnet_jax.save(d, model, variables, arch="digit_cnn")
    out = tmp_path / "conv2.png"
    rc = main(["visualize", "--weights", str(d), "--layer", "conv2", "--units", "4",
               "--steps", "4", "--examples", "3", "--data", "digits", "--snapshots", "0,4",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists() and (tmp_path / "conv2_steps.png").exists(), text
    pre = Preprocess(image_size=28, crop_pct=1.0, hflip=False, mean=(0.0,), std=(1.0,))
    loader = Loader(load_splits("digits", channels=1)["val"], 64, train=False, preprocess=pre)
    ex = top_examples(model, variables, loader, ("conv2", 4), k=3)
    assert f"images {', '.join(map(str, ex.indices))}" in text, text
    w, h = Image.open(out).size
    assert w >= 4 * 112 and h >= 2 * 112  # optimised + 3 examples, a row of crops
