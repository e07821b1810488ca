"""A model's module tree with each output shape and parameter count (``resnet-jax summary``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .models import abstract_variables, count_params, input_shape
from .models.layers import TAP_SUFFIX, tap_name
from .port.keys import module_to_torch

_BLOCK = re.compile(r"^(layer\d+)_(\d+)$")


@dataclass
class Row:
    name: str  # torchvision's module name
    depth: int
    shape: tuple | None
    params: int


def _shapes_in_order(node):
    """The intermediates tree with arrays replaced by shapes, keeping dict order
    (``jax.tree_util`` would sort the keys, and the order here is the forward order)."""
    if isinstance(node, dict):
        return {k: _shapes_in_order(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return tuple(_shapes_in_order(v) for v in node)
    return tuple(node.shape)


def summarize(model, image_size=None, batch: int = 1) -> tuple[list[Row], dict]:
    """Rows of the module tree in forward order, and the totals."""
    variables = abstract_variables(model, image_size)
    params = variables["params"]
    shape = input_shape(model, image_size, batch)
    traced = []

    def trace(v, x):
        _, state = model.apply(v, x, train=False, capture_intermediates=True,
                               mutable=["intermediates"])
        traced.append(_shapes_in_order(state["intermediates"]))
        return state

    jax.eval_shape(trace, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    tree = traced[0]

    def module_rows(key, node, depth, prefix, params_here):
        name = prefix + module_to_torch(key)
        sub = params_here.get(key, {})
        rows = [Row(name, depth, node.get("__call__", (None,))[0], count_params(sub))]
        for child, child_node in node.items():
            if child != "__call__":
                rows += module_rows(child, child_node, depth + 1, name + ".", sub)
        return rows

    rows: list[Row] = []
    for key, node in tree.items():
        if key == "__call__":
            continue
        if key.endswith(TAP_SUFFIX):
            name = tap_name(key)
            if name.replace(".", "_") in tree or re.fullmatch(r"layer\d+", name):
                continue  # shown with its module, or as a stage header
            rows.append(Row(name, 0, node[0], 0))
            continue
        block = _BLOCK.match(key)
        if block and block.group(2) == "0":
            stage = block.group(1)
            stage_params = sum(count_params(v) for k, v in params.items()
                               if _BLOCK.match(k) and k.startswith(stage + "_"))
            rows.append(Row(stage, 0, tree[stage + TAP_SUFFIX][0], stage_params))
        rows += module_rows(key, node, 1 if block else 0, "", params)
    totals = {
        "params": count_params(params),
        "batch_stats": count_params(variables.get("batch_stats", {})),
        "input": shape,
        "output": tree["__call__"][0],
    }
    return rows, totals


def format_summary(title: str, rows: list[Row], totals: dict) -> str:
    width = max(len("  " * r.depth + r.name) for r in rows) + 2
    rule = "-" * (width + 36)
    lines = [f"{title}  input {'x'.join(map(str, totals['input']))} (NHWC)", "",
             f"{'layer':<{width}}{'output shape':<22}{'params':>14}", rule]
    for r in rows:
        shape = "x".join(map(str, r.shape)) if r.shape else ""
        params = f"{r.params:,}" if r.params else "-"
        lines.append(f"{'  ' * r.depth + r.name:<{width}}{shape:<22}{params:>14}")
    lines += [
        rule,
        f"Total params: {totals['params']:,}",
        f"BatchNorm statistics (not trained): {totals['batch_stats']:,}",
        f"Parameter size: {totals['params'] * 4 / 2**20:.1f} MiB (float32)",
    ]
    return "\n".join(lines)
