"""Data parallelism with ``jax.sharding``: one mesh axis ``data`` over every device.

Parameters, BatchNorm statistics and optimizer state are replicated; each batch is
split along its first axis. Under ``jit`` XLA then computes means over the global
batch, BatchNorm's included, with no ``axis_name``. Across hosts each process supplies
its slice of the global batch and ``jax.make_array_from_process_local_data`` joins them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..errors import ResNetJaxError

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-host run, from arguments or ``RESNET_JAX_COORDINATOR``,
    ``RESNET_JAX_NUM_PROCESSES`` and ``RESNET_JAX_PROCESS_ID``. Returns whether it did.
    """
    coordinator = coordinator or os.environ.get("RESNET_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("RESNET_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["RESNET_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("RESNET_JAX_PROCESS_ID"):
        process_id = int(os.environ["RESNET_JAX_PROCESS_ID"])
    if not coordinator:
        if num_processes not in (None, 1):
            raise ResNetJaxError(
                f"{num_processes} processes were asked for but no coordinator address; "
                "pass --coordinator HOST:PORT (or set RESNET_JAX_COORDINATOR)"
            )
        return False
    if num_processes is None or process_id is None:
        raise ResNetJaxError(
            "a multi-host run needs --num-processes and --process-id with --coordinator"
        )
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ResNetJaxError(
            f"batch size {global_batch} does not split evenly over {n} devices; "
            f"use a multiple of {n}, e.g. {max(n, global_batch // n * n)}"
        )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's slice of a global batch, as global arrays split over ``data``."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))
