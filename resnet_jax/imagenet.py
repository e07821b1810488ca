"""ImageNet class names and preprocessing identical to torchvision's.

``preprocess`` reproduces ``torchvision.transforms._presets.ImageClassification`` (the
``weights.transforms()`` of every torchvision ResNet) on PIL images: resize the short side
to 256 with PIL's antialiased bilinear filter, centre-crop 224, scale to [0, 1],
normalise with the ImageNet mean and std. It returns HWC float32 (NHWC once batched).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

# The one ImageNet mean and std of the project (resnet_jax.data's default preprocessing
# reads them from here, so they are defined before the import of resnet_jax.data below).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE_SIZE = 256
CROP_SIZE = 224

from .data.images import ImageError as ImageError  # noqa: E402 (re-exported: predict raises it)
from .data.images import read_image  # noqa: E402


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in torchvision's order."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "imagenet_classes.txt must list 1000 classes"
    return names


def load_image(path, mode: str = "RGB"):
    """Open an image file as a PIL image in ``mode`` ("RGB" or "L"), decoded by the one
    reader every command shares (``resnet_jax.data.images.read_image``)."""
    from PIL import Image

    arr = read_image(path, 1 if mode == "L" else 3)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(size): the short side becomes ``size``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_short_side(img, size: int = RESIZE_SIZE):
    """torchvision ``F.resize(img, [size], BILINEAR, antialias=True)`` on a PIL image."""
    from PIL import Image

    h, w = resized_size(img.height, img.width, size)
    if (h, w) == (img.height, img.width):
        return img
    return img.resize((w, h), Image.BILINEAR)


def center_crop(img, size: int = CROP_SIZE):
    """torchvision ``F.center_crop`` on a PIL image (zero padding when it is too small)."""
    from PIL import Image

    if size > img.width or size > img.height:
        canvas = Image.new(img.mode, (max(size, img.width), max(size, img.height)))
        left = (size - img.width) // 2 if size > img.width else 0
        top = (size - img.height) // 2 if size > img.height else 0
        canvas.paste(img, (left, top))
        img = canvas
        if img.width == size and img.height == size:
            return img
    top = int(round((img.height - size) / 2.0))
    left = int(round((img.width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC with ImageNet mean and std."""
    x = pixels.astype(np.float32) / 255.0
    return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def preprocess(img, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
    """A PIL image (or a path) as the float32 HWC array torchvision's ResNets expect."""
    if isinstance(img, (str, Path)):
        img = load_image(img)
    img = img.convert("RGB")
    img = center_crop(resize_short_side(img, resize_size), crop_size)
    return normalize(np.asarray(img))


def denormalize(x: np.ndarray) -> np.ndarray:
    """Inverse of ``normalize``, clipped to [0, 1] (for showing an input)."""
    return np.clip(np.asarray(x) * np.asarray(STD) + np.asarray(MEAN), 0.0, 1.0)
