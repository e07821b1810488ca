"""Per-image transforms on uint8 HWC arrays (PIL resampling, numpy randomness).

``train_transform``: torchvision's RandomResizedCrop then RandomHorizontalFlip.
``eval_transform``: torchvision's Resize(size / crop_pct) then CenterCrop(size).
Normalisation to ``(x / 255 - mean) / std`` happens on the device, in the step.
"""

from __future__ import annotations

import math

import numpy as np

from .datasets import Preprocess
from .images import open_reduced


def _to_pil(img):
    """A PIL image of ``img`` (uint8 HWC; a PIL image is returned as it is)."""
    from PIL import Image

    if isinstance(img, Image.Image):
        return img
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
    h, w, _ = img.shape
    box = random_resized_crop_box(h, w, pre.scale, pre.ratio, rng)
    return _resize_flip(img, box, pre, rng)


def _resize_flip(img, box, pre: Preprocess, rng: np.random.Generator) -> np.ndarray:
    """The ``box`` of ``img`` (uint8 HWC, or a PIL image) resized to ``image_size`` (PIL's
    bilinear filter, antialiased when it shrinks, as torchvision's PIL path is), flipped
    with probability 1/2."""
    from PIL import Image

    im = _to_pil(img).resize((pre.image_size, pre.image_size), Image.BILINEAR, box=box)
    out = _from_pil(im, 1 if im.mode == "L" else 3)
    if pre.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def train_transform_file(path, channels: int, pre: Preprocess, rng: np.random.Generator,
                         data: bytes | None = None) -> np.ndarray:
    """``train_transform(read_image(path, channels), pre, rng)`` with the same random draws,
    a JPEG decoded at the smallest DCT scale whose crop still covers ``image_size`` pixels
    each way (the pixels a full decode would throw away are never decoded)."""
    boxes = []

    def need(w, h):
        box = random_resized_crop_box(h, w, pre.scale, pre.ratio, rng)
        boxes.append(box)
        s = pre.image_size
        return math.ceil(w * s / (box[2] - box[0])), math.ceil(h * s / (box[3] - box[1]))

    im, scale, _ = open_reduced(path, channels, need, data)
    return _resize_flip(im, tuple(v * scale for v in boxes[0]), pre, rng)


def _eval_size(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(int): the shorter side to size / crop_pct."""
    resize = int(round(pre.image_size / pre.crop_pct))
    if h <= w:
        return max(resize, int(resize * w / h)), resize
    return resize, max(resize, int(resize * h / w))


def eval_transform(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    h, w, _ = img.shape
    size = pre.image_size
    if (h, w) == (size, size) and int(round(size / pre.crop_pct)) == size:
        return img
    return _resize_center(img, (0, 0, w, h), _eval_size(h, w, pre), pre)


def _resize_center(img, box, new_size, pre: Preprocess) -> np.ndarray:
    """``img`` (uint8 HWC, or a PIL image) resized to ``new_size``, then its centre crop."""
    from PIL import Image

    nw, nh = new_size
    size = pre.image_size
    im = _to_pil(img).resize((nw, nh), Image.BILINEAR, box=box)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return _from_pil(im, 1 if im.mode == "L" else 3)


def eval_transform_file(path, channels: int, pre: Preprocess, data: bytes | None = None) -> np.ndarray:
    """``eval_transform(read_image(path, channels), pre)``, a JPEG decoded at the smallest
    DCT scale that still covers the resized image."""
    im, scale, (w, h) = open_reduced(path, channels, lambda w, h: _eval_size(h, w, pre), data)
    if (h, w) == (pre.image_size,) * 2 and int(round(pre.image_size / pre.crop_pct)) == pre.image_size:
        return _from_pil(im, channels)
    return _resize_center(im, (0, 0, w * scale, h * scale), _eval_size(h, w, pre), pre)
