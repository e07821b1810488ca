"""Saving and loading a model with its variables: orbax-checkpoint plus the model's config.

A model directory is an orbax composite checkpoint with two items:
``variables`` (``{'params', 'batch_stats'}``, a StandardSave pytree) and ``config``
(JSON: the module's fields from ``model_config`` and, where known, the arch name).
A training run's checkpoint steps carry the same two items beside their own, so
``load`` reads a model directory, one step of a run, or a run's root (its latest step).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import flax.linen as nn
import jax

from .errors import ResNetJaxError
from .models import abstract_variables, model_config, model_from_config

VARIABLES_ITEM = "variables"
CONFIG_ITEM = "config"


class CheckpointError(ResNetJaxError):
    """A directory that is not a readable resnet-jax model checkpoint."""


def save_args(model: nn.Module, variables, arch: str | None = None, **extra_config):
    """The orbax ``Composite`` items for a model; training adds its own beside these."""
    import orbax.checkpoint as ocp

    config = model_config(model)
    if arch is not None:
        config["arch"] = arch
    config.update(extra_config)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    return {
        VARIABLES_ITEM: ocp.args.StandardSave(variables),
        CONFIG_ITEM: ocp.args.JsonSave(config),
    }


def save(directory, model: nn.Module, variables, *, arch: str | None = None,
         overwrite: bool = False) -> Path:
    """Write ``model`` and ``variables`` to ``directory``, all or nothing.

    The checkpoint is written into a temporary sibling and renamed into place, so an
    interrupted save leaves any earlier content of ``directory`` as it was.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        target = staging / "checkpoint"
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(target, args=ocp.args.Composite(**save_args(model, variables, arch)))
        if directory.exists():
            old = staging / "previous"
            os.replace(directory, old)
        os.replace(target, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_ITEM).is_dir() and (path / VARIABLES_ITEM).is_dir()


def resolve(directory) -> Path:
    """The checkpoint inside ``directory``: itself, or the latest numbered step under it."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory holding a saved model")
    if _is_checkpoint(directory):
        return directory
    steps = sorted(
        (int(p.name), p) for p in directory.iterdir()
        if p.name.isdigit() and _is_checkpoint(p)
    )
    if steps:
        return steps[-1][1]
    raise CheckpointError(
        f"{directory} holds no resnet-jax checkpoint: expected '{CONFIG_ITEM}/' and "
        f"'{VARIABLES_ITEM}/' inside it (as written by resnet_jax.save or training), "
        "or numbered step folders that hold them"
    )


def _restore_config(ckptr, path: Path) -> dict:
    import orbax.checkpoint as ocp

    out = ckptr.restore(path, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    return dict(out[CONFIG_ITEM])


def load_config(directory) -> dict:
    """The JSON config saved beside the variables."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        return _restore_config(ckptr, resolve(directory))


def load(directory) -> tuple[nn.Module, dict]:
    """Read a saved model: returns ``(model, variables)``."""
    import orbax.checkpoint as ocp

    path = resolve(directory)
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            model = model_from_config(_restore_config(ckptr, path))
            # Restore onto one local device whatever the sharding at save time (a run on
            # several devices saves sharded arrays; orbax would otherwise want that topology).
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree_util.tree_map(
                lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                abstract_variables(model))
            out = ckptr.restore(path, args=ocp.args.Composite(
                **{VARIABLES_ITEM: ocp.args.StandardRestore(target)}))
    except CheckpointError:
        raise
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"cannot read the checkpoint at {path}: {e}") from e
    return model, dict(out[VARIABLES_ITEM])


def arch_of(directory) -> str | None:
    """The registered arch name saved with a checkpoint, if any."""
    return load_config(directory).get("arch")


__all__ = ["CheckpointError", "arch_of", "load", "load_config", "resolve", "save", "save_args"]
