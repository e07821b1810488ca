"""resnet_jax.save / load: exact round trip, all-or-nothing writes, clear errors."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.checkpoint import CheckpointError


def _equal(a, b) -> bool:
    leaves = jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)), a, b)
    return all(jax.tree_util.tree_leaves(leaves))


def test_round_trip_with_options(tmp_path):
    model = resnet_jax.create_model("my_resnet", num_classes=3, in_channels=1, stem="small",
                                    dtype=jnp.bfloat16)
    variables = resnet_jax.init_variables(model, 4)
    resnet_jax.save(tmp_path / "m", model, variables, arch="my_resnet")
    loaded_model, loaded = resnet_jax.load(tmp_path / "m")
    assert loaded_model == model
    assert _equal(variables, loaded)
    assert resnet_jax.checkpoint.arch_of(tmp_path / "m") == "my_resnet"


def test_failed_save_leaves_previous_model_intact(tmp_path, monkeypatch):
    model = resnet_jax.create_model("digit_cnn")
    first = resnet_jax.init_variables(model, 0)
    resnet_jax.save(tmp_path / "m", model, first)
    listing = sorted(p.name for p in tmp_path.iterdir())

    import orbax.checkpoint as ocp

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.Checkpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        resnet_jax.save(tmp_path / "m", model, resnet_jax.init_variables(model, 1), overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging left behind
    _, again = resnet_jax.load(tmp_path / "m")
    assert _equal(first, again)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        resnet_jax.save(tmp_path / "m", model, first)
    second = resnet_jax.init_variables(model, 1)
    resnet_jax.save(tmp_path / "m", model, second, overwrite=True)
    assert _equal(second, resnet_jax.load(tmp_path / "m")[1])


def test_unreadable_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        resnet_jax.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no resnet-jax checkpoint"):
        resnet_jax.load(tmp_path / "empty")

    model = resnet_jax.create_model("digit_cnn")
    resnet_jax.save(tmp_path / "m", model, resnet_jax.init_variables(model))
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "m", damaged)
    for f in (damaged / "variables").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[:16])
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        resnet_jax.load(damaged)
