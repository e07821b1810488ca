"""Per-image transforms on uint8 HWC arrays (PIL resampling, numpy randomness).

``train_transform``: torchvision's RandomResizedCrop then RandomHorizontalFlip.
``eval_transform``: torchvision's Resize(size / crop_pct) then CenterCrop(size).
Normalisation to ``(x / 255 - mean) / std`` happens on the device, in the step.
"""

from __future__ import annotations

import math

import numpy as np

from .datasets import Preprocess


def _to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _from_pil(im, channels: int) -> np.ndarray:
    arr = np.asarray(im, np.uint8)
    return arr[..., None] if channels == 1 else arr


def random_resized_crop_box(height: int, width: int, scale, ratio, rng: np.random.Generator):
    """(left, top, right, bottom) of a crop as torchvision's RandomResizedCrop picks it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    # Fallback: the centre crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_transform(img: np.ndarray, pre: Preprocess, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w, c = img.shape
    box = random_resized_crop_box(h, w, pre.scale, pre.ratio, rng)
    im = _to_pil(img).resize((pre.image_size, pre.image_size), Image.BILINEAR, box=box)
    out = _from_pil(im, c)
    if pre.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def eval_transform(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    from PIL import Image

    h, w, c = img.shape
    size = pre.image_size
    resize = int(round(size / pre.crop_pct))
    if (h, w) == (size, size) and resize == size:
        return img
    # Resize the shorter side to `resize`, keeping the aspect ratio (torchvision Resize(int)).
    if h <= w:
        nh, nw = resize, max(resize, int(resize * w / h))
    else:
        nw, nh = resize, max(resize, int(resize * h / w))
    im = _to_pil(img).resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return _from_pil(im, c)
