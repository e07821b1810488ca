"""Training-mode input pipeline throughput: this project's loader against torchvision's.

    python -m benchmarks.imagenet_like /tmp/il --n 5000 --classes 100 --workers 2
    python -m resnet_jax.cli pack /tmp/il /tmp/il-packed --max-side 256   # or data.pack(...)
    python -m benchmarks.bench_data --folder /tmp/il --pack /tmp/il-packed --workers 1 2 --images 2000

Each row decodes, random-resized-crops to 224, flips and returns uint8 batches of 64,
training mode, for ``--images`` images after one warm-up batch: resnet-jax's ``Loader``
from the folder and from the pack (its ``--workers`` decoding threads), with ``--grain``
the same ``Loader.batch`` run by ``--workers`` grain worker processes, and torchvision's
``ImageFolder`` + ``DataLoader`` with ``RandomResizedCrop(224)``,
``RandomHorizontalFlip()`` and ``PILToTensor()`` (uint8) and the same number of worker
processes. Rows alternate in one process (peer, ours, peer, ours, ...), ``--repeats``
times; the table gives the best img/s of each, img/s per worker, and ours over the peer.
Nothing is timed in the tests; run this on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def ours(root: str, workers: int, images: int, batch: int):
    from resnet_jax.data import Loader, Preprocess, load_splits

    sets = load_splits(root, test_fraction=0.01, val_fraction=0)
    loader = Loader(sets["train"], batch, train=True, seed=0, preprocess=Preprocess(224),
                    workers=workers, prefetch=2 * workers)

    def run():
        with loader.iterator() as it:
            next(it)  # warm-up: the threads start, the first files are opened
            t = time.perf_counter()
            for _ in range(max(1, images // batch)):
                assert next(it)["image"].dtype == np.uint8
            return max(1, images // batch) * batch / (time.perf_counter() - t)
    return run


class _BuildBatch:
    """Batch ``position`` of a ``Loader``, built in a grain worker process (picklable)."""

    def __init__(self, loader):
        self.loader = loader

    def __call__(self, position: int) -> dict:
        spe = self.loader.steps_per_epoch
        return self.loader.batch(position // spe, position % spe)


def ours_grain(root: str, workers: int, images: int, batch: int):
    """The same ``Loader.batch`` (same batches, position by position) run by grain's
    worker processes (``MapDataset`` -> ``mp_prefetch``) instead of threads."""
    import grain
    from absl import flags

    from resnet_jax.data import Loader, Preprocess, load_splits

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in the workers' start
        flags.FLAGS.mark_as_parsed()
    sets = load_splits(root, test_fraction=0.01, val_fraction=0)
    loader = Loader(sets["train"], batch, train=True, seed=0, preprocess=Preprocess(224), workers=1)
    ds = (grain.MapDataset.range(0, 10**9).map(_BuildBatch(loader))
          .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
          .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)))

    def run():
        it = iter(ds)
        next(it)  # warm-up: the worker processes start and import
        t = time.perf_counter()
        for _ in range(max(1, images // batch)):
            assert next(it)["image"].dtype == np.uint8
        rate = max(1, images // batch) * batch / (time.perf_counter() - t)
        del it
        return rate
    return run


def torchvision_peer(root: str, workers: int, images: int, batch: int):
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    data = datasets.ImageFolder(root, transform=tf)

    def run():
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=False, prefetch_factor=2)
        it = iter(loader)
        next(it)
        t = time.perf_counter()
        for _ in range(max(1, images // batch)):
            assert next(it)[0].dtype == torch.uint8
        rate = max(1, images // batch) * batch / (time.perf_counter() - t)
        del it
        return rate
    return run


def measure(args) -> list[tuple[str, int, float]]:
    rows = []
    for w in args.workers:
        runs = {"torchvision ImageFolder+DataLoader (folder)": torchvision_peer(args.folder, w, args.images, args.batch),
                "resnet-jax Loader (folder)": ours(args.folder, w, args.images, args.batch)}
        if args.pack:
            runs["resnet-jax Loader (pack)"] = ours(args.pack, w, args.images, args.batch)
        if args.grain:
            for name, root in (("folder", args.folder), ("pack", args.pack)):
                if root:
                    runs[f"resnet-jax batches in grain processes ({name})"] = ours_grain(
                        root, w, args.images, args.batch)
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = max(best[name], run())
        rows += [(name, w, rate) for name, rate in best.items()]
    return rows


def render(rows) -> str:
    peer = {w: r for n, w, r in rows if n.startswith("torchvision")}
    lines = ["| pipeline | workers | img/s | img/s per worker | vs torchvision |", "|---|---|---|---|---|"]
    for name, w, rate in rows:
        lines.append(f"| {name} | {w} | {rate:.0f} | {rate / w:.0f} | {rate / peer[w]:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="an image folder (e.g. from benchmarks.imagenet_like)")
    p.add_argument("--pack", help="the same folder packed (resnet-jax pack)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=2000, help="images timed per row")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--grain", action="store_true",
                   help="also the same batches built by grain worker processes (pip install grain)")
    args = p.parse_args(argv)
    print(render(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
