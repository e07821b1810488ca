"""resnet-jax: the ResNet family in JAX/Flax.

Train with a jitted optax step, port torchvision weights bit for bit, and explain what a
network learned with ``jax.grad``.

    >>> import resnet_jax
    >>> model = resnet_jax.create_model("resnet18")
    >>> variables = resnet_jax.init_variables(model)
    >>> logits = model.apply(variables, images_nhwc, train=False)
"""

from __future__ import annotations

import gc
import importlib

# Importing jax and flax leaves ~110k tracked objects, all kept, and runs ~260 cyclic
# collections over them. The collector is off while they load; then they are moved to
# the oldest generation without being traversed (freeze, then unfreeze: skipped when the
# importer has frozen objects of its own), and the collector is restored as the importer
# had it. Left in the youngest generation, the first collection after the import
# traversed all of them (68-76 ms; benchmarks/NOTES.md, 12a and 13a). The one-command
# entry point ``resnet_jax.cli.run`` then freezes them for good.
_gc_was_enabled = gc.isenabled()
gc.disable()
try:
    from .models import (
        ARCHS,
        abstract_variables,
        count_params,
        create_model,
        features,
        init_variables,
        model_config,
        model_from_config,
    )
finally:
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
    if _gc_was_enabled:
        gc.enable()
    del _gc_was_enabled

__version__ = "0.1.0"

_LAZY = {"save": "checkpoint", "load": "checkpoint"}
_SUBMODULES = {"port", "data", "train", "explain", "viz", "imagenet", "checkpoint", "cli"}


def __getattr__(name):
    # Heavy submodules (orbax, optax, torch) load on first use, not at import.
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")


__all__ = [
    "ARCHS", "abstract_variables", "count_params", "create_model", "features",
    "init_variables", "load", "model_config", "model_from_config", "save",
]
