"""The ``resnet-jax`` command.

Each subcommand lives beside the code it drives; a module listed in ``COMMAND_MODULES``
exposes ``register(subparsers)``, which adds its parsers and sets ``func`` on them.
Modules are imported when the parser is built, so they keep heavy imports inside ``func``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys

from . import interrupts
from .errors import ResNetJaxError

COMMAND_MODULES = [
    "resnet_jax.commands",  # summary, predict, convert
    "resnet_jax.train.cli",  # train, evaluate
    "resnet_jax.explain.cli",  # gradcam, visualize
    "resnet_jax.course",  # course
    "resnet_jax.data.cli",  # check-data, pack
]


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes (``RESNET_JAX_CACHE`` to relocate)."""
    import jax

    path = os.environ.get("RESNET_JAX_CACHE", os.path.expanduser("~/.cache/resnet_jax/xla"))
    if path.lower() in ("", "0", "off", "none"):
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-jax",
        description="ResNets in JAX/Flax: train, port torchvision weights, explain.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake prints one line and gives status 2; a failure to
    write or read a file (disk full, read-only, missing folder) one line naming the path
    and the cause, status 1; Ctrl-C "interrupted", status 130 (SIGTERM, under ``run``:
    "terminated", status 143)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return _stopped()
    try:
        enable_compilation_cache()
        result = args.func(args)
    except ResNetJaxError as e:
        print(f"resnet-jax {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        cause = e.strerror or _one_line(e)
        print(f"resnet-jax {args.command}: error: {where}{cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _stopped()
    return int(result or 0)


_TERMINATED = []  # holds SIGTERM once ``run``'s handler has turned it into a KeyboardInterrupt


def _stopped() -> int:
    """The one line and the status of a run stopped by Ctrl-C (130) or SIGTERM (143)."""
    if _TERMINATED:
        print("terminated", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    print("interrupted", file=sys.stderr, flush=True)
    return 130


def _exit_interrupted(signum, frame):
    """Ctrl-C or SIGTERM while jax loads: end at once, nothing has been written."""
    name, status = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
    print(name, file=sys.stderr, flush=True)
    os._exit(status)


def _terminate_as_interrupt(signum, frame):
    """SIGTERM once started: stop exactly as Ctrl-C does, through whatever handles SIGINT
    now (``checkpoint.interrupts_deferred`` holds it until a save in progress has finished,
    then the KeyboardInterrupt unwinds the run: loaders, checkpoints, lock), then status 143."""
    _TERMINATED.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def _sigint_ignored_unless_terminated(signum, frame):
    """Stands for an inherited SIG_IGN (a background job's SIGINT): Ctrl-C stays ignored,
    but the SIGINT that ``interrupts_deferred`` re-raises for a SIGTERM after a save stops."""
    if _TERMINATED:
        interrupts.noting(signum, frame)


def run(argv: list[str] | None = None) -> int:
    """``main`` for a process that runs one command and exits (the ``resnet-jax`` script,
    ``train.py``, ``convert_weights.py``).

    It applies the CPU tuning (``xla_cpu.configure()``) and loads jax and flax first, with
    Ctrl-C ending the process at once ("interrupted", status 130; SIGTERM "terminated",
    143): a KeyboardInterrupt raised inside their native extensions' start-up surfaces as an
    ImportError, or crashes it. Then it freezes what they left (objects that live as long as
    the process), so no later collection traverses them. From then on SIGTERM stops the
    command as Ctrl-C does, with status 143. ``main``, which other programs and the tests
    call inside a process they keep, does none of this.
    """
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    signal.signal(signal.SIGTERM, _exit_interrupted)
    from . import xla_cpu

    xla_cpu.configure()  # the CPU tuning, before JAX starts
    import flax.linen  # noqa: F401
    import jax  # noqa: F401

    ignored = previous == signal.SIG_IGN
    if previous is signal.default_int_handler:  # a Ctrl-C that a finalizer swallows still stops
        previous = interrupts.noting
    sys.unraisablehook = interrupts.unraisable_hook
    signal.signal(signal.SIGINT, _sigint_ignored_unless_terminated if ignored else previous)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    gc.freeze()
    try:
        status = main(argv)
    except KeyboardInterrupt:  # between main's own handlers
        return _stopped()
    if status == 1:
        # A file-system failure, reported: writes of a failed save may still run on
        # background threads, and their own reports of it would follow that one line.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(run())
