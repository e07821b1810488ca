"""Training: the train state, the jitted steps, the loop, checkpoints, sharding and logs.

    >>> from resnet_jax.train import TrainConfig, train
    >>> summary = train(TrainConfig(dataset="digits"))
    >>> summary["test_accuracy"], summary["checkpoint"]

The pieces stand alone: ``make_train_step`` / ``make_eval_step`` give the pure step
functions, ``make_optimizer`` the optax chain, ``TrainState`` the state pytree.
Names load on first use, so ``resnet_jax.train.cli`` stays cheap to import.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "TrainConfig": "config", "TrainingDiverged": "loop", "train": "loop",
    "EvalResult": "evaluation", "evaluate": "evaluation", "evaluate_checkpoint": "evaluation",
    "OptimizerConfig": "state", "TrainState": "state", "decay_mask": "state",
    "make_optimizer": "state", "schedule": "state", "trainable_labels": "state",
    "cross_entropy": "step", "make_eval_step": "step", "make_train_step": "step",
    "normalize": "step", "topk_correct": "step",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'resnet_jax.train' has no attribute {name!r}")


__all__ = sorted(_WHERE)
