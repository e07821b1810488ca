"""Activation maximisation: objectives, parameterisations, transforms, the compiled loop,
and the course's experiments on a digit CNN trained on scikit-learn's digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.explain import (
    evaluate,
    make_maximizer,
    maximize,
    param,
    testing,
)
from resnet_jax.explain import (
    objectives as O,
)
from resnet_jax.explain import (
    transforms as T,
)
from resnet_jax.explain.relu import redirected_relu
from resnet_jax.models.registry import tapped_outputs

INK = 0.05  # a pixel "has ink" above this value (images in [0, 1])
L1 = 0.2


@pytest.fixture(scope="module")
def digits_model():
    xtr, ytr, xte, yte = testing.digits(seed=0)
    model = resnet_jax.create_model("digit_cnn")
    variables = testing.train_classifier(model, xtr, ytr, steps=150, batch=64, lr=3e-3)
    assert testing.accuracy(model, variables, xte, yte) > 0.9
    return model, variables, xte


@pytest.fixture(scope="module")
def fresh_digit_cnn():
    """An untrained digit CNN: enough where only the program's shape or the errors matter."""
    model = resnet_jax.create_model("digit_cnn")
    return model, resnet_jax.init_variables(model, 0)


@pytest.fixture(scope="module")
def units(digits_model):
    """The course's pictures: the first 16 conv2 filters (a^k = sum_ij a^k_ij) and the first
    9 neurons of the dense layer that respond to some digit (training can leave a unit dead
    for every input), and the 10 class logits."""
    model, variables, x_test = digits_model
    _, acts = tapped_outputs(model, variables, jnp.asarray(x_test))

    def alive(layer, n):
        a = np.asarray(acts[layer])
        live = a.reshape(-1, a.shape[-1]).max(axis=0) > 0
        out = [int(k) for k in np.flatnonzero(live)[:n]]
        assert len(out) == n
        return out

    return {"conv2": (O.channel, alive("conv2", 16)), "hidden": (O.neuron, alive("hidden", 9)),
            "fc": (O.neuron, list(range(10)))}


@pytest.fixture(scope="module")
def optimized(digits_model, units):
    """All units, and the class logits with the L1 penalty, in one compiled program."""
    model, variables, _ = digits_model
    parts = [make(layer, idx) for layer, (make, idx) in units.items()]
    parts.append(O.class_logit(range(10)) - L1 * O.l1())
    objective = O.stack(parts)
    assert objective.batch == 16 + 9 + 10 + 10
    # chunk: 15 unrolled steps per call (XLA:CPU runs convolutions in loops slowly)
    images, values = maximize(model, variables, objective, steps=150, lr=0.05,
                              return_values=True, chunk=15, redirect_relu_steps=15)
    return images, values


@pytest.mark.slow  # trains a digit CNN (make test-slow)
def test_each_optimized_input_beats_every_real_image(digits_model, units, optimized):
    model, variables, x_test = digits_model
    images, _ = optimized
    assert images.shape == (45, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    _, acts = tapped_outputs(model, variables, jnp.asarray(x_test))
    start = 0
    for layer, (make, idx) in units.items():
        for k in idx:
            unit = make(layer, k)
            real_best = float(np.max(np.asarray(unit(acts, jnp.asarray(x_test)))))
            ours = float(evaluate(model, variables, unit, images[start:start + 1])[0])
            assert ours > real_best, (layer, k, ours, real_best)
            start += 1


@pytest.mark.slow
def test_l1_penalty_removes_most_ink(digits_model, optimized):
    images, values = optimized
    plain, sparse = images[-20:-10], images[-10:]
    ink_plain = np.mean(plain > INK, axis=(1, 2, 3))
    ink_sparse = np.mean(sparse > INK, axis=(1, 2, 3))
    assert ink_sparse.sum() <= 0.5 * ink_plain.sum(), (ink_sparse, ink_plain)
    # the units' objectives went up during the optimisation
    assert np.all(values[-1, :35] > values[0, :35])


def test_objectives_compose_as_pure_functions():
    draw = np.random.default_rng(0)  # numpy: XLA:CPU compiles some jax.random shapes slowly
    acts = {"conv": jnp.asarray(draw.standard_normal((3, 5, 5, 4), dtype=np.float32)),
            "dense": jnp.arange(12.0).reshape(3, 4)}
    x = jnp.asarray(draw.uniform(size=(3, 6, 6, 1)).astype(np.float32))
    obj = 2.0 * O.channel("conv", [0, 1, 3]) - 0.5 * O.l1() + O.neuron("dense", 2) / 4 - 1.0
    got = obj(acts, x)
    sums = np.asarray(acts["conv"]).sum((1, 2))
    want = (2 * sums[np.arange(3), [0, 1, 3]] - 0.5 * np.abs(np.asarray(x)).sum((1, 2, 3))
            + np.asarray(acts["dense"])[:, 2] / 4 - 1.0)
    assert np.allclose(got, want, rtol=1e-5)
    assert obj.batch == 3 and set(obj.layers) == {"conv", "dense"}
    pos = O.neuron("conv", 2, y=1, x=4)(acts, x)
    assert np.allclose(pos, np.asarray(acts["conv"])[:, 1, 4, 2])
    xs = np.asarray(x)
    tv = np.abs(np.diff(xs, axis=1)).sum((1, 2, 3)) + np.abs(np.diff(xs, axis=2)).sum((1, 2, 3))
    assert np.allclose(O.tv()(acts, x), tv, rtol=1e-5)
    assert np.allclose(O.l2()(acts, x), (xs ** 2).sum((1, 2, 3)), rtol=1e-5)
    with pytest.raises(ResNetJaxError, match="valid layer names: conv, dense"):
        O.channel("nope", 0).check({"conv": (1, 5, 5, 4), "dense": (1, 4)})
    with pytest.raises(ResNetJaxError, match="out of range"):
        O.channel("conv", [1, 4]).check({"conv": (1, 5, 5, 4)})
    with pytest.raises(ResNetJaxError, match="different sizes"):
        O.channel("conv", range(3)) + O.neuron("dense", range(4))


def test_fourier_parameterization_is_lucids():
    p = param.fourier(decorrelate_colors=True)
    spec = p.init(jax.random.key(1), (2, 12, 15, 3))
    assert spec.shape == (2, 3, 12, 9, 2)  # odd width keeps one extra column, as Lucid
    img = np.asarray(p.image(spec, (12, 15)))
    # numpy re-statement of lucent.optvis.param.spatial.fft_image + color.to_valid_rgb
    s = np.asarray(spec, np.float64)
    freqs = param.rfft2d_freqs(12, 15)
    scale = 1.0 / np.maximum(freqs, 1.0 / 15)
    ref = np.fft.irfftn((s[..., 0] + 1j * s[..., 1]) * scale, s=(12, 15), axes=(2, 3),
                        norm="ortho") / 4.0
    ref = np.moveaxis(ref, 1, -1) @ param.COLOR_CORRELATION_NORMALIZED.T
    ref = 1 / (1 + np.exp(-ref))
    assert img.shape == (2, 12, 15, 3) and np.abs(img - ref).max() < 1e-5


def test_transforms_keep_static_shapes_and_identity():
    x = jax.random.uniform(jax.random.key(2), (2, 20, 20, 3))
    key = jax.random.key(3)
    out = jax.jit(T.compose(T.standard_transforms()))(key, x)
    assert out.shape == (2, 44, 44, 3)
    assert jax.eval_shape(T.compose(T.standard_transforms(224)), key, x).shape == (2, 224, 224, 3)
    same = jax.jit(T.compose([T.random_scale([1.0]), T.random_rotate([0.0])]))(key, x)
    assert np.abs(np.asarray(same) - np.asarray(x)).max() < 1e-5
    padded = jax.jit(T.pad(3, 0.5))(key, x)
    assert np.allclose(padded[:, :3], 0.5) and np.allclose(padded[:, 3:-3, 3:-3], x)
    assert jax.eval_shape(T.jitter(5), key, x).shape == x.shape


def test_rotation_turns_counter_clockwise_as_torchvisions():
    """A positive angle turns the image counter-clockwise as displayed (torchvision's,
    kornia's and so Lucent's convention): a 90 degree turn is ``np.rot90`` (exact on the
    pixel grid), whose sign flipped is the clockwise turn; any angle matches torchvision."""
    x = np.array(jax.random.uniform(jax.random.key(2), (2, 9, 9, 3)))
    key = jax.random.key(3)
    dot = np.zeros((1, 5, 5, 1), np.float32)
    dot[0, 2, 4] = 1.0  # right of the centre
    turned = np.asarray(T.random_rotate([90.0])(key, dot))[0, ..., 0]
    assert [tuple(p) for p in np.argwhere(turned > 0.5)] == [(0, 2)]  # now above it
    for degrees, k in ((90.0, 1), (-90.0, -1)):
        rot = np.asarray(jax.jit(T.random_rotate([degrees]))(key, x))
        np.testing.assert_allclose(rot, np.rot90(x, k, axes=(1, 2)), atol=1e-5)
    import torch
    import torchvision.transforms.functional as F

    for degrees in (30.0, -20.0):
        ours = np.asarray(T.random_rotate([degrees])(key, x))
        theirs = F.rotate(torch.from_numpy(x).permute(0, 3, 1, 2), degrees,
                          interpolation=F.InterpolationMode.BILINEAR).permute(0, 2, 3, 1)
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def test_redirected_relu_passes_gradient_to_dead_units():
    x = jnp.array([[-1.0, -2.0], [3.0, -1.0]])

    def loss(x, relu):
        return -jnp.sum(relu(x) * jnp.array([1.0, 1.0]))

    plain = jax.grad(loss)(x, jax.nn.relu)
    redirected = jax.grad(loss)(x, redirected_relu)
    assert np.all(np.asarray(plain[0]) == 0)  # a dead example: no signal
    assert np.all(np.asarray(redirected[0]) < 0)  # redirected: pushed upwards
    assert np.allclose(redirected[1], plain[1])  # live examples keep the true gradient


@pytest.mark.slow  # test_explain_cam checks the ReLU field makes its own program
def test_a_models_act_field_carries_the_redirected_relu():
    """With every hidden unit switched off for every input, no gradient reaches the image
    through the plain model; ``model.clone(act=redirected_relu)`` passes one, and keeps
    it with the CPU-fast ops swapped in (``ops.cpu_fast``), as the maximiser traces it."""
    from resnet_jax import ops

    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model, 0)
    hidden = variables["params"]["hidden"]
    variables["params"]["hidden"] = {**hidden, "bias": hidden["bias"] - 1e4}
    x = jax.random.uniform(jax.random.key(4), (2, 28, 28, 1))

    def grad(m):
        return np.asarray(jax.grad(lambda x: m.apply(variables, x, train=False)[:, 3].sum())(x))

    redirected = grad(model.clone(act=redirected_relu))
    assert np.all(grad(model) == 0) and np.all(np.abs(redirected).reshape(2, -1).max(1) > 0)
    np.testing.assert_allclose(grad(ops.cpu_fast(model.clone(act=redirected_relu))),
                               redirected, rtol=1e-5, atol=1e-6)


def test_optimization_loop_is_one_compiled_scan(fresh_digit_cnn):
    model, variables = fresh_digit_cnn
    obj = O.class_logit(range(10))
    sizes = []
    for steps in (20, 400):
        run = make_maximizer(model, obj, steps=steps, redirect_relu_steps=8)
        jaxpr = jax.make_jaxpr(run)(variables, jax.random.key(0))
        text = str(jaxpr)
        assert text.count("scan[") == 2  # the redirected steps, then the true gradient
        sizes.append(len(text))
    assert abs(sizes[0] - sizes[1]) < 50  # the program does not grow with the steps


def test_maximize_rejects_bad_objectives(fresh_digit_cnn):
    model, variables = fresh_digit_cnn
    with pytest.raises(ResNetJaxError, match="valid layer names: conv1, pool1, conv2"):
        maximize(model, variables, O.channel("layer4", 0), steps=2)
    with pytest.raises(ResNetJaxError, match="out of range"):
        maximize(model, variables, O.class_logit(10), steps=2)


# --------------------------------------------------------------------------- stored normalisation


@pytest.mark.slow
def test_units_that_never_activate_are_marked_dead(tmp_path, capsys):
    from resnet_jax.cli import main

    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model, 0)
    conv2 = variables["params"]["conv2"]
    variables["params"]["conv2"] = {"kernel": conv2["kernel"].at[..., 2].set(0.0),
                                    "bias": conv2["bias"].at[2].set(-1.0)}
    d = tmp_path / "model"
    resnet_jax.save(d, model, variables, arch="digit_cnn")
    rc = main(["visualize", "--weights", str(d), "--layer", "conv2", "--units", "0-3",
               "--steps", "20", "--out", str(tmp_path / "g.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "1 dead unit(s) marked" in out, out
    from resnet_jax.explain import dead_units

    images = maximize(model, variables, O.channel("conv2", range(4)), steps=20)
    assert dead_units(model, variables, O.channel("conv2", range(4)), images).tolist() == [
        False, False, True, False]
