"""A model's module tree with each output shape and parameter count (``resnet-jax summary``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .models import abstract_variables, count_params, input_shape
from .models.registry import tapped_outputs
from .port.keys import module_to_torch

_BLOCK = re.compile(r"^(layer\d+)_(\d+)$")


@dataclass
class Row:
    name: str  # torchvision's module name
    depth: int
    shape: tuple | None
    params: int


def _module_tree(outputs: dict) -> dict:
    """The submodule outputs of ``tapped_outputs(..., modules=True)`` as a tree of
    ``{child: node}`` dicts, each node's own output shape under ``"__call__"``."""
    tree: dict = {}
    for path, value in outputs.items():
        if path.startswith("/"):
            node = tree
            for key in path[1:].split("/"):
                node = node.setdefault(key, {})
            node["__call__"] = tuple(value.shape)
    return tree


def _stage_of(key: str) -> str | None:
    """The stage (``layer1``) whose header goes before module ``key`` (its first block)."""
    block = _BLOCK.match(key)
    return block.group(1) if block and block.group(2) == "0" else None


def summarize(model, image_size=None, batch: int = 1) -> tuple[list[Row], dict]:
    """Rows of the module tree in forward order, and the totals."""
    variables = abstract_variables(model, image_size)
    params = variables["params"]
    shape = input_shape(model, image_size, batch)
    order: list[str] = []

    def trace(v, x):
        logits, outputs = tapped_outputs(model, v, x, modules=True)
        order.extend(outputs)
        return logits, outputs

    logits, outputs = jax.eval_shape(trace, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    outputs = {k: outputs[k] for k in order}  # eval_shape returns the keys sorted
    tree = _module_tree(outputs)

    def module_rows(key, node, depth, prefix, params_here):
        name = prefix + module_to_torch(key)
        sub = params_here.get(key, {})
        rows = [Row(name, depth, node.get("__call__"), count_params(sub))]
        for child, child_node in node.items():
            if child != "__call__":
                rows += module_rows(child, child_node, depth + 1, name + ".", sub)
        return rows

    rows: list[Row] = []
    for key in order:
        if not key.startswith("/"):  # a tap not shown with its module or as a stage header
            if key.replace(".", "_") not in tree and not re.fullmatch(r"layer\d+", key):
                rows.append(Row(key, 0, tuple(outputs[key].shape), 0))
            continue
        if key.count("/") != 1:
            continue  # listed under its top-level module
        key = key[1:]
        stage = _stage_of(key)
        if stage:
            stage_params = sum(count_params(v) for k, v in params.items()
                               if _BLOCK.match(k) and k.startswith(stage + "_"))
            rows.append(Row(stage, 0, tuple(outputs[stage].shape), stage_params))
        rows += module_rows(key, tree[key], 1 if _BLOCK.match(key) else 0, "", params)
    totals = {
        "params": count_params(params),
        "batch_stats": count_params(variables.get("batch_stats", {})),
        "input": shape,
        "output": tuple(logits.shape),
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
