"""resnet-jax: the ResNet family in JAX/Flax.

Train with a jitted optax step, port torchvision weights bit for bit, and explain what a
network learned with ``jax.grad``.

    >>> import resnet_jax
    >>> model = resnet_jax.create_model("resnet18")
    >>> variables = resnet_jax.init_variables(model)
    >>> logits = model.apply(variables, images_nhwc, train=False)

Importing the package loads nothing heavy and changes nothing outside it: jax and flax
load with the first name used from it, so a command line can answer ``--help`` (or a
Ctrl-C) before they do.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODELS = {"ARCHS", "abstract_variables", "count_params", "create_model", "features",
           "init_variables", "model_config", "model_from_config"}
_LAZY = {"save": "checkpoint", "load": "checkpoint", **{name: "models" for name in _MODELS}}
_SUBMODULES = {"port", "data", "train", "explain", "viz", "imagenet", "checkpoint", "cli",
               "models", "ops", "xla_cpu"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__all__ = sorted(_MODELS | {"load", "save"})
