"""The architecture registry: each architecture is named once, here.

The model factory, the porter's arch inference, the CLI and the tests all read ``ARCHS``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError
from ..xla_cpu import one_shot_jit
from .digits import DigitCNN
from .layers import TAP_SUFFIX, deferred_host_draws, tap_key, tap_name
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
    sizes, widths = config.get("stage_sizes"), config.get("stage_widths")
    if sizes is not None and widths is not None and len(sizes) != len(widths):
        raise TypeError(
            f"{arch} has {len(sizes)} stages (stage_sizes {tuple(sizes)}) but "
            f"{len(widths)} stage widths {tuple(widths)} were given; give one width per stage"
        )
    return spec.module(**config)


def input_shape(model: nn.Module, image_size: int | tuple[int, int] | None = None, batch: int = 1):
    """The NHWC shape of a batch for ``model`` (its usual size unless ``image_size``)."""
    if image_size is None:
        image_size = 28 if isinstance(model, DigitCNN) else (
            32 if getattr(model, "stem", "imagenet") == "small" else 224)
    h, w = (image_size, image_size) if np.isscalar(image_size) else image_size
    return (batch, int(h), int(w), model.in_channels)


@functools.lru_cache(maxsize=32)
def _callback_init(model: nn.Module, shape: tuple):
    def init(rng):
        variables = model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
        return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

    return jax.jit(init)


@functools.lru_cache(maxsize=32)
def _compiled_init(model: nn.Module, shape: tuple):
    """The jitted init and, filled when it is traced, where its host draws go.

    The program returns the variables with zeros where a host initialiser stands and, for
    each of those, its key; ``init_variables`` then draws them with numpy. With no host
    callback inside, the program is one the persistent compilation cache keeps. It computes
    keys and constants only, so it compiles with ``xla_cpu.one_shot_jit``'s quick options.
    """
    draws: dict = {}  # tracing fills it: {leaf index: HostDraw}

    def init(rng):
        with deferred_host_draws() as pending:
            variables = model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        by_id = {id(p): (data, host) for p, data, host in pending}
        leaves = jax.tree_util.tree_leaves(variables)
        draws.clear()
        keys = {}
        for i, leaf in enumerate(leaves):
            if id(leaf) in by_id:
                keys[i], draws[i] = by_id[id(leaf)]
        if len(draws) != len(pending):  # pragma: no cover - a placeholder was transformed
            raise RuntimeError(f"{len(pending) - len(draws)} deferred parameter draws of "
                               f"{type(model).__name__} did not reach its variables")
        return variables, keys

    return one_shot_jit(init), draws


def init_variables(model: nn.Module, rng: int | jax.Array = 0, image_size=None) -> dict:
    """Fresh ``{'params', 'batch_stats'}`` for ``model``, initialised as torchvision does.

    Parameter shapes do not depend on the image size, so by default the forward pass that
    creates them runs on a single pixel. The compiled initialiser is kept per model; it
    derives every parameter's key, and numpy draws the numbers from those keys.
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    shape = input_shape(model, (1, 1) if _any_size(model) else image_size)
    if isinstance(rng, jax.core.Tracer):
        # Called under a transformation (jit, eval_shape): the key has no value yet, so
        # the draws stay in the program, as host callbacks.
        return _callback_init(model, shape)(rng)
    init, draws = _compiled_init(model, shape)
    variables, keys = init(rng)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.device_get(keys)

    def draw(i):
        value, like = draws[i](keys[i]), leaves[i]
        # Placed as the program's own output was: committed only if it was (an uncommitted
        # array can still go to a mesh of several hosts).
        return i, jax.device_put(value, like.sharding if like.committed else None)

    # numpy's generators release the GIL while they fill an array: draw on every core.
    with ThreadPoolExecutor(max_workers=min(len(draws), os.cpu_count() or 1) or 1) as pool:
        for i, value in pool.map(draw, sorted(draws, key=lambda i: -leaves[i].size)):
            leaves[i] = value
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _any_size(model: nn.Module) -> bool:
    """Whether the model takes images of any size (global pooling before the head)."""
    return isinstance(model, ResNet)


def abstract_variables(model: nn.Module, image_size=None) -> dict:
    """Shapes and dtypes of ``init_variables(model)`` without computing them."""
    return jax.eval_shape(lambda rng: init_variables(model, rng, image_size), jax.random.key(0))


# Fields that choose how a model computes (its ops), not what it is: not saved with it.
OP_FIELDS = ("conv", "pool", "act")


def model_config(model: nn.Module) -> dict:
    """The module's fields as JSON-ready values (the inverse of ``model_from_config``),
    without the op fields (``OP_FIELDS``), which are not part of a saved model."""
    config = {"module": type(model).__name__}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name", *OP_FIELDS):
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


def tapped_outputs(model: nn.Module, variables, x, train: bool = False,
                   perturbations: Mapping[str, Any] | None = None, *, modules: bool = False):
    """One forward pass of ``model`` that also returns its named (tapped) outputs.

    Returns ``(logits, outputs)``: ``outputs`` is ``{name: array}`` in forward order, the
    names torchvision's (``conv1``, ``layer1.0``, ..., ``fc``). ``perturbations``
    (``{name: array}``) are added to those outputs, so ``jax.grad`` with respect to a zero
    perturbation is the gradient with respect to the output. ``train`` runs BatchNorm on
    the batch's statistics (the updated running ones are dropped). With ``modules`` the
    output of every submodule call is in ``outputs`` too, keyed by its flax path
    (``"/layer1_0/conv1"``: names of outputs never start with ``/``), each module before
    the modules it calls.
    Call it inside ``jax.jit`` or ``jax.eval_shape`` as any forward pass; a jitted
    function that returns the dict returns its keys sorted.
    """
    v = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    if perturbations:
        v["perturbations"] = _full_perturbations(model, x, perturbations)
    mutable = ["intermediates"] + (["batch_stats"] if train else [])
    logits, state = model.apply(v, x, train=train, mutable=mutable,
                                capture_intermediates=modules)
    return logits, dict(_flatten_outputs(state["intermediates"], modules))


def _flatten_outputs(tree, modules: bool, path: str = ""):
    """(key, array) pairs of flax's ``intermediates`` tree in forward order: the taps of
    the top level by name and, if ``modules``, each submodule's ``__call__`` by path."""
    for key, value in tree.items():
        if key.endswith(TAP_SUFFIX):
            if not path:
                yield tap_name(key), value[0]
        elif modules and isinstance(value, Mapping):
            if "__call__" in value:
                yield f"{path}/{key}", value["__call__"][0]
            yield from _flatten_outputs(value, modules, f"{path}/{key}")


def _full_perturbations(model, x, perturbations) -> dict:
    """The ``perturbations`` collection: the given ones, zeros for every other tap (flax
    refuses a partial collection; XLA folds x + 0 away)."""
    shapes = _tap_shapes(model, tuple(x.shape), jnp.dtype(x.dtype).name)
    unknown = [n for n in perturbations if n not in shapes]
    if unknown:
        raise ResNetJaxError(
            f"unknown layer name(s) {unknown}; valid names: {', '.join(shapes)}")
    full = {tap_key(n): jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}
    full.update({tap_key(n): p for n, p in perturbations.items()})
    return full


@functools.lru_cache(maxsize=64)
def _tap_shapes(model: nn.Module, shape: tuple, dtype: str) -> dict:
    """``{name: ShapeDtypeStruct}`` of the taps for an input of ``shape``, forward order."""
    order = []

    def trace(x):
        variables = model.init(jax.random.key(0), x, train=False)
        _, outputs = tapped_outputs(model, variables, x)
        order.extend(outputs)
        return outputs

    out = jax.eval_shape(trace, jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)))
    return {n: out[n] for n in order}


def features(model: nn.Module, variables, images, names=None, train: bool = False) -> dict:
    """Named intermediate outputs (torchvision's module names) for ``images``.

    Returns ``{name: array}`` in forward order, for all names or just ``names``.
    """
    valid = layer_names(model, np.shape(images))
    names = tuple(valid) if names is None else tuple(names)
    missing = [n for n in names if n not in valid]
    if missing:
        raise ResNetJaxError(
            f"unknown layer name(s) {missing}; valid names: {', '.join(valid)}")
    out = _compiled_features(model, names, train)(variables, images)
    return {n: out[n] for n in names}  # jit returns the keys sorted


@functools.lru_cache(maxsize=64)
def _compiled_features(model: nn.Module, names: tuple, train: bool):
    def run(variables, images):
        outputs = tapped_outputs(model, variables, images, train=train)[1]
        return {n: outputs[n] for n in names}

    return jax.jit(run)


def layer_names(model: nn.Module, input_shape_nhwc=None) -> tuple[str, ...]:
    """The names of ``model``'s intermediate outputs, in forward order."""
    shape = tuple(input_shape_nhwc) if input_shape_nhwc is not None else input_shape(model)
    return tuple(_tap_shapes(model, (1,) + shape[1:], "float32"))


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
