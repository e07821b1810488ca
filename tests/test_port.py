"""torch <-> flax porting: exact round trips, arch inference, files, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import arch_params, randomize_batchnorm, torchvision_model

import resnet_jax
from resnet_jax.models import TORCHVISION_ARCHS
from resnet_jax.port import PortError, from_torch, infer_arch, to_torch


def _assert_identical(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", arch_params(TORCHVISION_ARCHS))
def test_round_trip_is_bit_exact_and_loads_strictly(arch):
    tv = torchvision_model(arch, seed=5)
    original = tv.state_dict()
    model, variables = from_torch(original)  # arch inferred from keys and shapes
    assert model == resnet_jax.create_model(arch)
    back = to_torch(variables, arch)
    _assert_identical(original, back)
    fresh = torchvision.models.get_model(arch, weights=None)
    fresh.load_state_dict(back, strict=True)


def test_round_trip_other_heads_and_course_model():
    tv = randomize_batchnorm(torchvision.models.resnet18(num_classes=10))
    model, variables = from_torch(tv, "resnet18")
    assert model.num_classes == 10
    _assert_identical(tv.state_dict(), to_torch(variables, "resnet18"))

    flax_model = resnet_jax.create_model("my_resnet")
    sd = to_torch(resnet_jax.init_variables(flax_model, 3), "my_resnet")
    assert infer_arch(sd) == "my_resnet"
    model, variables = from_torch(sd)
    _assert_identical(sd, to_torch(variables, model))


def test_infer_arch_for_every_torchvision_arch():
    for arch in TORCHVISION_ARCHS:
        with torch.device("meta"):
            tv = torchvision.models.get_model(arch, weights=None)
        shapes = {k: np.empty(v.shape, np.float32) for k, v in tv.state_dict().items()}
        assert infer_arch(shapes) == arch


def test_state_dict_wrappers_and_prefixes_are_understood():
    tv = torchvision_model("resnet18", seed=2)
    sd = {"module." + k: v for k, v in tv.state_dict().items()}
    _, variables = from_torch({"state_dict": sd, "epoch": 3})
    _assert_identical(tv.state_dict(), to_torch(variables, "resnet18"))


def test_files_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    tv = torchvision_model("resnet18", seed=4)
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    save_file(tv.state_dict(), str(tmp_path / "w.safetensors"))
    _, a = from_torch(tmp_path / "w.pth")
    _, b = from_torch(str(tmp_path / "w.safetensors"))
    _assert_identical(tv.state_dict(), to_torch(a, "resnet18"))
    _assert_identical(tv.state_dict(), to_torch(b, "resnet18"))


def test_wrong_arch_names_the_keys_and_suggests_the_fit():
    sd = torchvision.models.resnet18().state_dict()
    with pytest.raises(PortError) as e:
        from_torch(sd, "resnet34")
    msg = str(e.value)
    assert "missing keys: layer1.2.conv1.weight" in msg
    assert "fit arch 'resnet18'" in msg

    with pytest.raises(PortError) as e:
        from_torch(torchvision.models.resnet50().state_dict(), "resnext50_32x4d")
    assert "layer1.0.conv1.weight is (64, 64, 1, 1) but resnext50_32x4d expects (128, 64, 1, 1)" in str(e.value)
    assert "fit arch 'resnet50'" in str(e.value)

    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(PortError, match="unexpected keys: extra.weight"):
        from_torch(sd, "resnet18")
    with pytest.raises(PortError, match="match no registered architecture"):
        from_torch(sd)
    with pytest.raises(resnet_jax.errors.ResNetJaxError, match="Known architectures"):
        from_torch(sd, "resnet_18")


def test_bad_files_give_clear_errors(tmp_path):
    good = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PortError, match="truncated or is not a PyTorch weights file"):
        from_torch(truncated)

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(PortError, match="truncated or is not a PyTorch weights file"):
        from_torch(text)

    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    with pytest.raises(PortError, match="not a weights file"):
        from_torch(other)

    with pytest.raises(PortError, match="does not exist"):
        from_torch(tmp_path / "missing.pth")

    pickled = tmp_path / "whole_model.pth"
    torch.save(torchvision.models.resnet18(), pickled)  # a pickled module, not a state dict
    with pytest.raises(PortError, match="contains torchvision.models.resnet.ResNet.*weights_only=True"):
        from_torch(pickled)

    st = tmp_path / "w.safetensors"
    from safetensors.torch import save_file
    save_file(torchvision.models.resnet18().state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:5000])
    with pytest.raises(PortError, match="truncated or is not a safetensors file"):
        from_torch(st)

    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_a_dict)
    with pytest.raises(PortError, match="holds a list, not a state dict"):
        from_torch(not_a_dict)


@pytest.mark.slow  # builds every architecture to compare key sets
def test_mismatched_state_dict_without_arch_names_closest_arch_and_keys():
    """Without an arch, a state dict that fits none names the closest one and what differs
    from it (missing, unexpected and mismatched keys), as a given arch does."""
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    sd["fc.weight"] = torch.zeros(10, 256)
    del sd["layer4.1.bn2.running_var"]
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(PortError) as e:
        from_torch(sd)
    msg = str(e.value)
    assert "closest: 'resnet18'" in msg
    assert "missing keys: layer4.1.bn2.running_var" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "fc.weight is (10, 256) but resnet18 expects (10, 512)" in msg

    with pytest.raises(PortError, match=r"not of a registered architecture: none of their "
                                        r"22 keys \(features.0.weight"):
        from_torch(torchvision.models.vgg11().state_dict())


def test_integer_or_nonfinite_weights_are_refused_not_cast(tmp_path):
    """int8 (a quantized export) would be cast to float silently, NaNs would make a model
    that scores as if it worked; both are errors naming the tensors. Half precision,
    bfloat16 included, is widened."""
    from safetensors.torch import save_file

    sd = torchvision_model("resnet18", seed=6).state_dict()
    ints = {k: (v * 100).to(torch.int8) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(ints, str(tmp_path / "int8.safetensors"))
    with pytest.raises(PortError, match=r"int8 tensors \(conv1.weight, .*integer export"):
        from_torch(tmp_path / "int8.safetensors")
    with pytest.raises(PortError, match="int8 tensors"):
        from_torch(ints)

    fp8 = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(fp8, str(tmp_path / "fp8.safetensors"))
    with pytest.raises(PortError, match="holds F8_E4M3 tensors, which numpy cannot read"):
        from_torch(tmp_path / "fp8.safetensors")

    nan = dict(sd, **{"layer2.0.conv1.weight": sd["layer2.0.conv1.weight"] * float("nan")})
    with pytest.raises(PortError, match="NaN or infinite values in layer2.0.conv1.weight"):
        from_torch(nan)

    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(bf16, str(tmp_path / "bf16.safetensors"))
    _, variables = from_torch(tmp_path / "bf16.safetensors")
    back = to_torch(variables, "resnet18")
    assert torch.equal(back["fc.weight"], bf16["fc.weight"].float())


def test_weights_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(PortError, match="is a folder, not a weights file"):
        from_torch(tmp_path)


def test_to_torch_tensors_are_contiguous_like_torchvision(tmp_path):
    """torchvision's state dicts hold contiguous tensors; so must ours (safetensors refuses
    to save anything else, and strides would otherwise ride along into .pth files)."""
    from safetensors.torch import save_file

    model = resnet_jax.create_model("my_resnet")
    sd = to_torch(resnet_jax.init_variables(model, 2), model)
    assert all(v.is_contiguous() for v in sd.values())
    save_file(sd, str(tmp_path / "w.safetensors"))
