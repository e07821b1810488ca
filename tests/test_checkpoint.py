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


def test_a_failed_rename_into_place_puts_the_previous_model_back(tmp_path, monkeypatch):
    """The new model is written, the previous one moved aside, then renaming the new one
    into place fails: the previous model is where it was, and nothing is left behind."""
    import os

    model = resnet_jax.create_model("digit_cnn")
    first = resnet_jax.init_variables(model, 0)
    resnet_jax.save(tmp_path / "m", model, first)
    listing = sorted(p.name for p in tmp_path.iterdir())
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the first moves the previous model aside
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        resnet_jax.save(tmp_path / "m", model, resnet_jax.init_variables(model, 1), overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 3  # aside, the failed rename, back
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert _equal(first, resnet_jax.load(tmp_path / "m")[1])


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


def _flip_a_byte_of_the_largest_array_file(checkpoint):
    files = [f for f in (checkpoint / "variables").rglob("*") if f.is_file()]
    biggest = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x40
    biggest.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_saved_arrays_is_detected(tmp_path):
    model = resnet_jax.create_model("digit_cnn")
    resnet_jax.save(tmp_path / "m", model, resnet_jax.init_variables(model, 0))
    _flip_a_byte_of_the_largest_array_file(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"checksum mismatch in .*/m: the arrays in 'variables/' differ"):
        resnet_jax.load(tmp_path / "m")


def test_a_model_without_batchnorm_round_trips(tmp_path):
    model = resnet_jax.create_model("digit_cnn", num_classes=4)
    variables = resnet_jax.init_variables(model, 3)
    assert "batch_stats" not in variables or not jax.tree_util.tree_leaves(variables["batch_stats"])
    resnet_jax.save(tmp_path / "m", model, {**variables, "batch_stats": {}})
    loaded_model, loaded = resnet_jax.load(tmp_path / "m")
    assert loaded_model == model and _equal(variables["params"], loaded["params"])


@pytest.mark.parametrize("damage,message", [
    ("json", r"config/metadata is not valid JSON \(.* line 1 column"),
    ("delete", r"the 'variables/' item is missing"),
    ("widths", r"variables does not match the model in .*config/metadata: \['(params|batch_stats)'\].* is \(.*\) in "
               r"the file, \(.*\) in the config's model"),
])
def test_damaged_checkpoints_give_one_line_naming_the_file(tmp_path, damage, message):
    import json

    model = resnet_jax.create_model("my_resnet", num_classes=3, stem="small", stage_widths=(8, 16))
    resnet_jax.save(tmp_path / "m", model, resnet_jax.init_variables(model, 0, 8), arch="my_resnet")
    config = tmp_path / "m" / "config" / "metadata"
    if damage == "json":
        config.write_text(config.read_text()[:-7])
    elif damage == "delete":
        shutil.rmtree(tmp_path / "m" / "variables")
    else:
        edited = json.loads(config.read_text())
        edited["stage_widths"] = [16, 16]
        config.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=message) as info:
        resnet_jax.load(tmp_path / "m")
    assert "\n" not in str(info.value) and str(tmp_path / "m") in str(info.value)
