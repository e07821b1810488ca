"""The input pipeline: deterministic, sharded per host, decoded and augmented off the
training thread, with a state that a checkpoint stores.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)``; the augmentation of
an image from ``(seed, e, index of the image)``. So a batch depends only on the seed and
its position, never on thread timing, on the number of hosts or on an earlier crash:
``DataIterator.state()`` is that position, and an iterator rebuilt from it yields the
batches that the original would have yielded next.

Each host reads its own slice of every global batch (``shard_index`` of ``shard_count``).
Batches are built ahead of the training step, by ``threads`` threads of this process (PIL
releases the GIL while it decodes and resamples, but the rest of each image's work holds
it), or, for image files (folders and packs) with ``workers > 0``, by that many worker
processes (``resnet_jax.data.workers``: grain), which scale with cores. Both give the same
batches.

Image files are read only when a batch needs them. A training image that cannot be read
is skipped: its place in the batch goes to the next readable image of the epoch's order
(wrapping around), cropped and flipped with the skipped image's own random draws, so the
batches of a seed are the same on every run, host count and resume, whichever files fail
(unreadable is a property of the file, not of timing). An unreadable evaluation image is
left out: its row gets ``mask == 0``. Each one is recorded in ``Loader.unreadable``
(path -> reason); with ``strict`` the first one stops the run with an error naming it.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..interrupts import raise_if_interrupted
from .datasets import DatasetError, ImageSet, Preprocess
from .images import ImageError
from .transforms import eval_transform, eval_transform_file, train_transform, train_transform_file


class Loader:
    """Batches of one ``ImageSet``: ``{'image': uint8 [b,H,W,C], 'label': int32 [b], 'mask': float32 [b]}``.

    Training (``train=True``): shuffled every epoch, augmented, incomplete last batch
    dropped, so every batch has the same shape. Evaluation: in order, eval transform,
    the last batch padded with ``mask == 0`` rows so it also has the same shape.

    ``threads`` threads of this process build batches ahead (``prefetch`` of them); with
    ``workers > 0``, image files (folders, packs) are read, decoded and augmented by that
    many worker processes instead (in-memory sets always use the threads).
    """

    def __init__(self, data: ImageSet, global_batch: int, *, train: bool, seed: int = 0,
                 preprocess: Preprocess | None = None, shard_index: int = 0, shard_count: int = 1,
                 threads: int = 2, workers: int = 0, prefetch: int = 4, strict: bool | None = None):
        if len(data) == 0:
            raise DatasetError(f"data set {data.name!r} is empty")
        if global_batch <= 0:
            raise DatasetError(f"batch size must be positive, got {global_batch}")
        if global_batch % shard_count:
            raise DatasetError(
                f"batch size {global_batch} does not divide over {shard_count} hosts; "
                f"use a multiple of {shard_count}"
            )
        if train and global_batch > len(data):
            raise DatasetError(
                f"batch size {global_batch} is larger than the training set {data.name!r} "
                f"({len(data)} images), so an epoch would hold no full batch; "
                f"use --batch-size {largest_divisor_at_most(len(data), shard_count)} or less"
            )
        self.data = data
        self.train = train
        self.seed = int(seed)
        self.preprocess = preprocess or data.preprocess
        self.global_batch = int(global_batch)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.local_batch = self.global_batch // self.shard_count
        n = len(data)
        self.steps_per_epoch = n // global_batch if train else -(-n // global_batch)
        self.threads = max(1, int(threads))
        # In-memory sets are decoded already: their few bytes per image go faster through
        # threads than through worker processes, which pay a start-up and a copy.
        self.workers = max(0, int(workers)) if data.images is None else 0
        self.prefetch = max(1, int(prefetch))
        self._orders: dict[int, np.ndarray] = {}
        self._places: dict[int, np.ndarray] = {}  # epoch -> position of each index in its order
        self.strict = bool(data.strict if strict is None else strict)
        self.unreadable: dict[str, str] = {}  # path -> reason, in the order they were met

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The indices of the data set in the order epoch ``epoch`` visits them."""
        if not self.train:
            return np.arange(len(self.data))
        order = self._orders.get(epoch)
        if order is None:  # worker threads may race here: they compute the same permutation
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            self._orders = {**{e: o for e, o in self._orders.items() if e >= epoch - 1}, epoch: order}
        return order

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """This host's data-set indices of batch ``batch`` of ``epoch`` (-1: padding)."""
        g = self.order(epoch)[batch * self.global_batch:(batch + 1) * self.global_batch]
        if len(g) < self.global_batch:
            g = np.concatenate([g, np.full(self.global_batch - len(g), -1, g.dtype)])
        return g[self.shard_index * self.local_batch:(self.shard_index + 1) * self.local_batch]

    def batch_spec(self) -> dict:
        """``{name: (shape, dtype)}`` of a global batch (every host's rows together)."""
        size, channels = self.preprocess.image_size, self.data.channels
        n = self.global_batch
        return {"image": ((n, size, size, channels), np.dtype(np.uint8)),
                "label": ((n,), np.dtype(np.int32)), "mask": ((n,), np.dtype(np.float32))}

    def batch(self, epoch: int, batch: int) -> dict:
        """Build one batch (called from worker threads)."""
        idx = self.indices(epoch, batch)
        out = {k: np.zeros((len(idx), *shape[1:]), dtype)  # this host's rows of the global batch
               for k, (shape, dtype) in self.batch_spec().items()}
        out["mask"][:] = idx >= 0
        for k, i in enumerate(idx):
            if i < 0:
                continue
            got = self._sample(epoch, int(i))
            if got is None:  # evaluation: an unreadable image is left out of the counts
                out["mask"][k] = 0
                continue
            out["image"][k], out["label"][k] = got
        return out

    def _sample(self, epoch: int, i: int):
        """(image, label) for index ``i``: in training, an unreadable image is replaced by
        the next readable one in the epoch's order, with ``i``'s random draws."""
        if not self.train:
            img = self._transform(i, None)
            return None if img is None else (img, self.data.labels[i])
        order = self.order(epoch)
        start = self._place(epoch, i)
        for step in range(len(order)):
            j = int(order[(start + step) % len(order)])
            img = self._transform(j, np.random.default_rng([self.seed, epoch, i]))
            if img is not None:
                return img, self.data.labels[j]
        raise DatasetError(f"no image of {self.data.name!r} could be read: "
                           + "; ".join(list(self.unreadable.values())[:3]))

    def _place(self, epoch: int, i: int) -> int:
        places = self._places.get(epoch)
        if places is None:
            places = np.argsort(self.order(epoch))
            self._places = {**{e: p for e, p in self._places.items() if e >= epoch - 1}, epoch: places}
        return int(places[i])

    def _transform(self, i: int, rng):
        """Image ``i`` transformed (``rng`` None: evaluation), or None if it cannot be read."""
        pre, data = self.preprocess, self.data
        if data.images is not None:
            img = data.images[i]
            return eval_transform(img, pre) if rng is None else train_transform(img, pre, rng)
        path, encoded = data.source(i)
        if path in self.unreadable:
            return None
        try:
            if rng is None:
                return eval_transform_file(path, data.channels, pre, encoded)
            return train_transform_file(path, data.channels, pre, rng, encoded)
        except ImageError as e:
            if self.strict:
                raise DatasetError(f"{e}; stopped by --strict (drop --strict to skip unreadable "
                                   "images, or list them all with resnet-jax check-data)") from None
            self.unreadable[path] = str(e)
            return None

    def iterator(self, state: dict | None = None, limit: int | None = None) -> DataIterator:
        """Batches from ``state``'s position (default: the start); ``limit``: how many will
        be read (worker processes then build no batch past them)."""
        return DataIterator(self, state, limit)

    def epoch(self, epoch: int = 0):
        """The batches of one epoch (evaluation passes use this)."""
        it = self.iterator({"epoch": epoch, "batch": 0}, limit=self.steps_per_epoch)
        try:
            for _ in range(self.steps_per_epoch):
                yield next(it)
        finally:
            it.close()


def largest_divisor_at_most(n: int, multiple: int) -> int:
    return max(multiple, (n // multiple) * multiple)


class DataIterator:
    """Endless iterator over (epoch, batch) positions with batches built ahead, in threads
    or worker processes (``Loader.workers``).

    ``state()`` is the position of the next batch ``next()`` returns, plus what must match
    on restore (seed, data-set size, global batch).
    """

    def __init__(self, loader: Loader, state: dict | None = None, limit: int | None = None):
        self.loader = loader
        self.limit = limit
        self.epoch, self.position = 0, 0
        self._workers = None  # the worker processes' batches, started by the first next()
        if state:
            self.restore(state)
        self._pool = ThreadPoolExecutor(loader.threads, thread_name_prefix="resnet-jax-data")
        self._ahead: collections.deque = collections.deque()

    def state(self) -> dict:
        return {
            "epoch": self.epoch, "batch": self.position, "seed": self.loader.seed,
            "size": len(self.loader.data), "global_batch": self.loader.global_batch,
        }

    def restore(self, state: dict) -> None:
        for key in ("seed", "size", "global_batch"):
            mine = {"seed": self.loader.seed, "size": len(self.loader.data),
                    "global_batch": self.loader.global_batch}[key]
            if key in state and int(state[key]) != mine:
                raise DatasetError(
                    f"the saved data-iterator state has {key} {state[key]}, this run has {mine}; "
                    f"resume with the same data set, --seed and --batch-size as the saved run"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["batch"])
        if self.position >= self.loader.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if getattr(self, "_ahead", None):
            self._drain()
        self._stop_workers()

    def _fill(self):
        if self._ahead:
            e, b = self._ahead[-1][0]
            b += 1
            if b >= self.loader.steps_per_epoch:
                e, b = e + 1, 0
        else:
            e, b = self.epoch, self.position
        while len(self._ahead) < self.loader.prefetch:
            self._ahead.append(((e, b), self._pool.submit(self.loader.batch, e, b)))
            b += 1
            if b >= self.loader.steps_per_epoch:
                e, b = e + 1, 0

    def _drain(self):
        for _, fut in self._ahead:
            fut.cancel()
        self._ahead.clear()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        raise_if_interrupted()  # a Ctrl-C swallowed by a finalizer (of a batch's shared memory)
        if self.loader.workers:
            e, b = self.epoch, self.position
            if self._workers is None:
                out = self._first_batch_while_workers_start()
            else:
                out = next(self._workers)
        else:
            self._fill()
            (e, b), fut = self._ahead.popleft()
            assert (e, b) == (self.epoch, self.position)
            out = fut.result()
        self.position = b + 1
        if self.position >= self.loader.steps_per_epoch:
            self.epoch, self.position = e + 1, 0
        return out

    def _first_batch_while_workers_start(self) -> dict:
        """The batch at the position, built in this process while the worker processes,
        started now for the positions after it, import and come up (seconds): the caller
        compiles its step meanwhile instead of waiting for them."""
        from .workers import WorkerBatches

        start = self.epoch * self.loader.steps_per_epoch + self.position
        stop = None if self.limit is None else start + self.limit
        self._workers = WorkerBatches(self.loader, self.loader.workers, start + 1, stop)
        return self.loader.batch(self.epoch, self.position)

    def _stop_workers(self):
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()

    def close(self):
        self._drain()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stop_workers()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
