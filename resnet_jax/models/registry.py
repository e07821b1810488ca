"""The architecture registry: each architecture is named once, here.

The model factory, the porter's arch inference, the CLI and the tests all read ``ARCHS``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from .digits import DigitCNN
from .layers import tap_name
from .resnet import ResNet


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, and what torchvision calls it (if it has it)."""

    name: str
    module: type[nn.Module]
    config: Mapping[str, Any]
    torchvision: str | None = None  # torchvision.models builder of the same name
    input_size: int = 224  # the input side it is usually run at
    summary: str = ""


def _resnet(name, block, stages, groups=1, width=64, **kw):
    return ArchSpec(
        name, ResNet,
        dict(block=block, stage_sizes=tuple(stages), groups=groups, width_per_group=width),
        torchvision=name, **kw,
    )


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        _resnet("resnet18", "basic", (2, 2, 2, 2)),
        _resnet("resnet34", "basic", (3, 4, 6, 3)),
        _resnet("resnet50", "bottleneck", (3, 4, 6, 3)),
        _resnet("resnet101", "bottleneck", (3, 4, 23, 3)),
        _resnet("resnet152", "bottleneck", (3, 8, 36, 3)),
        _resnet("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), width=128),
        _resnet("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), width=128),
        _resnet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width=4),
        _resnet("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32, width=8),
        _resnet("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), groups=64, width=4),
        ArchSpec(
            "my_resnet", ResNet,
            dict(block="basic", stage_sizes=(1, 1), stage_widths=(64, 128), num_classes=2),
            summary="the course's ResNet: two stages of one BasicBlock, 64 and 128 wide",
        ),
        ArchSpec(
            "digit_cnn", DigitCNN, dict(num_classes=10), input_size=28,
            summary="the course's digit CNN: conv 25, pool, conv 50, pool, dense, output",
        ),
    ]
}

TORCHVISION_ARCHS = tuple(name for name, spec in ARCHS.items() if spec.torchvision)


def get_spec(arch: str) -> ArchSpec:
    """The registry entry for ``arch``, or a ValueError listing the known ones."""
    try:
        return ARCHS[arch]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(arch), ARCHS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ResNetJaxError(
            f"unknown architecture {arch!r}.{hint} Known architectures: {', '.join(ARCHS)}"
        ) from None


def create_model(arch: str, num_classes: int | None = None, **options) -> nn.Module:
    """Build the registered architecture ``arch``.

    ``num_classes`` defaults to the architecture's own (1000 for the torchvision ones).
    ``options`` override any field of the module, e.g. ``stem="small"``,
    ``in_channels=1``, ``zero_init_residual=True``, ``dtype=jnp.bfloat16``.
    """
    spec = get_spec(arch)
    fields = {f.name for f in dataclasses.fields(spec.module)} - {"parent", "name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(
            f"{arch} has no option(s) {unknown}; its options are {sorted(fields)}"
        )
    config = dict(spec.config)
    if num_classes is not None:
        config["num_classes"] = int(num_classes)
    config.update(options)
    return spec.module(**config)


def input_shape(model: nn.Module, image_size: int | tuple[int, int] | None = None, batch: int = 1):
    """The NHWC shape of a batch for ``model`` (its usual size unless ``image_size``)."""
    if image_size is None:
        image_size = 28 if isinstance(model, DigitCNN) else (
            32 if getattr(model, "stem", "imagenet") == "small" else 224)
    h, w = (image_size, image_size) if np.isscalar(image_size) else image_size
    return (batch, int(h), int(w), model.in_channels)


def init_variables(model: nn.Module, rng: int | jax.Array = 0, image_size=None) -> dict:
    """Fresh ``{'params', 'batch_stats'}`` for ``model``, initialised as torchvision does."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    x = jnp.zeros(input_shape(model, image_size), jnp.float32)
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(rng, x)
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def abstract_variables(model: nn.Module, image_size=None) -> dict:
    """Shapes and dtypes of ``init_variables(model)`` without computing them."""
    return jax.eval_shape(lambda: init_variables(model, 0, image_size))


def model_config(model: nn.Module) -> dict:
    """The module's fields as JSON-ready values (the inverse of ``model_from_config``)."""
    config = {"module": type(model).__name__}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        value = getattr(model, f.name)
        if f.name in ("dtype", "param_dtype"):
            value = None if value is None else jnp.dtype(value).name
        elif isinstance(value, tuple):
            value = list(value)
        config[f.name] = value
    return config


MODULES = {cls.__name__: cls for cls in (ResNet, DigitCNN)}


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a module from ``model_config``'s output."""
    config = dict(config)
    name = config.pop("module", None)
    if name not in MODULES:
        raise ResNetJaxError(f"unknown model module {name!r}; expected one of {sorted(MODULES)}")
    # Other keys (the arch name, class names, training settings) ride along in the file.
    fields = {f.name for f in dataclasses.fields(MODULES[name])} - {"parent", "name"}
    config = {k: v for k, v in config.items() if k in fields}
    for key in ("dtype", "param_dtype"):
        if config.get(key) is not None:
            config[key] = jnp.dtype(config[key])
    for key in ("stage_sizes", "stage_widths"):
        if key in config:
            config[key] = tuple(config[key])
    return MODULES[name](**config)


def count_params(tree) -> int:
    """Total number of elements in a pytree of arrays (e.g. ``variables['params']``)."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def features(model: nn.Module, variables, images, names=None, train: bool = False) -> dict:
    """Named intermediate outputs (torchvision's module names) for ``images``.

    Returns ``{name: array}`` in forward order, for all names or just ``names``.
    """
    logits, state = model.apply(
        variables, images, train=train, mutable=["intermediates"]
        + (["batch_stats"] if train else []),
    )
    out = {tap_name(k): v[0] for k, v in state["intermediates"].items()}
    if names is None:
        return out
    missing = [n for n in names if n not in out]
    if missing:
        raise ResNetJaxError(f"unknown layer name(s) {missing}; valid names: {', '.join(out)}")
    return {n: out[n] for n in names}


def with_new_head(model: nn.Module, variables, num_classes: int, rng: int | jax.Array = 0):
    """Keep the backbone of ``variables`` and start a fresh ``num_classes`` head.

    Returns ``(model, variables)``: the same architecture with ``num_classes`` outputs and
    a newly initialised ``fc`` (torch's default Linear init); every other variable is kept.
    """
    new_model = model.clone(num_classes=int(num_classes))
    fresh = init_variables(new_model, rng)
    params = dict(variables["params"])
    params["fc"] = fresh["params"]["fc"]
    out = dict(variables)
    out["params"] = params
    return new_model, out
