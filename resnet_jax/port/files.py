"""Reading weights files safely: torch pickles only through ``weights_only=True``."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import ResNetJaxError


class PortError(ResNetJaxError):
    """Weights that cannot be brought over: a damaged file, wrong keys or shapes."""


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params")


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise PortError(
            f"{what} needs PyTorch, which is not installed; install the extra with "
            "`pip install 'resnet-jax[torch]'`"
        ) from None
    return torch


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array-like as a numpy array on the host (bfloat16 widened)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def read_weights_file(path) -> dict[str, np.ndarray]:
    """The state dict stored in a ``.pth``/``.pt`` or ``.safetensors`` file, as numpy.

    Torch files are opened with ``weights_only=True``: a file that holds anything but
    tensors and plain containers is refused, never executed.
    """
    path = Path(path)
    if path.is_dir():
        raise PortError(f"{path} is a folder, not a weights file (.pth, .pt or .safetensors)")
    if not path.is_file():
        raise PortError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES and not head.startswith(b"PK"):
        raise PortError(
            f"{path} is not a weights file: expected a PyTorch state dict "
            f"({', '.join(TORCH_SUFFIXES)}) or a .safetensors file"
        )
    torch = require_torch(f"reading {path.name}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it contains {found.group(1)})" if found else ""
        raise PortError(
            f"{path} holds Python objects{what} that a safe load (torch.load with "
            "weights_only=True) refuses to unpickle; save the weights with "
            "torch.save(model.state_dict(), path) and convert that file instead"
        ) from None
    except Exception as e:  # torch.load raises many types on damaged or foreign files
        detail = str(e).split(". ")[0] if str(e) else type(e).__name__
        raise PortError(
            f"{path} is truncated or is not a PyTorch weights file (torch.load: {detail})"
        ) from None
    return state_dict_to_numpy(obj, str(path))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PortError(f"{path} is truncated or is not a safetensors file ({e})") from None
    except (AttributeError, TypeError):  # a dtype numpy has no type for (float8, ...)
        raise PortError(
            f"{path} holds {'/'.join(_safetensors_dtypes(path))} tensors, which numpy cannot "
            "read; expected F16, BF16, F32 or F64 weights"
        ) from None
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in sd.items()}


def _safetensors_dtypes(path: Path) -> list[str]:
    import json

    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    found = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    readable = {"F16", "BF16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL"}
    return sorted(found - readable or found)


def state_dict_to_numpy(obj, where: str = "the state dict") -> dict[str, np.ndarray]:
    """Normalise a state dict: unwrap ``{'state_dict': ...}`` checkpoints, strip the
    ``module.`` prefix DataParallel adds, and turn tensors into numpy arrays."""
    if not isinstance(obj, Mapping):
        raise PortError(
            f"{where} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)"
        )
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "shape"):
            raise PortError(
                f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a "
                "state dict of tensors"
            )
        out[k.removeprefix("module.")] = to_numpy(v)
    if not out:
        raise PortError(f"{where} is empty")
    return out
