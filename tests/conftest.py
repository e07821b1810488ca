"""Shared helpers: torchvision references with randomized weights and statistics."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

torch.set_num_threads(2)
os.environ.setdefault("RESNET_JAX_CACHE", "off")  # tests do not write a compilation cache


# The largest architecture of each block type runs with `make test-slow`: a smaller one of
# the same block covers the same code (resnet50 and resnet101 for resnet152's Bottleneck,
# resnext50_32x4d for the grouped ones, wide_resnet50_2 for the wide one).
# Parity for these runs in make test-slow: a smaller arch of the same block type (resnet50,
# resnext50_32x4d) covers the same code path in the default run.
SLOW_ARCHS = ("resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
              "wide_resnet101_2")


def arch_params(archs):
    """``archs`` for ``pytest.mark.parametrize``, those in ``SLOW_ARCHS`` marked slow."""
    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in archs]


def randomize_batchnorm(model, seed: int = 0):
    """Random BatchNorm affine parameters and running statistics (defaults of 0 and 1
    would hide a transposed or swapped tensor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=g)))
    return model


def torchvision_model(arch: str, seed: int = 0, **kwargs):
    """A torchvision model with random weights and randomized BatchNorm, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return randomize_batchnorm(model, seed).eval()


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    t = t.detach().numpy()
    return t.transpose(0, 2, 3, 1) if t.ndim == 4 else t


def rel_err(ours, ref) -> float:
    """L2 norm of the difference over the L2 norm of the reference."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def torch_stages(model, x_nchw, names=("layer1", "layer2", "layer3", "layer4")):
    """torchvision's outputs of the named submodules and the logits, by forward hooks."""
    out, handles = {}, []
    for name in names:
        mod = model.get_submodule(name)
        handles.append(mod.register_forward_hook(
            lambda _m, _i, o, name=name: out.__setitem__(name, nhwc(o))))
    try:
        out["fc"] = model(x_nchw).detach().numpy()
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.fixture
def rng(request):
    """A numpy generator seeded from the test's id: draws differ between tests and repeat
    from run to run. ``RESNET_JAX_TEST_SEED=N`` mixes N in, for other draws. A failing
    test's report shows the seed (section "rng seed")."""
    seed = [zlib.crc32(request.node.nodeid.encode()), int(os.environ.get("RESNET_JAX_TEST_SEED", 0))]
    request.node.add_report_section(
        "setup", "rng seed", f"np.random.default_rng({seed}) (RESNET_JAX_TEST_SEED={seed[1]})")
    return np.random.default_rng(seed)



def imagenet_photos(names, hw) -> np.ndarray:
    """scikit-image's photos (``astronaut``, ``coffee``, ...) resized to ``hw`` (bilinear)
    and normalised with ImageNet's mean and std, as (N, H, W, 3) float32."""
    from PIL import Image
    from skimage import data as skimage_data

    from resnet_jax import imagenet

    mean, std = np.asarray(imagenet.MEAN), np.asarray(imagenet.STD)
    out = []
    for name in names:
        img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        img = np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR)) / 255.0
        out.append(((img - mean) / std).astype(np.float32))
    return np.stack(out)

def run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter (imports start from nothing); fail with its stderr."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
