"""torchvision's published weights and a side-by-side check against torchvision."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..models import get_spec
from .files import PortError, read_weights_file, require_torch

HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: the hex after a '-', before the suffix


def weights_enum(arch: str):
    """torchvision's weights enum for ``arch`` (e.g. ``ResNet18_Weights``)."""
    require_torch("torchvision weights")
    import torchvision.models as tvm

    spec = get_spec(arch)
    if not spec.torchvision:
        raise PortError(f"{arch} has no torchvision weights; give a weights file instead")
    return tvm.get_model_weights(spec.torchvision)


def weights_url(arch: str, name: str) -> str:
    """The address torchvision publishes the weights ``name`` of ``arch`` at."""
    return _lookup(arch, name).url


def _file_name(url: str) -> str:
    from urllib.parse import urlparse

    return os.path.basename(urlparse(url).path)


def cache_path(arch: str, name: str) -> Path:
    """Where torch.hub keeps (or will keep) the file of weights ``name``."""
    return _cache_dir() / _file_name(weights_url(arch, name))


def _cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


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


def expected_hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix torchvision puts in a weights file's name (``resnet18-f37072fd.pth``
    -> ``f37072fd``), found as torch.hub's ``check_hash=True`` finds it."""
    found = HASH_REGEX.search(file_name)
    return found.group(1) if found and found.group(1) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, expected: str | None, url: str) -> None:
    """Refuse a cached file whose SHA-256 does not start with the prefix in its name."""
    if expected is None:
        return
    found = sha256_of(path)[: len(expected)]
    if found != expected:
        raise PortError(
            f"{path} is not the file published at {url}: its SHA-256 starts with {found}, "
            f"but the name says {expected}; delete it to download it again, or place the "
            "published file there"
        )


def _download(url: str, path: Path, progress: bool) -> None:
    """Fetch ``url`` into torch.hub's cache; torch.hub checks the hash while it writes."""
    import torch.hub

    print(f"downloading {url} to {path}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)  # an OSError here names the cache folder
    try:
        torch.hub.download_url_to_file(url, str(path), expected_hash_prefix(path.name),
                                       progress=progress)
    except RuntimeError as e:  # torch.hub's "invalid hash value (expected ..., got ...)"
        raise PortError(f"the download of {url} is damaged ({e}); nothing was kept") from None
    except OSError as e:  # URLError is an OSError: no network, or a failed write
        raise PortError(
            f"cannot download {url} to {path} ({e}); without network access, place the file "
            f"at {path} and run again"
        ) from None


def torchvision_state_dict(arch: str, name: str, progress: bool = True) -> dict[str, np.ndarray]:
    """The state dict of torchvision's weights ``name`` for ``arch``, as numpy.

    Read from torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) when the file is there,
    downloaded into it (with a progress bar) otherwise. Either way the file's SHA-256 must
    start with the prefix in its name, and it is opened with ``weights_only=True``: a
    planted file that holds code is refused, never run.
    """
    url = weights_url(arch, name)
    path = _cache_dir() / _file_name(url)
    if not path.is_file():
        _download(url, path, progress)
    check_hash(path, expected_hash_prefix(path.name), url)
    return read_weights_file(path)


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
