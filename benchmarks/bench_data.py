"""Training-mode input pipeline throughput: this project's loader against torchvision's.

    python -m benchmarks.imagenet_like /tmp/il --n 5000 --classes 100 --workers 2
    python -m resnet_jax.cli pack /tmp/il /tmp/il-packed --max-side 256   # or data.pack(...)
    python -m benchmarks.bench_data --folder /tmp/il --pack /tmp/il-packed --workers 1 2 --images 2000

Each row decodes, random-resized-crops to 224, flips and returns uint8 batches of 64,
training mode, for ``--images`` images after a warm-up (the workers start, and the batches
they had built ahead are used up, so the timed ones are built while timed): resnet-jax's
``Loader`` from the folder and from the pack, with ``N`` worker processes (``--workers N``
in training: grain's ``mp_prefetch``) and with ``N`` threads of one process (``--workers 0
--threads N``), and torchvision's ``ImageFolder`` + ``DataLoader`` with
``RandomResizedCrop(224)``, ``RandomHorizontalFlip()`` and ``PILToTensor()`` (uint8) and
``N`` worker processes. Rows alternate in one process (peer, ours, peer, ours, ...),
``--repeats`` times; the table gives the best img/s of each, img/s per worker, ours over
the peer, and the load average of the machine. ``--ceiling`` first times each part of one
image's work in this process (torchvision's transform, ours, a JPEG decode alone, the
antialiased resize alone): decode plus resize is the floor of any loader that decodes
whole files and resamples with PIL, so torchvision's time over it bounds the ratio.
Nothing is timed in the tests; run this on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _warm_up(workers: int) -> int:
    """Batches read before timing: the first (start-up) and those built ahead meanwhile."""
    return 1 + 2 * max(1, workers)


def ours(root: str, workers: int, images: int, batch: int, processes: bool = True):
    """resnet-jax's ``Loader``: ``workers`` worker processes, or (``processes`` False)
    ``workers`` threads of this process."""
    from resnet_jax.data import Loader, Preprocess, load_splits

    sets = load_splits(root, test_fraction=0.01, val_fraction=0)
    how = dict(workers=workers) if processes else dict(threads=workers, prefetch=2 * workers)
    loader = Loader(sets["train"], batch, train=True, seed=0, preprocess=Preprocess(224), **how)

    def run():
        with loader.iterator() as it:
            for _ in range(_warm_up(workers)):
                next(it)
            t = time.perf_counter()
            for _ in range(max(1, images // batch)):
                assert next(it)["image"].dtype == np.uint8
            return max(1, images // batch) * batch / (time.perf_counter() - t)
    return run


def torchvision_peer(root: str, workers: int, images: int, batch: int):
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    data = datasets.ImageFolder(root, transform=tf)

    def run():
        timed = (_warm_up(workers) + max(1, images // batch)) * batch  # may pass an epoch's end
        sampler = torch.utils.data.RandomSampler(data, num_samples=max(timed, len(data)))
        loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers,
                                             drop_last=True, persistent_workers=False, prefetch_factor=2)
        it = iter(loader)
        for _ in range(_warm_up(workers)):
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
        runs = {"torchvision ImageFolder+DataLoader (folder)": torchvision_peer(args.folder, w, args.images, args.batch)}
        for name, root in (("folder", args.folder), ("pack", args.pack)):
            if root:
                runs[f"resnet-jax Loader, worker processes ({name})"] = ours(root, w, args.images, args.batch)
                if not args.no_threads:
                    runs[f"resnet-jax Loader, threads of one process ({name})"] = ours(
                        root, w, args.images, args.batch, processes=False)
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = max(best[name], run())
        rows += [(name, w, rate) for name, rate in best.items()]
    return rows


def _cpu_ms(fn, items, repeats: int = 3) -> float:
    """Best over ``repeats`` passes of the CPU milliseconds per item of ``fn``, in this process."""
    fn(items[0])
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for item in items:
            fn(item)
        best = min(best, (time.process_time() - t) / len(items) * 1e3)
    return best


def ceiling(folder: str, pack: str | None, n: int = 300) -> list[tuple[str, float]]:
    """CPU ms per image of each part of the work, one process, no pipeline: torchvision's
    transform, ours, and the two parts neither can skip, a JPEG decode (libjpeg-turbo, the
    same library under both) and an antialiased resize of the crop to 224 (PIL, both).
    Their sum bounds how much faster than torchvision any loader that decodes the whole
    file and resamples with PIL can be."""
    import io

    from PIL import Image
    from torchvision import transforms

    from resnet_jax.data import Preprocess, load_splits
    from resnet_jax.data.transforms import random_resized_crop_box, train_transform_file

    pre, rng = Preprocess(224), np.random.default_rng(0)
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])

    def decode(data):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im

    def resize(im):
        box = random_resized_crop_box(im.size[1], im.size[0], pre.scale, pre.ratio, rng)
        return im.resize((224, 224), Image.BILINEAR, box=box)

    rows = []
    for name, root in (("folder, 500x375", folder), ("pack, 256 px", pack)):
        if not root:
            continue
        data = load_splits(root, test_fraction=0.01, val_fraction=0)["train"]
        blobs = []
        for i in range(min(n, len(data))):
            path, encoded = data.source(i)
            blobs.append(encoded if encoded is not None else Path(path).read_bytes())
        if name.startswith("folder"):
            rows.append(("torchvision RandomResizedCrop+flip+PILToTensor (folder, 500x375)",
                         _cpu_ms(lambda b: tf(Image.open(io.BytesIO(b)).convert("RGB")), blobs)))
        rows.append((f"ours, train_transform_file ({name})",
                     _cpu_ms(lambda b: train_transform_file("bench", 3, pre, rng, b), blobs)))
        decoded = [decode(b) for b in blobs]
        rows.append((f"JPEG decode alone ({name})", _cpu_ms(decode, blobs)))
        rows.append((f"antialiased resize of the crop to 224 alone ({name})", _cpu_ms(resize, decoded)))
    return rows


def render_ceiling(rows) -> str:
    ms = dict(rows)
    peer = next(v for k, v in ms.items() if k.startswith("torchvision"))
    lines = ["| per image, one process | CPU ms | torchvision's ms over this |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {peer / v:.2f}x |" for k, v in rows]
    for name in ("folder, 500x375", "pack, 256 px"):
        parts = [v for k, v in rows if k.endswith(f"({name})") and "alone" in k]
        if len(parts) == 2:
            lines.append(f"| decode + resize, the floor ({name}) | {sum(parts):.3f} | "
                         f"**{peer / sum(parts):.2f}x** |")
    return "\n".join(lines)


def render(rows, load: tuple) -> str:
    peer = {w: r for n, w, r in rows if n.startswith("torchvision")}
    lines = ["| pipeline | workers | img/s | img/s per worker | vs torchvision |", "|---|---|---|---|---|"]
    for name, w, rate in rows:
        lines.append(f"| {name} | {w} | {rate:.0f} | {rate / w:.0f} | {rate / peer[w]:.2f}x |")
    lines.append(f"\n{os.cpu_count()} cores; load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="an image folder (e.g. from benchmarks.imagenet_like)")
    p.add_argument("--pack", help="the same folder packed (resnet-jax pack)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=2000, help="images timed per row")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-threads", action="store_true", help="leave out the rows of threads of one process")
    p.add_argument("--grain", action="store_true",
                   help="kept for older commands: the worker-process rows (grain) are always measured")
    p.add_argument("--ceiling", action="store_true",
                   help="also time each part of one image's work in this process (the bound)")
    args = p.parse_args(argv)
    before = os.getloadavg()[0]
    if args.ceiling:
        print(render_ceiling(ceiling(args.folder, args.pack)) + "\n")
    rows = measure(args)
    print(render(rows, (before, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
