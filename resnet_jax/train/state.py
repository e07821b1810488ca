"""The train state and the optimizer.

``TrainState`` is a pytree: the step, ``params``, ``batch_stats`` (BatchNorm running
statistics, updated by every training step) and the optax state; the model's ``apply``
and the optax transformation ride along as static fields.

``make_optimizer`` builds SGD (momentum, optionally Nesterov, torch-style coupled weight
decay) or AdamW (decoupled weight decay), both on a linear warm-up then cosine schedule,
with weight decay only on kernels (parameters with more than one axis: never BatchNorm
scales and biases nor dense biases), optional clipping by global norm, and optionally
every parameter outside the head frozen by ``optax.partition`` with ``set_to_zero``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ..errors import ResNetJaxError
from ..xla_cpu import one_shot_jit

HEAD = "fc"  # the classifier's name in every registered model


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, apply_fn, variables: dict, tx) -> TrainState:
        params = variables["params"]
        # One jitted program rather than an eager op per parameter: faster, and kept by
        # the persistent compilation cache. It computes zeros and counters only, so it
        # compiles with xla_cpu.one_shot_jit's quick options.
        return cls(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=one_shot_jit(tx.init)(params),
            apply_fn=apply_fn, tx=tx,
        )

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_factor: float = 0.0
    clip_norm: float | None = None
    freeze_backbone: bool = False


def schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine to ``lr * end_lr_factor``."""
    total = max(int(cfg.total_steps), 1)
    warmup = min(max(int(cfg.warmup_steps), 0), total - 1)
    if warmup == 0:
        return optax.cosine_decay_schedule(cfg.lr, total, alpha=cfg.end_lr_factor)
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup, total, end_value=cfg.lr * cfg.end_lr_factor
    )


def decay_mask(params):
    """True for the parameters that take weight decay: kernels, not BatchNorm nor biases."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def trainable_labels(params, freeze_backbone: bool):
    """``'train'`` or ``'frozen'`` per parameter: with a frozen backbone only the head trains."""
    if not freeze_backbone:
        return jax.tree_util.tree_map(lambda _: "train", params)
    if HEAD not in params:
        raise ResNetJaxError(
            f"cannot freeze the backbone: the model has no head named {HEAD!r} "
            f"(its top-level parameters are {sorted(params)})"
        )
    return {k: jax.tree_util.tree_map(lambda _, k=k: "train" if k == HEAD else "frozen", v)
            for k, v in params.items()}


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    lr = schedule(cfg)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask))
    else:
        raise ResNetJaxError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adamw'")
    tx = optax.chain(*parts)
    if cfg.freeze_backbone:
        tx = optax.partition(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda params: trainable_labels(params, True),
        )
    return tx
