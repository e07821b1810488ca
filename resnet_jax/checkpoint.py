"""Saving and loading a model with its variables: orbax-checkpoint plus the model's config.

A model directory is an orbax composite checkpoint with two items:
``variables`` (``{'params', 'batch_stats'}``, a StandardSave pytree; a model without
BatchNorm has no ``batch_stats``) and ``config`` (JSON: the module's fields from
``model_config``, where known the arch name, and the SHA-256 of the variables).
A training run's checkpoint steps carry the same two items beside their own, so
``load`` reads a model directory, one step of a run, or a run's root (its newest intact
step: a damaged newer one is skipped with a warning that names it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np

from .errors import ResNetJaxError
from .models import abstract_variables, model_config, model_from_config

VARIABLES_ITEM = "variables"
CONFIG_ITEM = "config"
CONFIG_FILE = "metadata"  # the file orbax's JsonSave writes inside an item's folder
CHECKSUM_KEY = "variables_sha256"
COLLECTIONS = ("params", "batch_stats")


class CheckpointError(ResNetJaxError):
    """A directory that is not a readable resnet-jax model checkpoint."""


class Loaded(NamedTuple):
    path: Path  # the checkpoint actually read (a step folder for a run)
    model: nn.Module
    variables: dict
    config: dict


def model_variables(variables) -> dict:
    """The collections a checkpoint stores; empty ones (no BatchNorm: no statistics) left out."""
    return {k: variables[k] for k in COLLECTIONS if k in variables and jax.tree_util.tree_leaves(variables[k])}


def tree_checksum(tree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (host copies), in path order."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_args(model: nn.Module, variables, arch: str | None = None, **extra_config):
    """The orbax ``Composite`` items for a model; training adds its own beside these."""
    import orbax.checkpoint as ocp

    config = model_config(model)
    if arch is not None:
        config["arch"] = arch
    config.update(extra_config)
    variables = model_variables(variables)
    config[CHECKSUM_KEY] = tree_checksum(variables)
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
    placed = False
    try:
        target = staging / "checkpoint"
        try:
            with interrupts_deferred(), quiet_failures(), \
                    ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
                ckptr.save(target, args=ocp.args.Composite(**save_args(model, variables, arch)))
        except Exception as e:
            err = as_os_error(e, directory)
            if err is None or err is e:
                raise
            raise err from e
        if directory.exists():
            if not overwrite:  # another writer got there first
                raise FileExistsError(errno.EEXIST, "was written by another process meanwhile", str(directory))
            os.replace(directory, staging / "previous")
        try:
            os.replace(target, directory)  # fails if a non-empty directory appeared meanwhile
        except BaseException:
            _put_back(staging / "previous", directory)
            raise
        placed = True
    finally:
        # The replaced model goes once the new one is in place; after a failure, a model
        # moved aside and not put back is never deleted.
        if placed or not _holds_files(staging / "previous"):
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _put_back(previous: Path, directory: Path) -> None:
    """After a failed rename into place: the model moved aside returns to ``directory``; if
    it cannot, it stays where it is, and the error says where. An empty folder moved aside
    (a concurrent writer's claim on the name) is nothing to keep."""
    if not _holds_files(previous):
        return
    try:
        os.replace(previous, directory)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}; the previous model is kept in {previous}",
                      str(directory)) from e


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_ITEM).is_dir() and (path / VARIABLES_ITEM).is_dir()


def _looks_like_step(path: Path) -> bool:
    """A checkpoint folder, complete or not (an item may have been deleted)."""
    return any((path / name).exists() for name in
               (CONFIG_ITEM, VARIABLES_ITEM, "_CHECKPOINT_METADATA", "commit_success.txt"))


def _steps(directory: Path) -> list[Path]:
    """Numbered step folders, newest first."""
    return [p for _, p in sorted(((int(p.name), p) for p in directory.iterdir()
                                  if p.name.isdigit() and p.is_dir()), reverse=True)]


def _no_checkpoint(directory: Path) -> CheckpointError:
    return CheckpointError(
        f"{directory} holds no resnet-jax checkpoint: expected '{CONFIG_ITEM}/' and "
        f"'{VARIABLES_ITEM}/' inside it (as written by resnet_jax.save or training), "
        "or numbered step folders that hold them"
    )


def resolve(directory) -> Path:
    """The checkpoint inside ``directory``: itself, or the latest numbered step under it."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory holding a saved model")
    if _is_checkpoint(directory):
        return directory
    for p in _steps(directory):
        if _is_checkpoint(p):
            return p
    raise _no_checkpoint(directory)


def read_json(file: Path, missing: str, damaged: str):
    """The JSON in ``file``, or a one-line error naming it: missing (``missing`` says what
    that means) or not valid JSON (``damaged``)."""
    try:
        return json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); {damaged}") from None


def read_config(path: Path) -> dict:
    """The config item of the checkpoint at ``path``, or a one-line error naming the file."""
    file = Path(path) / CONFIG_ITEM / CONFIG_FILE
    if not (Path(path) / CONFIG_ITEM).is_dir():
        raise CheckpointError(f"{path}: the '{CONFIG_ITEM}/' item is missing; the checkpoint is incomplete")
    config = read_json(file, "the checkpoint's config is incomplete",
                       "the config was damaged or edited")
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a JSON {type(config).__name__}, expected an object")
    return config


def load_config(directory) -> dict:
    """The JSON config saved beside the variables."""
    return read_config(resolve(directory))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _model_from(config: dict, path: Path):
    file = path / CONFIG_ITEM / CONFIG_FILE
    try:
        model = model_from_config(config)
        return model, abstract_variables(model)
    except Exception as e:  # an edited field: unknown module, bad width, wrong type
        raise CheckpointError(f"{file} describes no buildable model ({_first_line(e)}); "
                              "the config was damaged or edited") from None


def _restore_target(path: Path, abstract: dict, config: dict) -> dict:
    """``abstract`` checked against the shapes stored in ``path/variables``, on one device."""
    import orbax.checkpoint as ocp

    item = path / VARIABLES_ITEM
    if not item.is_dir():
        raise CheckpointError(f"{path}: the '{VARIABLES_ITEM}/' item is missing; the checkpoint is incomplete")
    try:
        stored = ocp.StandardCheckpointHandler().metadata(item).tree
    except Exception as e:
        raise CheckpointError(f"cannot read the checkpoint at {path}: {item} is damaged "
                              f"or incomplete ({_first_line(e)})") from None
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    have = {jax.tree_util.keystr(p): tuple(getattr(x, "shape", ()) or ())
            for p, x in jax.tree_util.tree_flatten_with_path(dict(stored))[0]}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        k = diff[0]
        raise CheckpointError(
            f"{item} does not match the model in {path / CONFIG_ITEM / CONFIG_FILE}: {k} is "
            f"{have.get(k, 'absent')} in the file, {want.get(k, 'absent')} in the config's model "
            f"({len(diff)} such array(s)); the config was edited or belongs to another model")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
    # Older saves of models without BatchNorm stored an empty 'batch_stats'.
    return {**{k: {} for k, v in dict(stored).items() if not jax.tree_util.tree_leaves(v)}, **target}


def load_step(path) -> Loaded:
    """Read and verify the checkpoint at ``path`` (not a run root): one-line errors."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    config = read_config(path)
    model, abstract = _model_from(config, path)
    target = _restore_target(path, abstract, config)
    item = path / VARIABLES_ITEM
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            variables = dict(ckptr.restore(item, args=ocp.args.StandardRestore(target)))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"cannot read the checkpoint at {path}: {item} is damaged "
                              f"({_first_line(e)})") from None
    variables = model_variables(variables)
    saved = config.get(CHECKSUM_KEY)
    if saved is not None and tree_checksum(variables) != saved:
        step = f"step {path.name} ({path})" if path.name.isdigit() else str(path)
        raise CheckpointError(
            f"checksum mismatch in {step}: the arrays in '{VARIABLES_ITEM}/' differ from what was "
            "saved (a damaged or edited file)")
    return Loaded(path, model, variables, config)


def load_checkpoint(directory, *, warn=None) -> Loaded:
    """Like ``load``, also giving the step folder read and its config.

    A run root gives its newest intact step; each damaged newer step is reported through
    ``warn`` (default ``warnings.warn``). An explicit checkpoint folder is read as is.
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory holding a saved model")
    if _looks_like_step(directory):
        return load_step(directory)
    steps = _steps(directory)
    if not steps:
        raise _no_checkpoint(directory)
    damaged = []
    for p in steps:
        try:
            loaded = load_step(p)
        except CheckpointError as e:
            damaged.append(str(e))
            continue
        for msg in damaged:
            warn(f"{msg}; using step {p.name}, the newest intact checkpoint of {directory}")
        return loaded
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(damaged))


def load(directory) -> tuple[nn.Module, dict]:
    """Read a saved model: returns ``(model, variables)``, verified against its checksum."""
    loaded = load_checkpoint(directory)
    return loaded.model, loaded.variables


def arch_of(directory) -> str | None:
    """The registered arch name saved with a checkpoint, if any."""
    return load_config(directory).get("arch")


__all__ = ["CheckpointError", "arch_of", "load", "load_checkpoint", "load_config", "resolve",
           "save", "save_args", "tree_checksum"]


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back SIGINT until the block ends, then deliver it: a save is never cut short
    (an interrupted orbax save leaves its event loop closed under running tasks). A second
    SIGINT inside the block interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    old = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received:
            signal.raise_signal(signal.SIGINT)


_ERRNO_TEXTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.ENOENT)


def as_os_error(e: BaseException, path) -> OSError | None:
    """``e`` as an ``OSError`` naming ``path`` when it reports a file-system failure
    (tensorstore and orbax raise ``ValueError`` or their own types with the OS's text)."""
    if isinstance(e, OSError) and e.errno is not None:
        return e if e.filename else OSError(e.errno, e.strerror, str(path))
    text = str(e)
    code = re.search(r"os_error_code='(\d+)'", text)
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))
    for code in _ERRNO_TEXTS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return None


class _DropThreadFailureLogs(logging.Filter):
    """orbax logs each failed write of a save from its thread, with a traceback, before the
    save raises the error that the caller reports."""

    def filter(self, record):
        return "_SignalingThread.run() raised" not in record.getMessage()


class _DropUnretrievedWriteErrors(logging.Filter):
    """After a failed save, orbax's remaining write futures fail with the same error and
    asyncio logs each one when it is collected, possibly at exit: the error was reported."""

    def filter(self, record):
        return not (record.getMessage().startswith("Future exception was never retrieved")
                    and record.exc_info and isinstance(record.exc_info[1], OSError))


_UNRETRIEVED = _DropUnretrievedWriteErrors()


def _drop_closed_loop_reports() -> None:
    """After a failed save, tensorstore's callbacks for its remaining writes find orbax's
    event loop closed and print that through ``sys.excepthook``, possibly after the one
    line that reported the failure: those reports are dropped, all others kept."""
    import sys

    hook = sys.excepthook
    if getattr(hook, "_drops_closed_loop", False):
        return

    def excepthook(kind, value, tb):
        if not (kind is RuntimeError and str(value) == "Event loop is closed"):
            hook(kind, value, tb)

    excepthook._drops_closed_loop = True
    sys.excepthook = excepthook


@contextlib.contextmanager
def quiet_failures():
    """Around a save: orbax's thread failure logs are dropped, and what is printed on file
    descriptor 2 is held, passed on if the block succeeds and dropped if it fails
    (tensorstore's writes that outlive a failed save print "Event loop is closed"
    tracebacks there); the failure itself is raised once, to be reported in one line."""
    import gc
    import sys
    import time

    logger = logging.getLogger("absl")
    quiet = _DropThreadFailureLogs()
    logger.addFilter(quiet)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to hold
        saved = None
    held = tempfile.TemporaryFile()
    if saved is not None:
        os.dup2(held.fileno(), 2)
    ok = False
    try:
        yield
        ok = True
    finally:
        if not ok:
            logging.getLogger("asyncio").addFilter(_UNRETRIEVED)  # once: filters are a set
            _drop_closed_loop_reports()
            # The failed save's pending writes end while stderr is held: until what they
            # print has been quiet for 0.3 s (at most 3 s).
            gc.collect()
            deadline, size = time.monotonic() + 3.0, -1
            while time.monotonic() < deadline and os.fstat(held.fileno()).st_size != size:
                size = os.fstat(held.fileno()).st_size
                time.sleep(0.3)
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        logger.removeFilter(quiet)
        if ok:
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
        held.close()
