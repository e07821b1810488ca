"""The model family itself: sizes, shapes, initialisation, options and errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import resnet_jax
from resnet_jax.errors import ResNetJaxError
from resnet_jax.models import TORCHVISION_ARCHS
from resnet_jax.port import to_torch


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_parameter_count_equals_torchvision(arch):
    with torch.device("meta"):
        tv = torchvision.models.get_model(arch, weights=None)
    expected = sum(p.numel() for p in tv.parameters())
    variables = resnet_jax.abstract_variables(resnet_jax.create_model(arch))
    assert resnet_jax.count_params(variables["params"]) == expected
    if arch == "resnet18":
        assert expected == 11_689_512


def test_course_resnet_shape_trace():
    """The course's MyResNet on a 224x224 image: conv1 112x112x64, maxpool 56x56x64,
    layer1 56x56x64, layer2 28x28x128, pooled 128, logits 2."""
    model = resnet_jax.create_model("my_resnet")
    variables = resnet_jax.init_variables(model)
    out = resnet_jax.features(model, variables, jnp.ones((1, 224, 224, 3)))
    shapes = {k: v.shape[1:] for k, v in out.items()}
    assert shapes["conv1"] == (112, 112, 64)
    assert shapes["maxpool"] == (56, 56, 64)
    assert shapes["layer1"] == (56, 56, 64)
    assert shapes["layer2"] == (28, 28, 128)
    assert shapes["avgpool"] == (128,)
    assert shapes["fc"] == (2,)
    assert list(out) == ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1",
                         "layer2.0", "layer2", "avgpool", "fc"]


def test_course_digit_cnn_shapes():
    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model)
    out = resnet_jax.features(model, variables, jnp.ones((3, 28, 28, 1)))
    assert out["conv1"].shape == (3, 26, 26, 25)
    assert out["conv2"].shape == (3, 11, 11, 50)  # the course's 50 x 11 x 11
    assert out["flatten"].shape == (3, 1250)
    assert out["fc"].shape == (3, 10)


def test_stage_outputs_chain_like_the_course():
    """Running the layers one after another gives the named outputs, as the course does
    with model.layer1(out2): each named output is the next one's input."""
    model = resnet_jax.create_model("resnet18", num_classes=10)
    variables = resnet_jax.init_variables(model)
    out = resnet_jax.features(model, variables, jnp.ones((1, 64, 64, 3)))
    assert [k for k in out if k.startswith("layer")] == [
        "layer1.0", "layer1.1", "layer1", "layer2.0", "layer2.1", "layer2",
        "layer3.0", "layer3.1", "layer3", "layer4.0", "layer4.1", "layer4"]
    np.testing.assert_array_equal(out["layer1"], out["layer1.1"])
    np.testing.assert_allclose(out["avgpool"], out["layer4"].mean(axis=(1, 2)), rtol=1e-6)


def test_initialisation_matches_torchvision_statistics():
    """Every tensor starts with the same distribution as torchvision's: kaiming normal
    (fan_out) convolutions, torch's default Linear, BatchNorm scale 1 / bias 0, and with
    zero_init_residual the same BatchNorm scales at zero."""
    for zero in (False, True):
        torch.manual_seed(0)
        tv = torchvision.models.resnet50(zero_init_residual=zero).state_dict()
        model = resnet_jax.create_model("resnet50", zero_init_residual=zero)
        ours = to_torch(resnet_jax.init_variables(model, 1), model, as_numpy=True)
        assert list(ours) == list(tv)
        for key, value in ours.items():
            ref = tv[key].numpy().astype(np.float64)
            value = value.astype(np.float64)
            if ref.std() == 0:
                np.testing.assert_array_equal(value, ref, err_msg=key)
            else:
                assert abs(value.std() / ref.std() - 1) < 0.1, key
                assert abs(value.mean() - ref.mean()) < 0.1 * ref.std() + 1e-3, key
                assert np.abs(value).max() <= np.abs(ref).max() * 1.6, key


def test_grayscale_and_small_stem():
    model = resnet_jax.create_model("resnet18", num_classes=10, in_channels=1, stem="small")
    variables = resnet_jax.init_variables(model)
    out = resnet_jax.features(model, variables, jnp.ones((2, 32, 32, 1)), ["conv1", "layer4", "fc"])
    assert out["conv1"].shape == (2, 32, 32, 64)  # 3x3/1, no max-pool
    assert out["layer4"].shape == (2, 4, 4, 512)
    assert out["fc"].shape == (2, 10)
    with pytest.raises(ValueError, match="1 channels"):
        model.apply(variables, jnp.ones((2, 32, 32, 3)))


def test_bfloat16_compute():
    model = resnet_jax.create_model("resnet18", dtype=jnp.bfloat16)
    variables = resnet_jax.init_variables(model)
    conv1 = resnet_jax.features(model, variables, jnp.ones((1, 64, 64, 3)), ["conv1"])["conv1"]
    assert conv1.dtype == jnp.bfloat16
    assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ResNetJaxError, match="resnet18.*Known architectures: resnet18, resnet34"):
        resnet_jax.create_model("resnet19")
    with pytest.raises(TypeError, match="no option.*'widht'"):
        resnet_jax.create_model("resnet18", widht=3)
    model = resnet_jax.create_model("my_resnet")
    variables = resnet_jax.init_variables(model)
    with pytest.raises(ResNetJaxError, match="layer9.*valid names: conv1, bn1"):
        resnet_jax.features(model, variables, jnp.ones((1, 64, 64, 3)), ["layer9"])


def test_model_config_round_trip():
    for arch in resnet_jax.ARCHS:
        model = resnet_jax.create_model(arch, dtype=jnp.bfloat16)
        again = resnet_jax.model_from_config(resnet_jax.model_config(model))
        assert again == model


def test_new_head_keeps_backbone():
    model = resnet_jax.create_model("resnet18")
    variables = resnet_jax.init_variables(model)
    new_model, new_vars = resnet_jax.models.with_new_head(model, variables, 7, rng=3)
    assert new_model.num_classes == 7
    assert new_vars["params"]["fc"]["kernel"].shape == (512, 7)
    same = jax.tree_util.tree_map(
        lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
        {k: v for k, v in variables["params"].items() if k != "fc"},
        {k: v for k, v in new_vars["params"].items() if k != "fc"})
    assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.parametrize("stride,pad,kernel,groups,hw", [
    (1, 1, 3, 1, 9), (2, 1, 3, 1, 9), (2, 1, 3, 1, 8), (2, 3, 7, 1, 13), (2, 0, 1, 1, 9),
    (1, 1, 3, 4, 8), (2, 1, 3, 2, 7), (1, "VALID", 3, 1, 10), (2, "SAME", 3, 1, 8),
])
def test_loop_friendly_convolution_gradients_equal_lax(stride, pad, kernel, groups, hw):
    from resnet_jax.models import autodiff

    x = jax.random.normal(jax.random.key(0), (2, hw, hw + 1, 8))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8 // groups, 12))
    padding = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=dn, feature_group_count=groups)
        return jnp.sum(jnp.sin(y))

    want = jax.grad(loss, (1, 2))(jax.lax.conv_general_dilated, x, w)
    with autodiff.loop_friendly_gradients():
        jaxpr = str(jax.make_jaxpr(lambda x, w: loss(autodiff.conv_general_dilated, x, w))(x, w))
        got = jax.grad(loss, (1, 2))(autodiff.conv_general_dilated, x, w)
    assert "custom_vjp_call" in jaxpr  # the variant was used
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,kernel,stride,pad,out", [
    ((2, 12, 10, 16), 3, 2, 1, 12),   # per-phase stride-1 convolutions
    ((2, 12, 12, 16), 1, 2, 0, 24),   # 1x1 downsample: one phase holds every tap
    ((2, 12, 12, 8), 4, 2, 1, 6),     # an even kernel
    ((2, 15, 15, 9), 5, 3, 2, 4),     # stride 3
    ((2, 16, 14, 3), 7, 2, 3, 8),     # a stem on RGB: matrix product, summed by phase
    ((2, 11, 9, 3), 7, 2, 3, 8),      # ... with odd sizes
    ((2, 11, 13, 16), 3, 2, 1, 5),    # odd sizes, many channels: lax's dilated form
])
def test_fast_strided_input_gradients_equal_lax(shape, kernel, stride, pad, out):
    from resnet_jax.models import autodiff

    x = jax.random.normal(jax.random.key(2), shape)
    w = jax.random.normal(jax.random.key(3), (kernel, kernel, shape[-1], out))
    padding = ((pad, pad), (pad, pad))

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y))

    want = jax.grad(loss, (1, 2))(jax.lax.conv_general_dilated, x, w)
    with autodiff.fast_gradients():
        got = jax.grad(loss, (1, 2))(autodiff.conv_general_dilated, x, w)
    for g, r in zip(got, want):
        scale = float(jnp.abs(r).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("shape,window,stride,pad", [
    ((2, 16, 16, 8), 3, 2, 1), ((2, 12, 6, 3), 3, 2, 1), ((2, 9, 11, 4), 3, 2, 1),
    ((3, 10, 10, 5), 2, 2, 0),
])
def test_fast_max_pool_gradient_equals_torch_on_ties(shape, window, stride, pad):
    """Mask-routed max-pool gradient: after a ReLU most windows tie at zero; the gradient
    goes to each window's first maximum, as in torch (and XLA's select-and-scatter)."""
    import torch

    from resnet_jax.models import autodiff

    x = jnp.maximum(jax.random.normal(jax.random.key(4), shape), 0.0)
    padding = ((pad, pad), (pad, pad))

    def pooled(x):
        return autodiff.max_pool(x, (window, window), (stride, stride), padding)

    with autodiff.fast_gradients():
        y, vjp = jax.vjp(pooled, x)
        g = jax.random.normal(jax.random.key(5), y.shape)
        (dx,) = vjp(g)
        assert "custom_vjp_call" in str(jax.make_jaxpr(pooled)(x))
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, window, stride, pad)
    yt.backward(torch.tensor(np.asarray(g).transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=0, atol=1e-6)
    # lax's own rule (reduce_window, select-and-scatter) gives the same, and so does the
    # models' pool outside the context (the stem's geometry has its own rule there), in
    # reverse and in forward mode.
    def lax_pool(x):
        return nn.max_pool(x, (window, window), (stride, stride), padding)

    for fn in (lax_pool, pooled):
        y_other, vjp_other = jax.vjp(fn, x)
        np.testing.assert_array_equal(np.asarray(y_other), np.asarray(y))
        np.testing.assert_allclose(np.asarray(vjp_other(g)[0]), np.asarray(dx), rtol=0,
                                   atol=1e-6)
    t = jax.random.normal(jax.random.key(6), x.shape)
    want_t = jax.jvp(lax_pool, (x,), (t,))[1]
    np.testing.assert_array_equal(np.asarray(jax.jvp(pooled, (x,), (t,))[1]),
                                  np.asarray(want_t))


def test_fast_relu_gradient_equals_flax_relu():
    """Under fast_gradients the models' ReLU masks its gradient by its stored output;
    values and gradients are flax's, at exact zeros (gradient 0), -0.0 and NaN too."""
    from resnet_jax.models import autodiff

    x = jax.random.normal(jax.random.key(7), (2, 6, 6, 5))
    x = x.at[0, 0, 0].set(0.0).at[0, 0, 1].set(-0.0).at[1, 2, 3, 4].set(jnp.nan)
    g = jax.random.normal(jax.random.key(8), x.shape)
    y_want, vjp_want = jax.vjp(nn.relu, x)
    with autodiff.fast_gradients():
        y, vjp = jax.vjp(autodiff.relu, x)
        assert "custom_vjp_call" in str(jax.make_jaxpr(autodiff.relu)(x))
    (dx,) = vjp(g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_want))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(vjp_want(g)[0]))
    assert float(dx[0, 0, 0, 0]) == 0.0 and float(dx[1, 2, 3, 4]) == 0.0
    # Inside a model (flax modules, residual stages), an input gradient under the
    # context equals lax's.
    model = resnet_jax.create_model("resnet18", num_classes=4)
    variables = resnet_jax.init_variables(model, jax.random.key(0), 64)
    images = jax.random.normal(jax.random.key(9), (2, 64, 64, 3))

    def score(images):
        return jnp.sum(model.apply(variables, images, train=False)[:, 1])

    want = jax.grad(score)(images)
    with autodiff.fast_gradients():
        got = jax.jit(jax.grad(score))(images)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(want).max()))


def test_loop_friendly_gradients_in_a_scan_are_canonical_and_equal():
    """Inside lax.scan, XLA:CPU compiles only canonical (b01f_01io->b01f) convolutions
    with its Eigen kernels; under loop_friendly_gradients every convolution of a
    resnet18 step (input and weight gradients) is canonical, with the same gradients.
    (96x96 keeps every feature map at least as large as the 3x3 kernels: XLA swaps
    the operands of convolutions whose kernel is larger than their input.)"""
    import re

    from resnet_jax.models import loop_friendly_gradients

    model = resnet_jax.create_model("resnet18", num_classes=5)
    variables = resnet_jax.init_variables(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 96, 96, 3))

    def grads(params, x):
        def loss(params, x):
            out, _ = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(out ** 2)
        return jax.grad(loss, (0, 1))(params, x)

    def scanned(params, x):
        def body(carry, _):
            g = grads(*carry)
            return carry, g
        return jax.lax.scan(body, (params, x), None, length=2)[1]

    with loop_friendly_gradients():
        compiled = jax.jit(scanned).lower(variables["params"], x).compile()
    labels = re.findall(r"convolution\(.*?dim_labels=([^,]+),", compiled.as_text())
    # 20 forward convolutions and their gradients (the strided input gradients split
    # into phases, the stem's input gradient and the downsamples' kernel gradients matrix products).
    assert len(labels) >= 2 * 20 and set(labels) == {"b01f_01io->b01f"}, set(labels)
    got = compiled(variables["params"], x)
    want = jax.jit(grads)(variables["params"], x)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g[1]), np.asarray(r), rtol=2e-5,
                                   atol=2e-5 * float(np.abs(np.asarray(r)).max()))


def test_inference_jit_compiles_top_level_programs_with_its_options_and_nests():
    from resnet_jax.xla_cpu import inference_compiler_options, inference_jit

    model = resnet_jax.create_model("resnet18", num_classes=10)
    variables = resnet_jax.init_variables(model, 0, 64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

    def fwd(v, x):
        return model.apply(v, x, train=False)

    program = inference_jit(fwd)
    want = jax.jit(fwd)(variables, x)
    np.testing.assert_allclose(program(variables, x), want, rtol=1e-5, atol=1e-5)
    # Inside another trace it is a plain jit (JAX refuses compiler options there).
    np.testing.assert_allclose(jax.jit(lambda v, x: program(v, x) * 2)(variables, x), want * 2,
                               rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" in str(jax.make_jaxpr(program)(variables, x))
    options = inference_compiler_options()
    if jax.default_backend() != "cpu":
        assert options == {}
        return
    assert options.get("xla_cpu_experimental_ynn_fusion_type", "") == ""
    plain_hlo = jax.jit(fwd).lower(variables, x).compile().as_text()
    if "__ynn_fusion" not in plain_hlo:
        pytest.skip("this jaxlib forms no YNNPACK fusions for ResNet-18")
    assert "__ynn_fusion" not in program.lower(variables, x).compile().as_text()
