"""The model family itself: sizes, shapes, initialisation, options and errors."""

from __future__ import annotations

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


@pytest.mark.slow  # statistics over every architecture's initialisation
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


@pytest.mark.parametrize("arch", ["my_resnet", "digit_cnn", "resnet18"])
def test_the_programs_that_run_once_compile_quickly_and_give_the_same_bits(arch, monkeypatch):
    """The models' initialiser and the optimizer's initial state compile with
    ``one_shot_compiler_options`` (no LLVM optimisation, the older emitters): their results
    are the same bits as the default compile's, for several optimizers."""
    from resnet_jax.models import registry
    from resnet_jax.train import state as state_module
    from resnet_jax.train.state import OptimizerConfig, make_optimizer
    from resnet_jax.xla_cpu import one_shot_compiler_options, one_shot_jit

    if jax.default_backend() == "cpu":
        assert one_shot_compiler_options() == {"xla_backend_optimization_level": 0,
                                               "xla_cpu_use_fusion_emitters": False}
    else:
        assert one_shot_compiler_options() == {}
    model = resnet_jax.create_model(arch)
    key = jax.random.key(3)
    shape = registry.input_shape(model, (1, 1) if registry._any_size(model) else None)
    init, _ = registry._compiled_init(model, shape)  # the one init_variables(model) runs
    assert getattr(init, "compiler_options", {}) == one_shot_compiler_options()
    quick, default = init(key), jax.jit(init.__wrapped__)(key)

    def bits(tree):
        return [np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
                           else a) for a in jax.tree_util.tree_leaves(tree)]

    assert len(bits(quick)) == len(bits(default)) > 0
    for a, b in zip(bits(quick), bits(default), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    params = resnet_jax.init_variables(model, 0)["params"]
    used = []  # TrainState.create builds its optimizer state with one_shot_jit
    monkeypatch.setattr(state_module, "one_shot_jit", lambda fn: used.append(fn) or one_shot_jit(fn))
    for opt in [dict(optimizer="sgd", nesterov=True, weight_decay=5e-4),
                dict(optimizer="adamw", weight_decay=0.05, clip_norm=1.0),
                dict(optimizer="sgd", freeze_backbone=True)]:
        tx = make_optimizer(OptimizerConfig(total_steps=100, warmup_steps=5, **opt))
        quick, default = one_shot_jit(tx.init)(params), jax.jit(tx.init)(params)
        used.clear()
        created = state_module.TrainState.create(model.apply, {"params": params}, tx)
        assert used == [tx.init]
        for a, b in zip(bits(created.opt_state), bits(quick), strict=True):
            assert a.tobytes() == b.tobytes()
        assert jax.tree_util.tree_structure(quick) == jax.tree_util.tree_structure(default)
        for a, b in zip(bits(quick), bits(default), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), opt


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
