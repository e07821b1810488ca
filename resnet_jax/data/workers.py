"""Worker processes that build a ``Loader``'s batches: grain's ``MapDataset`` of batch
positions, ``map``-ped to ``Loader.batch`` and run by ``mp_prefetch`` worker processes.

Position ``p`` is batch ``p % steps_per_epoch`` of epoch ``p // steps_per_epoch``; worker
``k`` of ``n`` builds positions ``k, k + n, ...`` and grain hands them back in position
order. So the batches are those of the loader's own threads, position by position: they
depend on the seed and the position only, never on the number of workers, and each host's
worker builds that host's slice of each global batch (the loader's ``shard_index``).

The main process keeps the position (``DataIterator.state()``); a restored iterator starts
new workers at the saved position, so a run saved with any number of workers resumes with
any other. A worker reports the unreadable files it met with each batch; they are merged
into the main process's ``Loader.unreadable``. An error in a worker (``--strict`` meeting
an unreadable file) is raised by ``next`` in the main process.

The workers are spawned (never forked: the main process runs JAX's threads), ignore
SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group; the main process
decides and closes them) and exit on their own when the main process dies (SIGKILL
included), so none outlives its run. ``close`` stops them: each finishes the batch it is
building and exits. A program that makes worker iterators must start from an
``if __name__ == "__main__":`` block (the rule for spawned processes).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from concurrent.futures import wait

PARENT_POLL_S = 0.5  # how often a worker checks that the main process is alive
BATCHES_PER_WORKER = 2  # batches each worker builds ahead
START_WAIT_S = 120.0  # the most ``close`` waits for workers still starting
_AT_EXIT = False  # _release_at_exit is registered to run at exit
_OPEN: weakref.WeakSet = weakref.WeakSet()  # the WorkerBatches not closed yet


class _BuildBatch:
    """Batch ``position`` of ``loader`` and the unreadable files met since the last one
    (runs in a worker process, which holds its own copy of the loader)."""

    def __init__(self, loader):
        self.loader = loader
        self.reported = len(loader.unreadable)

    def __call__(self, position: int) -> dict:
        spe = self.loader.steps_per_epoch
        batch = self.loader.batch(position // spe, position % spe)
        met = list(self.loader.unreadable.items())
        self.reported, new = len(met), met[self.reported:]
        return {"batch": batch, "unreadable": [list(item) for item in new]}


def _worker_start(parent: int, index: int, count: int) -> None:
    """In each worker, before its first batch: leave signals to the main process, and
    exit when the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_without_parent, args=(parent,), daemon=True,
                     name="resnet-jax-parent-watch").start()


def _exit_without_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def _grain():
    """The ``grain`` module, its absl flags marked parsed (grain's worker start reads them;
    a program that parses its own absl flags has done so already)."""
    from ..errors import ResNetJaxError

    try:
        import grain
        from absl import flags
    except ImportError:
        raise ResNetJaxError("worker processes (--workers N > 0) need the grain package: "
                             "pip install 'resnet-jax[data]' (or pip install grain), "
                             "or use --workers 0") from None
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


class WorkerBatches:
    """The batches of ``loader`` from position ``start`` (``stop``: before this position;
    None: endless), built by ``workers`` worker processes, in position order.

    The processes start at once (a thread asks for the first batch), so a caller can do
    other work, such as compiling its step, while they import and come up."""

    def __init__(self, loader, workers: int, start: int, stop: int | None = None):
        import functools

        grain = _grain()
        stop = start + 2**52 if stop is None else stop
        ds = (grain.MapDataset.range(start, stop).map(_BuildBatch(loader))
              .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                        per_worker_buffer_size=BATCHES_PER_WORKER),
                           worker_init_fn=functools.partial(_worker_start, os.getpid())))
        self.loader = loader
        self._it = iter(ds)
        _OPEN.add(self)
        self._first = None  # the first batch, asked for at once: the processes start now
        if stop > start:
            from concurrent.futures import Future

            self._first = Future()
            threading.Thread(target=self._pull_first, daemon=True,
                             name="resnet-jax-workers-start").start()
        global _AT_EXIT
        if not _AT_EXIT:  # after the run's last batch is garbage, before the interpreter ends
            import atexit

            atexit.register(_release_at_exit)
            _AT_EXIT = True

    def _pull_first(self) -> None:
        try:
            self._first.set_result(next(self._it))
        except BaseException as e:  # noqa: BLE001 (raised again by __next__ in the main thread)
            self._first.set_exception(e)

    def __next__(self) -> dict:
        if self._first is not None:  # kept until it is read: close waits for its thread
            out = self._first.result()
            self._first = None
        else:
            out = next(self._it)
        for path, reason in out["unreadable"]:
            self.loader.unreadable.setdefault(path, reason)
        return out["batch"]

    def close(self) -> None:
        """Stop the workers: each ends after the batch it is building; returns once they have,
        and the shared memory of the batches they had built ahead is released."""
        it, self._it = self._it, None
        if it is not None:
            if self._first is not None:  # the start-up thread is in grain's next(): let it end
                wait([self._first], timeout=START_WAIT_S)
                self._first = None  # its batch, if any, is released below
            it.close()
            del it
            release_shared_memory()


def release_shared_memory() -> None:
    """Release the shared memory of batches no longer referenced: grain unlinks a batch's
    shared memory in a background thread once the batch is garbage; this waits until every
    unlink asked for so far is done (at exit too, or Python's resource tracker would
    report them as leaked and unlink them itself)."""
    import gc

    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    gc.collect()
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)  # one thread, tasks in order
    if pool is not None:
        try:
            pool.apply(int)  # runs after every unlink queued before it
        except ValueError:  # the pool was shut down: nothing is left to wait for
            pass


def _release_at_exit() -> None:
    """At exit, while the modules are whole: close the iterators the program left open
    (their workers stop), ``release_shared_memory``, then deal with the batches the program
    still holds (a variable of a script, say): their shared memory is unlinked now (the
    arrays stay readable until the process ends) and their finalizers, which would run while
    the interpreter tears down the modules they need and print an error, do nothing."""
    import gc

    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    for left_open in list(_OPEN):
        left_open.close()
    release_shared_memory()
    held = [a for a in gc.get_objects() if type(a) is SharedMemoryArray]  # no __class__ lookups
    for arr in held:
        shm = getattr(arr, "shm", None)
        if shm is not None and getattr(arr, "_unlink_on_del", False):
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
    if held:
        SharedMemoryArray.__del__ = lambda self: None
