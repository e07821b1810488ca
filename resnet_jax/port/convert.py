"""torch <-> flax conversion of whole models, with architecture inference and checks."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..models import ARCHS, create_model, get_spec, input_shape
from ..models.resnet import ResNet
from .files import PortError, read_weights_file, require_torch, state_dict_to_numpy
from .keys import flatten, flax_to_torch_array, torch_key, torch_order, torch_to_flax_array

NBT = "num_batches_tracked"


# --------------------------------------------------------------------------- shapes

def _options_from_state_dict(arch: str, sd: Mapping[str, np.ndarray]) -> dict:
    """Model options a state dict implies: head size, input channels, stem."""
    opts = {}
    spec = get_spec(arch)
    if "fc.weight" in sd and sd["fc.weight"].ndim == 2:
        opts["num_classes"] = int(sd["fc.weight"].shape[0])
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4:
        opts["in_channels"] = int(w.shape[1])
        if spec.module is ResNet:
            opts["stem"] = "small" if w.shape[-1] == 3 else "imagenet"
    return opts


def _model_for(arch: str, sd: Mapping[str, np.ndarray]) -> nn.Module:
    opts = _options_from_state_dict(arch, sd)
    return create_model(arch, **opts)


@functools.lru_cache(maxsize=64)
def _torch_layout(model: nn.Module) -> tuple[tuple[str, str, tuple[str, ...], tuple], ...]:
    """``(torch_key, collection, flax_path, torch_shape)`` for every variable, torch order."""
    # eval_shape's output has its dict keys sorted; the creation order (torch's order) is
    # recorded while the init function is traced.
    entries = []

    def record():
        x = jnp.zeros(input_shape(model), jnp.float32)
        variables = model.init(jax.random.key(0), x, train=False)
        entries.extend((c, p, None) for c, p, _ in flatten(variables))
        return variables

    shapes = jax.eval_shape(record)
    out = []
    entries = [(c, p, _get(shapes[c], p)) for c, p, _ in torch_order(entries)]
    for collection, path, leaf in entries:
        shape = tuple(flax_to_torch_array(path[-1], np.empty(leaf.shape, np.int8)).shape)
        out.append((torch_key(collection, path), collection, path, shape))
    return tuple(out)


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def torch_shapes(model: nn.Module) -> dict[str, tuple]:
    """The state-dict keys torchvision's equivalent of ``model`` has, with their shapes."""
    return {k: s for k, _, _, s in _torch_layout(model)}


def _fit(model: nn.Module, sd: Mapping[str, np.ndarray]):
    """(missing keys, unexpected keys, shape mismatches) of ``sd`` against ``model``."""
    expected = torch_shapes(model)
    missing = [k for k in expected if k not in sd and not k.endswith(NBT)]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        (k, expected[k], tuple(sd[k].shape)) for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    return missing, unexpected, mismatched


def infer_arch(state_dict: Mapping) -> str:
    """The registered architecture whose keys and shapes ``state_dict`` has exactly.

    When none fits, the error names the closest one and its missing, unexpected and
    mismatched keys, as ``from_torch`` does for a given arch."""
    sd = state_dict_to_numpy(state_dict) if not _is_numpy_sd(state_dict) else state_dict
    best, best_score, best_fit = None, None, None
    for name in ARCHS:
        try:
            model = _model_for(name, sd)
        except Exception:  # options that do not fit this family
            continue
        fit = _fit(model, sd)
        if not any(fit):
            return name
        expected = torch_shapes(model)
        score = sum(1 for k, s in expected.items() if k in sd and tuple(sd[k].shape) == s)
        score -= len(fit[0]) + len(fit[1]) + len(fit[2])
        if best_score is None or score > best_score:
            best, best_score, best_fit = name, score, fit
    matched = best is not None and any(k in sd for k in torch_shapes(_model_for(best, sd)))
    if not matched:
        raise PortError(
            f"these weights are not of a registered architecture: none of their {len(sd)} "
            f"keys ({_listing(sd, 4)}) is a key of {', '.join(ARCHS)}"
        )
    detail = f"; against {best}, " + "; ".join(_problems(best, *best_fit))
    raise PortError(
        f"these weights match no registered architecture exactly (closest: {best!r}){detail}. "
        f"Known architectures: {', '.join(ARCHS)}"
    )


def _problems(arch: str, missing, unexpected, mismatched) -> list[str]:
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append("shape mismatches: " + _listing(
            f"{k} is {tuple(got)} but {arch} expects {tuple(want)}" for k, want, got in mismatched))
    return problems


def _check_values(sd: Mapping[str, np.ndarray], keys) -> None:
    """Weights must be finite floating-point numbers (the step counters are integers)."""
    wrong: dict[str, list[str]] = {}
    for k in keys:
        if not k.endswith(NBT) and sd[k].dtype.kind != "f":
            wrong.setdefault(str(sd[k].dtype), []).append(k)
    if wrong:
        raise PortError(
            "the weights hold " + "; ".join(f"{d} tensors ({_listing(ks, 3)})"
                                            for d, ks in wrong.items())
            + "; expected float16, bfloat16, float32 or float64 (a quantized or integer "
            "export cannot be converted)"
        )
    bad = [k for k in keys if not k.endswith(NBT) and not np.isfinite(sd[k]).all()]
    if bad:
        raise PortError(f"the weights hold NaN or infinite values in {_listing(bad)}")


def _is_numpy_sd(sd) -> bool:
    return isinstance(sd, dict) and all(isinstance(v, np.ndarray) for v in sd.values())


def _suggestion(sd, arch: str) -> str:
    try:
        fits = infer_arch(sd)
    except PortError:
        return ""
    return f" These weights fit arch {fits!r}." if fits != arch else ""


def _listing(items, limit=8) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- public

def load_state_dict(source) -> dict[str, np.ndarray]:
    """A numpy state dict from a torch module, a state dict, or a weights file path."""
    if isinstance(source, (str, Path)):
        return read_weights_file(source)
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return state_dict_to_numpy(source.state_dict(), type(source).__name__)
    return state_dict_to_numpy(source)


def from_torch(source, arch: str | None = None, *, dtype=jnp.float32):
    """Bring torchvision weights into flax.

    Args:
      source: a torch module, a state dict (tensors or numpy arrays), or the path of a
        ``.pth``/``.pt``/``.safetensors`` file (read with ``weights_only=True``).
      arch: a registered architecture name; inferred from the keys and shapes if None.
        The head size, input channels and stem are read from the weights.
      dtype: dtype of the flax parameters and statistics (float32 keeps them bit for bit).

    Returns:
      ``(model, variables)`` with ``variables = {'params', 'batch_stats'}``.
    """
    sd = load_state_dict(source)
    if arch is None:
        arch = infer_arch(sd)
    model = _model_for(arch, sd)
    missing, unexpected, mismatched = _fit(model, sd)
    problems = _problems(arch, missing, unexpected, mismatched)
    if problems:
        raise PortError(
            f"the weights do not fit arch {arch!r}: " + "; ".join(problems) + "."
            + _suggestion(sd, arch)
        )
    _check_values(sd, [k for k in torch_shapes(model) if k in sd])

    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, _ in _torch_layout(model):
        leaf = path[-1]
        if leaf == NBT:
            value = np.asarray(sd.get(key, 0), dtype=np.int32)
        else:
            value = torch_to_flax_array(leaf, sd[key], dtype)
        node = variables[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return model, variables


def to_torch(variables, arch: str | nn.Module, *, as_numpy: bool = False):
    """A torch state dict (``OrderedDict`` of tensors) that torchvision loads strictly.

    ``arch`` is a registered name (head size, channels and stem are read from the
    variables) or the flax model itself. ``as_numpy`` returns numpy arrays instead, which
    needs no PyTorch (e.g. to write a ``.safetensors`` file).
    """
    from collections import OrderedDict

    if isinstance(arch, nn.Module):
        model = arch
    else:
        shapes = {}
        params = variables["params"]
        if "fc" in params:
            shapes["fc.weight"] = np.empty(np.shape(params["fc"]["kernel"])[::-1], np.int8)
        if "conv1" in params:
            k = np.shape(params["conv1"]["kernel"])
            shapes["conv1.weight"] = np.empty((k[3], k[2], k[0], k[1]), np.int8)
        model = _model_for(arch, shapes)
    out = OrderedDict()
    for key, collection, path, shape in _torch_layout(model):
        try:
            node = _get(variables.get(collection, {}), path)
        except (KeyError, TypeError):
            raise PortError(
                f"the variables lack {collection}/{'/'.join(path)} (torch key {key}); "
                f"they do not belong to this {type(model).__name__}"
            ) from None
        value = flax_to_torch_array(path[-1], np.asarray(node))
        if tuple(value.shape) != shape:
            raise PortError(f"{key} has shape {value.shape} but the model expects {shape}")
        out[key] = value
    if as_numpy:
        return out
    torch = require_torch("to_torch")
    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True, order="C"))) for k, v in out.items())
