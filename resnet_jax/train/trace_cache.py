"""Traced train steps kept across processes (``jax.export``), beside XLA's compilation cache.

XLA's persistent compilation cache (``resnet_jax.cli.enable_compilation_cache``) spares a
second process the compilation of its programs, but not the tracing that comes first:
flax traces a ResNet-50 train step through its modules for ~2 s at every start. This
module keeps the traced step itself, serialised by ``jax.export``, so that a second
``python train.py`` with the same settings skips the tracing too; its compiled program
then comes from the compilation cache as before.

A traced program can only be reused where it is the same program, so the key covers
everything the trace depends on: the source of this package, the versions of jax, jaxlib,
flax and optax, the backend and device, the jax settings that change tracing, the model
(its full ``repr``), the optimizer settings, the data's normalisation and class count,
the compiler options, and the shapes, dtypes and tree structure of the state and the
batch. Anything that does not fit (several devices, a tree structure that names an
object by address) falls back to plain ``jax.jit``. ``RESNET_JAX_TRACE_CACHE=0`` turns the
cache off; an unreadable entry is ignored and written again.

A fresh run's initial variables are kept the same way (``initial_variables``), so that a
second start does not trace flax's init either.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import threading
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds changes
_directory: Path | None = None


def enable(directory) -> None:
    """Keep traced steps under ``directory`` (``None``: stop)."""
    global _directory
    _directory = None if directory is None else Path(directory)


def directory() -> Path | None:
    """Where traced steps are kept; None when the cache is off or cannot serialise."""
    if os.environ.get("RESNET_JAX_TRACE_CACHE", "1").lower() in ("0", "off", "false", "no"):
        return None
    return _directory if _directory is not None and _can_serialise() else None


@functools.cache
def _can_serialise() -> bool:
    return importlib.util.find_spec("flatbuffers") is not None


@functools.cache
def _environment_digest() -> str:
    """The package's own source and the versions of the libraries that trace the step."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            h.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name}=?".encode())
    return h.hexdigest()


def _aval_text(tree) -> str:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    avals = ",".join(f"{x.dtype}{list(x.shape)}{'w' if getattr(x, 'weak_type', False) else ''}"
                     for x in (jax.typeof(leaf) for leaf in leaves))
    return f"{treedef}|{avals}"


def _key(*lines: str) -> str | None:
    """A digest of ``lines`` with the environment (source, versions, backend, jax
    settings), or None where a line names an object by address (not a stable key)."""
    text = "\n".join([
        f"format={FORMAT}", _environment_digest(),
        f"backend={jax.default_backend()}",
        f"device={jax.devices()[0].device_kind}",
        *(f"{flag}={getattr(jax.config, flag)}" for flag in (
            "jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
            "jax_default_prng_impl")),
        *lines,
    ])
    if " at 0x" in text:
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def step_key(parts: dict, state, batch) -> str | None:
    """The cache key of a train step, or None where the step must not be cached."""
    trees = (state.step, state.params, state.batch_stats, state.opt_state)
    return _key(*(f"{k}={parts[k]!r}" for k in sorted(parts)),
                "state=" + _aval_text(trees), "batch=" + _aval_text(batch))


def _write(path: Path, data: bytes, what: str) -> None:
    """Write an entry atomically; a read-only cache folder costs only the next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not keep the %s in %s: %s", what, path.parent, e)


_pending: list[threading.Thread] = []


def _write_soon(path: Path, make_data, what: str) -> None:
    """``_write(path, make_data(), what)`` on a thread, so that a start does not wait for
    it (serialising ResNet-50's variables and writing them took ~0.5 s); the interpreter
    waits for it at exit."""
    thread = threading.Thread(target=lambda: _write(path, make_data(), what),
                              name=f"resnet_jax: keep the {what}")
    thread.start()
    _pending[:] = [t for t in _pending if t.is_alive()] + [thread]


def wait_for_writes() -> None:
    """Wait until the entries ``initial_variables`` is writing are on disk."""
    while _pending:
        _pending.pop().join()


def initial_variables(model, seed: int, image_size) -> dict:
    """``init_variables(model, seed, image_size)``, kept beside the traced steps.

    A fresh run's variables depend only on the model, the seed, the image size and the
    code that draws them (all in the key), so a second start with the same settings reads
    them instead of tracing flax's init again (~0.2 s of the default run's warm start).
    An unreadable entry is drawn again and replaced.
    """
    from flax import serialization

    from ..models import init_variables

    folder = directory()
    key = None if folder is None else _key(f"model={model!r}", f"seed={int(seed)}",
                                            f"image_size={image_size!r}")
    if key is None:
        return init_variables(model, seed, image_size)
    path = folder / f"init-{key[:40]}.msgpack"
    if path.is_file():
        try:
            return jax.device_put(serialization.msgpack_restore(path.read_bytes()))
        except Exception as e:  # a damaged entry: draw again and replace it
            log.warning("ignoring unreadable initial variables %s: %s", path, e)
    variables = init_variables(model, seed, image_size)
    host = jax.tree_util.tree_map(np.array, variables)  # copies: the train step donates them
    _write_soon(path, lambda: serialization.msgpack_serialize(host), "initial variables")
    return variables


class CachedStep:
    """``train_step(state, batch) -> (state, metrics)``, traced once per settings and kept.

    ``step`` is the un-jitted train step; ``parts`` names everything it was built from
    that is not in the state's or the batch's shapes. The jitted step (state donated) is
    built at the first call, from the cache when it holds this step's trace.
    """

    def __init__(self, step, parts: dict, *, compiler_options=None):
        self._step, self._parts = step, dict(parts)
        self._options = compiler_options or {}
        self._call = None
        self._treedef = None
        self.source = None  # "cache" or "traced" after the first call

    def _flat_step(self, leaves, batch):
        state = jax.tree_util.tree_unflatten(self._treedef, leaves)
        new_state, metrics = self._step(state, batch)
        new_leaves, treedef = jax.tree_util.tree_flatten(new_state)
        if treedef != self._treedef:  # pragma: no cover - a step that changes the state's form
            raise TypeError("the train step returned a state of another structure")
        return new_leaves, metrics

    def _exported(self, state, leaves, batch):
        folder = directory()
        key = step_key({**self._parts, "compiler_options": self._options}, state, batch) \
            if folder is not None else None
        path = None if key is None else folder / f"train_step-{key[:40]}.jax"
        if path is not None and path.is_file():
            try:
                data = path.read_bytes()
                exported = jax.export.deserialize(bytearray(data))
                self.source = "cache"
                return exported, data
            except Exception as e:  # a damaged entry: trace again and replace it
                log.warning("ignoring unreadable traced step %s: %s", path, e)
        exported = jax.export.export(jax.jit(self._flat_step))(leaves, batch)
        self.source = "traced"
        data = None
        if path is not None:
            data = exported.serialize()
            _write(path, data, "traced step")
        return exported, data

    def __call__(self, state, batch):
        leaves, treedef = jax.tree_util.tree_flatten(state)
        if self._call is None:
            self._treedef = treedef
            exported, data = self._exported(state, leaves, batch)
            self._call = jax.jit(exported.call, donate_argnums=0,
                                 compiler_options=self._options or None)
            # The first call lowers the program; LAPACK's set-up is needed only by a
            # program that calls it (its custom-call targets are named in the bytes).
            with _lowering_without_lapack_setup(data is None or b"lapack" in data):
                new_leaves, metrics = self._call(leaves, batch)
            return jax.tree_util.tree_unflatten(treedef, new_leaves), metrics
        if treedef != self._treedef:
            raise TypeError("the train step was built for a state of another structure")
        new_leaves, metrics = self._call(leaves, batch)
        return jax.tree_util.tree_unflatten(treedef, new_leaves), metrics


@contextlib.contextmanager
def _lowering_without_lapack_setup(needs_lapack: bool):
    """Lowering an exported program, jax sets up LAPACK's handlers for any CPU program,
    which imports scipy.linalg: 0.2 s of a ~2 s warm start of the default run
    (benchmarks/NOTES.md, 10b). A step that calls no LAPACK routine skips it."""
    try:
        from jax._src.export import _export

        setup = _export._ensure_backends_initialized
    except (ImportError, AttributeError):  # pragma: no cover - jax moved it
        setup = None
    if needs_lapack or setup is None:
        yield
        return
    _export._ensure_backends_initialized = lambda platforms: None
    try:
        yield
    finally:
        _export._ensure_backends_initialized = setup
