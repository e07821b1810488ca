"""The jitted steps: pure functions of (state, batch).

``train_step(state, batch) -> (state, metrics)``: forward in train mode (BatchNorm uses
the batch's statistics and updates its running ones), cross-entropy with label smoothing,
gradients, one optax update. ``eval_step(state, batch) -> metrics``: eval mode, sums
over the rows whose ``mask`` is 1, and the predictions.

Batches hold uint8 NHWC images; normalisation ``(x / 255 - mean) / std`` happens here,
on the device, so the host sends a quarter of the bytes. When ``state.apply_fn`` is a
model's ``apply``, both steps run ``resnet_jax.ops.cpu_fast(model)``: on the CPU, the ops
whose gradients (and stem pool) XLA:CPU compiles well; elsewhere the model as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .. import ops
from .state import TrainState


def cpu_fast_apply(apply_fn):
    """``ops.cpu_fast(model).apply`` for ``apply_fn = model.apply``; any other function
    unchanged."""
    model = getattr(apply_fn, "__self__", None)
    if isinstance(model, nn.Module) and getattr(apply_fn, "__name__", "") == "apply":
        return ops.cpu_fast(model).apply
    return apply_fn


def normalize(images, mean: Sequence[float], std: Sequence[float]):
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    """Per-example cross-entropy against one-hot labels smoothed by ``label_smoothing``."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_correct(logits, labels, k: int):
    """1.0 where ``labels`` is among the ``k`` largest logits (ties count against).

    A row with any non-finite logit counts as wrong: every comparison with NaN is false,
    so a NaN row would otherwise rank its label first."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    return ((rank < k) & finite).astype(jnp.float32)


def make_train_step(mean, std, num_classes: int, label_smoothing: float = 0.0,
                    lr_schedule=None):
    """The un-jitted ``train_step`` for a data set's normalisation and class count.

    ``lr_schedule`` (the optimizer's schedule) only adds the step's ``lr`` to the metrics.
    """

    def train_step(state: TrainState, batch):
        x = normalize(batch["image"], mean, std)
        labels = batch["label"]
        apply_fn = cpu_fast_apply(state.apply_fn)

        def loss_fn(params):
            logits, new_vars = apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, x,
                train=True, mutable=["batch_stats"],
            )
            loss = jnp.mean(cross_entropy(logits, labels, num_classes, label_smoothing))
            return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logits = logits.astype(jnp.float32)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(topk_correct(logits, labels, 1)),
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        if num_classes > 5:
            metrics["top5"] = jnp.mean(topk_correct(logits, labels, 5))
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def make_eval_step(mean, std, num_classes: int):
    """The un-jitted ``eval_step``: sums of loss and hits over unmasked rows, the number of
    rows with a non-finite logit, predictions."""

    def eval_step(state: TrainState, batch):
        x = normalize(batch["image"], mean, std)
        logits = cpu_fast_apply(state.apply_fn)(
            {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
        ).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"]
        out = {
            "loss_sum": jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
            "correct": jnp.sum(topk_correct(logits, labels, 1) * mask),
            "count": jnp.sum(mask),
            "nonfinite": jnp.sum(jnp.any(~jnp.isfinite(logits), axis=-1) * mask),
            "prediction": jnp.argmax(logits, axis=-1),
        }
        if num_classes > 5:
            out["correct5"] = jnp.sum(topk_correct(logits, labels, 5) * mask)
        return out

    return eval_step
