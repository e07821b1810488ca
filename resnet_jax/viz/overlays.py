"""Pictures of explanations: heat-map overlays and labelled image grids, written as PNG.

    overlay(image, cam, alpha=0.5, colormap="jet")          -> uint8 (H, W, 3)
    save_overlay("cat.png", image, cam, label="tabby (281): 0.83")
    save_grid("filters.png", images, labels=[f"#{k}" for k in range(16)], title="conv2")

Images are float in [0, 1] (HW, HWC with 1 or 3 channels) or uint8; maps are in [0, 1].
Colour maps are matplotlib's; text is drawn with Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def to_uint8_rgb(image) -> np.ndarray:
    """HW / HWC (1, 3 or 4 channels), float [0, 1] or uint8 -> uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def colorize(cam, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map as float RGB (H, W, 3) through a matplotlib colour map."""
    from matplotlib import colormaps

    cmap = colormaps[colormap]
    return cmap(np.clip(np.asarray(cam, np.float32), 0.0, 1.0))[..., :3].astype(np.float32)


def overlay(image, cam, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * colormap(cam)`` as uint8 (H, W, 3).

    The map is resized (bilinear) to the image when their sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_uint8_rgb(image).astype(np.float32) / 255.0
    cam = np.asarray(cam, np.float32)
    if cam.shape != img.shape[:2]:
        from PIL import Image

        cam = np.asarray(Image.fromarray(cam, mode="F").resize(
            (img.shape[1], img.shape[0]), Image.BILINEAR))
    out = (1.0 - alpha) * img + alpha * colorize(cam, colormap)
    return to_uint8_rgb(out)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _with_caption(img: np.ndarray, text: str | None, height: int | None = None):
    """Stack a white caption strip with ``text`` above an RGB uint8 image."""
    from PIL import Image, ImageDraw

    if not text:
        return img
    lines = str(text).split("\n")
    fs = max(10, min(16, img.shape[1] // max(8, max(len(s) for s in lines) // 2 + 1)))
    h = height or (fs + 4) * len(lines) + 4
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + h), "white")
    canvas.paste(Image.fromarray(img), (0, h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * (fs + 4)), line, fill="black", font=_font(fs))
    return np.asarray(canvas)


def save_overlay(path, image, cam, label: str | None = None, alpha: float = 0.5,
                 colormap: str = "jet", scale: int | None = None) -> Path:
    """Write the overlay of ``cam`` on ``image`` as a PNG, with ``label`` above it
    (e.g. the class name and score). Small images are enlarged ``scale`` times."""
    from PIL import Image

    img = overlay(image, cam, alpha, colormap)
    scale = scale or max(1, 224 // max(img.shape[:2]))
    if scale > 1:
        img = np.asarray(Image.fromarray(img).resize(
            (img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_with_caption(img, label)).save(path)
    return path


def image_grid(images: Sequence, labels: Sequence[str] | None = None, ncols: int | None = None,
               title: str | None = None, scale: int | None = None, pad: int = 4) -> np.ndarray:
    """A labelled grid of images as uint8 (H, W, 3); small images are enlarged ``scale``
    times with nearest-neighbour so single pixels stay visible."""
    from PIL import Image

    tiles = [to_uint8_rgb(i) for i in images]
    if not tiles:
        raise ValueError("no images for the grid")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    scale = scale or max(1, 96 // max(h, w))
    if scale > 1:
        tiles = [np.asarray(Image.fromarray(t).resize((t.shape[1] * scale, t.shape[0] * scale),
                                                      Image.NEAREST)) for t in tiles]
        h, w = h * scale, w * scale
    labels = list(labels) if labels is not None else [None] * len(tiles)
    if len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} images")
    cap = 18 if any(labels) else 0
    ncols = ncols or int(np.ceil(np.sqrt(len(tiles))))
    nrows = int(np.ceil(len(tiles) / ncols))
    cell_h, cell_w = h + cap + pad, w + pad
    top = 24 if title else 0
    grid = np.full((top + nrows * cell_h + pad, ncols * cell_w + pad, 3), 255, np.uint8)
    for i, (tile, lab) in enumerate(zip(tiles, labels)):
        r, c = divmod(i, ncols)
        cell = _with_caption(tile, lab, cap) if cap else tile
        y0, x0 = top + pad + r * cell_h, pad + c * cell_w
        grid[y0:y0 + cell.shape[0], x0:x0 + cell.shape[1]] = cell
    if title:
        from PIL import ImageDraw

        canvas = Image.fromarray(grid)
        ImageDraw.Draw(canvas).text((pad, 4), title, fill="black", font=_font(16))
        grid = np.asarray(canvas)
    return grid


def save_grid(path, images: Sequence, labels: Sequence[str] | None = None,
              ncols: int | None = None, title: str | None = None, scale: int | None = None) -> Path:
    """Write ``image_grid(...)`` as a PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, labels, ncols, title, scale)).save(path)
    return path


__all__ = ["colorize", "image_grid", "overlay", "save_grid", "save_overlay", "to_uint8_rgb"]
