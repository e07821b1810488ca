"""Ctrl-C that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT
arrives. If that is a finalizer (``__del__``, a weakref callback, a garbage-collection
pass freeing a batch's shared memory), the exception is printed as "Exception ignored"
and dropped, and the command would carry on as if no key had been pressed. ``noting``
is the SIGINT handler of a command-line process (``resnet_jax.cli.run``): it records the
signal, then raises as Python's own handler does. Loops that run for long call
``raise_if_interrupted`` at safe points (the data iterators do, before every batch), so an
interrupt that was swallowed still stops the command at the next one, and
``unraisable_hook`` keeps the dropped exception's traceback off the terminal.
"""

from __future__ import annotations

import sys

_received: list[int] = []


def noting(signum, frame):
    """SIGINT handler: remember the interrupt, then raise KeyboardInterrupt."""
    _received.append(signum)
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if ``noting`` has received a SIGINT in this process."""
    if _received:
        raise KeyboardInterrupt


def unraisable_hook(unraisable) -> None:
    """``sys.unraisablehook`` that leaves out a KeyboardInterrupt ``noting`` has recorded
    (it stops the command at the next safe point), and reports anything else as Python does."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and _received:
        return
    sys.__unraisablehook__(unraisable)


__all__ = ["noting", "raise_if_interrupted", "unraisable_hook"]
