"""An ImageNet-like image folder, made offline and deterministically, for data benchmarks.

    python -m benchmarks.imagenet_like OUT --n 50000 --classes 100 [--seed 0] [--workers 2]

writes ``OUT/class_CCCC/IIIIIII.jpg``: N JPEGs of 500x375 (ImageNet's most common size),
quality 90, image ``i`` in class ``i % classes``. Each is a random crop of one of
scikit-image's sample photos (installed with it: nothing is downloaded) chosen by its
class, resized to 500x375, with colour jitter (per-channel gain, brightness, contrast,
saturation), a class tint and Gaussian noise. Image ``i`` depends only on ``(seed, i)``,
so any N is a prefix of a larger N and a restart writes only the missing files (each file
is written under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, QUALITY = 500, 375, 90
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "motorcycle_left",
          "immunohistochemistry", "camera", "coins", "horse", "moon", "grass", "gravel", "brick")

_CACHE: dict = {}


def _photos() -> list[np.ndarray]:
    """scikit-image's sample photos as RGB uint8 (grey ones repeated over three channels)."""
    if "photos" not in _CACHE:
        from skimage import data

        out = []
        for name in PHOTOS:
            try:
                img = np.asarray(getattr(data, name)())
            except Exception:  # a sample that needs a download: left out, offline
                continue
            if img.dtype != np.uint8:
                img = (255 * (img.astype(np.float64) / max(float(img.max()), 1.0))).astype(np.uint8)
            img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
            out.append(img)
        _CACHE["photos"] = out
    return _CACHE["photos"]


def image(i: int, classes: int, seed: int = 0) -> np.ndarray:
    """Image ``i`` (uint8, HEIGHT x WIDTH x 3) of a set with ``classes`` classes."""
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    cls = i % classes
    photos = _photos()
    src = photos[cls % len(photos)]
    h, w = src.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch, cw = max(16, int(h * frac)), max(16, int(w * frac * rng.uniform(0.8, 1.25)))
    ch, cw = min(ch, h), min(cw, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(src[top:top + ch, left:left + cw]).resize((WIDTH, HEIGHT), Image.BILINEAR)
    x = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    tint = np.random.default_rng([seed, 10**9 + cls]).uniform(0.8, 1.2, 3)  # the class's colour
    x = x * tint * rng.uniform(0.85, 1.15, 3) * rng.uniform(0.75, 1.25)  # gains, brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean  # contrast
    grey = x.mean(-1, keepdims=True)
    x = (x - grey) * rng.uniform(0.6, 1.4) + grey  # saturation
    x = x + rng.normal(0, rng.uniform(2, 10), x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def path_of(out: Path, i: int, classes: int) -> Path:
    return out / f"class_{i % classes:04d}" / f"{i:07d}.jpg"


def _write(args) -> int:
    from PIL import Image

    out, start, stop, classes, seed = args
    written = 0
    for i in range(start, stop):
        path = path_of(out, i, classes)
        if path.exists():
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(image(i, classes, seed)).save(tmp, format="JPEG", quality=QUALITY)
        os.replace(tmp, path)
        written += 1
    return written


def generate(out, n: int, classes: int = 100, seed: int = 0, workers: int = 1, progress: bool = True) -> int:
    """Write the set's images that ``out`` lacks; returns how many were written."""
    from tqdm import tqdm

    if n < classes or classes < 2:
        raise SystemExit(f"imagenet_like: need classes >= 2 and n >= classes; got n={n}, classes={classes}")
    out = Path(out)
    for c in range(classes):
        (out / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    chunk = 64
    jobs = [(out, s, min(n, s + chunk), classes, seed) for s in range(0, n, chunk)]
    written = 0
    with tqdm(total=n, unit="img", disable=not progress) as bar:
        if workers <= 1:
            results = map(_write, jobs)
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_write, jobs)
        for job, got in zip(jobs, results, strict=True):
            written += got
            bar.update(job[2] - job[1])
        if workers > 1:
            pool.shutdown()
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--classes", type=int, default=100, help="class folders (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    written = generate(a.out, a.n, a.classes, a.seed, a.workers, a.progress)
    print(f"{a.out}: {a.n} images in {a.classes} classes ({written} written now)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
