"""The rule that maps flax variables to torch state-dict keys, and the layout transposes.

Flax modules are named after torchvision's: ``layer1.0.downsample.0`` is the flax path
``layer1_0/downsample_0``. Parameters and buffers map as

=================================  =====================================  ==============
flax (collection, leaf)            torch                                  layout
=================================  =====================================  ==============
params, conv ``kernel``            ``weight``                             HWIO -> OIHW
params, dense ``kernel``           ``weight``                             (in, out) -> (out, in)
params, ``bias``                   ``bias``
params, BatchNorm ``scale``        ``weight``
batch_stats ``mean`` / ``var``     ``running_mean`` / ``running_var``
batch_stats ``num_batches_tracked``  ``num_batches_tracked``             int32 <-> int64
=================================  =====================================  ==============
"""

from __future__ import annotations

import re

import numpy as np

_INDEXED = re.compile(r"^(.*)_(\d+)$")

_LEAF_TO_TORCH = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "kernel"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("batch_stats", "num_batches_tracked"): "num_batches_tracked",
}


def module_to_torch(name: str) -> str:
    """``layer1_0`` -> ``layer1.0``; names without an index are unchanged."""
    m = _INDEXED.match(name)
    return f"{m.group(1)}.{m.group(2)}" if m else name


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The torch state-dict key of the flax leaf ``variables[collection][path...]``."""
    *modules, leaf = path
    try:
        torch_leaf = _LEAF_TO_TORCH[(collection, leaf)]
    except KeyError:
        raise KeyError(f"no torch equivalent for {collection}/{'/'.join(path)}") from None
    return ".".join([module_to_torch(m) for m in modules] + [torch_leaf])


def flax_to_torch_array(leaf: str, value: np.ndarray) -> np.ndarray:
    """Flax layout to torch layout for one leaf (a view where possible, never a copy of data)."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    if leaf == "num_batches_tracked":
        return value.astype(np.int64)
    return value


def torch_to_flax_array(leaf: str, value: np.ndarray, dtype) -> np.ndarray:
    """Torch layout to flax layout for one leaf, cast to ``dtype``."""
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    elif leaf == "kernel" and value.ndim == 2:
        value = value.T
    return np.ascontiguousarray(value, dtype=dtype)


def flatten(variables) -> list[tuple[str, tuple[str, ...], object]]:
    """``(collection, path, leaf)`` for every leaf, in the tree's own order."""
    out = []

    def walk(collection, prefix, node):
        if isinstance(node, dict) or hasattr(node, "items"):
            for k, v in node.items():
                walk(collection, prefix + (k,), v)
        else:
            out.append((collection, prefix, node))

    for collection in ("params", "batch_stats"):
        if collection in variables:
            walk(collection, (), variables[collection])
    return out


def torch_order(entries):
    """Reorder ``flatten`` output as torch lists a module: each BatchNorm's weight and
    bias directly followed by its running statistics."""
    stats: dict[tuple, list] = {}
    for e in entries:
        if e[0] == "batch_stats":
            stats.setdefault(e[1][:-1], []).append(e)
    out = []
    for e in entries:
        if e[0] != "params":
            continue
        out.append(e)
        if e[1][-1] == "bias" and e[1][:-1] in stats:
            out.extend(stats.pop(e[1][:-1]))
    for rest in stats.values():
        out.extend(rest)
    return out
