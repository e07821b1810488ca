"""The one image reader: every command and the training loader decode files through it.

``read_image(path, channels)`` gives uint8 HWC with 1 or 3 channels. Transparency is
composited onto white (as a viewer shows it); 16-bit and float images (``I;16``, ``I``,
``F``) are scaled so their maximum becomes 255. A file that is missing, damaged, not an
image or larger than PIL's decompression-bomb limit raises ``ImageError``, one line
naming the file.

Nothing here imports jax.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import ResNetJaxError

IMAGE_FORMATS = "JPEG, PNG, BMP, GIF, TIFF, WebP, PPM or PGM"


class ImageError(ResNetJaxError):
    """An image file that cannot be read."""


def read_image(path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 HWC; grayscale, palette, RGBA, 16-bit and float
    images are converted to ``channels`` (1 or 3)."""
    return read_image_reduced(path, channels, None)[0]


def read_image_reduced(path, channels: int, need, data: bytes | None = None,
                       ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``(image, scale, (width, height))``: the file decoded as ``read_image`` does, a JPEG
    at the smallest DCT scale (1, 1/2, 1/4 or 1/8) whose size still covers ``need``.

    ``need(width, height)`` is called with the file's full size (read from its header, no
    pixels decoded) and returns the smallest ``(width, height)`` the decode may give, or
    None for full size. ``scale`` is the decoded size over the full size (1.0 when not
    reduced): a pixel coordinate ``x`` of the full image is ``x * scale`` in the result.
    With ``data`` (an encoded image held in memory) that is decoded and ``path`` only names it.
    """
    im, scale, full = open_reduced(path, channels, need, data)
    arr = np.asarray(im, np.uint8)
    return (arr[..., None] if arr.ndim == 2 else arr), scale, full


def open_reduced(path, channels: int, need, data: bytes | None = None):
    """``read_image_reduced`` giving the decoded PIL image (mode "L" or "RGB") instead of
    an array, for callers that resample it next: no full-size copy into numpy."""
    import io

    from PIL import Image, UnidentifiedImageError

    if data is None:
        path = Path(path)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise ImageError(f"image {path} {what}")
    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                full = im.size
                scale = _draft(im, need(*full) if need is not None else None)
                im.load()
                im = _convert(im, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            f"cannot read image {path}: it has more pixels than PIL.Image.MAX_IMAGE_PIXELS "
            f"({Image.MAX_IMAGE_PIXELS}) allows, so it may be a decompression bomb ({e})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        said = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "its stored bytes", str(e))
        raise ImageError(
            f"cannot read image {path}: it is truncated or not an image file "
            f"(expected a {IMAGE_FORMATS}; {type(e).__name__}: {said})"
        ) from None
    return im, scale, full


def _draft(im, size) -> float:
    """Ask a JPEG decoder for its smallest DCT scale giving at least ``size``; the scale."""
    if size is None or im.format != "JPEG":
        return 1.0
    size = (max(1, int(size[0])), max(1, int(size[1])))
    width = im.size[0]
    got = im.draft(None, size)  # (mode, (0, 0, width / s, height / s)) for DCT scale 1/s
    return 1.0 if got is None else got[1][2] / width


def ordered_map(pool, fn, items, window: int = 256):
    """``pool.map(fn, items)`` in order, with at most ``window`` items submitted ahead (a
    plain ``pool.map`` submits every item at once: a million futures for a million files)."""
    items = list(items)
    for start in range(0, len(items), window):
        yield from pool.map(fn, items[start:start + window])


def _convert(im, channels: int):
    """A PIL image in mode "L" (channels 1) or "RGB" (otherwise)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency onto white, as a viewer shows it, rather than dropping alpha.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, np.float64)
        hi = arr.max() or 1.0
        im = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8))
    mode = "L" if channels == 1 else "RGB"
    return im if im.mode == mode else im.convert(mode)


__all__ = ["IMAGE_FORMATS", "ImageError", "ordered_map", "open_reduced", "read_image",
           "read_image_reduced"]
