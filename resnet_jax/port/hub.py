"""torchvision's published weights and a side-by-side check against torchvision."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..models import get_spec
from .files import PortError, require_torch, state_dict_to_numpy


def weights_enum(arch: str):
    """torchvision's weights enum for ``arch`` (e.g. ``ResNet18_Weights``)."""
    require_torch("torchvision weights")
    import torchvision.models as tvm

    spec = get_spec(arch)
    if not spec.torchvision:
        raise PortError(f"{arch} has no torchvision weights; give a weights file instead")
    return tvm.get_model_weights(spec.torchvision)


def weights_names(arch: str) -> list[str]:
    """The published weight names for ``arch``: e.g. ``['IMAGENET1K_V1', 'IMAGENET1K_V2']``."""
    return [w.name for w in weights_enum(arch)]


def cache_path(arch: str, name: str) -> Path:
    """Where torch.hub keeps (or will keep) the file of weights ``name``."""
    import torch.hub

    weights = _lookup(arch, name)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _lookup(arch: str, name: str):
    enum = weights_enum(arch)
    key = name.split(".")[-1]
    if key == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        raise PortError(
            f"{arch} has no torchvision weights named {name!r}; "
            f"its weights are {', '.join([w.name for w in enum] + ['DEFAULT'])}"
        ) from None


def torchvision_state_dict(arch: str, name: str, progress: bool = True) -> dict[str, np.ndarray]:
    """The state dict of torchvision's weights ``name`` for ``arch``, as numpy.

    Read from torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) when the file is there,
    downloaded into it (with a progress bar) otherwise.
    """
    weights = _lookup(arch, name)
    path = cache_path(arch, name)
    if not path.is_file():
        print(f"downloading {weights.url} to {path}", flush=True)
    try:
        sd = weights.get_state_dict(progress=progress, check_hash=False)
    except OSError as e:  # URLError is an OSError: no network
        raise PortError(
            f"cannot download {weights.url} ({e}); without network access, place the file "
            f"at {path} and run again"
        ) from None
    except RuntimeError as e:
        raise PortError(f"{path} is truncated or damaged ({e}); delete it and download again") from None
    return state_dict_to_numpy(sd, str(path))


def torchvision_model(arch: str, state_dict, num_classes: int):
    """The torchvision model for ``arch`` with ``state_dict`` loaded, in eval mode."""
    torch = require_torch("verification")
    import torchvision.models as tvm

    model = tvm.get_model(get_spec(arch).torchvision, weights=None, num_classes=num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                          strict=True)
    return model.eval()


def compare_with_torch(model, variables, torch_model, batch: int = 2, size: int = 224,
                       seed: int = 0, features_only: bool = False) -> dict:
    """Run the flax and torch models on one random batch; relative L2 error and top-1 agreement.

    With ``features_only`` the pooled features (``avgpool``) are compared instead of
    the logits, as when the flax model carries a new head.
    """
    torch = require_torch("verification")
    from ..models import features

    x = np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        if features_only:
            fc, torch_model.fc = torch_model.fc, torch.nn.Identity()
            try:
                ref = torch_model(xt).numpy()
            finally:
                torch_model.fc = fc
        else:
            ref = torch_model(xt).numpy()
    if features_only:
        out = np.asarray(jax.jit(lambda v, x: features(model, v, x, ["avgpool"])["avgpool"])(
            variables, jnp.asarray(x)))
    else:
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    agree = int((out.argmax(-1) == ref.argmax(-1)).sum())
    return {"relative_error": rel, "top1_agree": agree, "batch": batch,
            "compared": "pooled features" if features_only else "logits"}
