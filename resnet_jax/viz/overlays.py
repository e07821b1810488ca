"""Pictures of explanations: heat-map figures and labelled image grids, written as PNG.

    overlay(image, cam, alpha=0.5, colormap="jet")          -> uint8 (H, W, 3)
    save_overlay("cat.png", image, cam, label="tabby (281): 0.83")
    save_cam_figure("two.png", image, [cam_a, cam_b], ["bighorn: 0.61", "ram: 0.22"])
    save_grid("filters.png", images, labels=[f"#{k}" for k in range(16)], title="conv2")

Images are float in [0, 1] (HW, HWC with 1 or 3 channels) or uint8; maps are in [0, 1].
Layout rules: captions sit in their own strips above or below the pictures, never on
them, and wrap to the width they have; small images are enlarged with nearest-neighbour
so each pixel stays a sharp square; a figure with heat maps has one colour bar. Files
are written to a temporary sibling and renamed into place, so no partial PNG is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FONT_SIZE = 13
MIN_SIDE = 112  # pictures smaller than this are enlarged by a whole factor
BAR_WIDTH = 14


def to_uint8_rgb(image) -> np.ndarray:
    """HW / HWC (1, 3 or 4 channels), float [0, 1] or uint8 -> uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def colorize(cam, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map as float RGB (H, W, 3) through a matplotlib colour map."""
    cmap = get_colormap(colormap)
    return cmap(np.clip(np.asarray(cam, np.float32), 0.0, 1.0))[..., :3].astype(np.float32)


def get_colormap(name: str):
    """matplotlib's colour map ``name``, or a ValueError listing some valid ones."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        common = "jet, viridis, inferno, magma, plasma, turbo, hot, gray"
        raise ValueError(f"unknown colour map {name!r}; use a matplotlib colour map such as "
                         f"{common}") from None


def overlay(image, cam, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * colormap(cam)`` as uint8 (H, W, 3).

    The map is resized (bilinear) to the image when their sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_uint8_rgb(image).astype(np.float32) / 255.0
    out = (1.0 - alpha) * img + alpha * colorize(_fit_map(cam, img.shape[:2]), colormap)
    return to_uint8_rgb(out)


def _fit_map(cam, hw) -> np.ndarray:
    cam = np.asarray(cam, np.float32)
    if cam.shape != tuple(hw):
        from PIL import Image

        cam = np.asarray(Image.fromarray(cam, mode="F").resize((hw[1], hw[0]), Image.BILINEAR))
    return cam


def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def enlarge(img: np.ndarray, scale: int | None = None, min_side: int = MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor (default: to at least ``min_side``)."""
    from PIL import Image

    scale = scale or max(1, -(-min_side // max(img.shape[:2])))
    if scale <= 1:
        return img
    return np.asarray(Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                                  Image.NEAREST))


def wrap(text: str | None, width: int, font=None) -> list[str]:
    """``text`` broken into lines that fit ``width`` pixels (words, else characters)."""
    if not text:
        return []
    font = font or _font()
    out: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if font.getlength(cand) <= width:
                line = cand
                continue
            if line:
                out.append(line)
            while font.getlength(word) > width and len(word) > 1:
                k = max(1, max(i for i in range(1, len(word) + 1)
                               if font.getlength(word[:i]) <= width or i == 1))
                out.append(word[:k])
                word = word[k:]
            line = word
        out.append(line)
    return out


def caption_strip(text: str | None, width: int, lines: int | None = None, font=None,
                  align: str = "center") -> np.ndarray:
    """A white strip ``width`` wide holding ``text`` wrapped to fit (``lines`` fixes the
    number of text lines, so the strips of one row line up)."""
    from PIL import Image, ImageDraw

    font = font or _font()
    rows = wrap(text, max(8, width - 4), font)
    n = max(len(rows), lines or 0)
    line_h = int(getattr(font, "size", FONT_SIZE)) + 4
    canvas = Image.new("RGB", (width, n * line_h + (4 if n else 0)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        x = (width - font.getlength(row)) / 2 if align == "center" else 2
        draw.text((max(0, x), 2 + i * line_h), row, fill="black", font=font)
    return np.asarray(canvas)


def caption_lines(texts: Sequence[str | None], width: int, font=None) -> int:
    return max([len(wrap(t, max(8, width - 4), font)) for t in texts] + [0])


def _stack(rows: Sequence[np.ndarray], pad: int = 0) -> np.ndarray:
    """Centre ``rows`` (uint8 RGB) one under another on white."""
    w = max(r.shape[1] for r in rows)
    h = sum(r.shape[0] for r in rows) + pad * (len(rows) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    y = 0
    for r in rows:
        x = (w - r.shape[1]) // 2
        out[y:y + r.shape[0], x:x + r.shape[1]] = r
        y += r.shape[0] + pad
    return out


def _side_by_side(cells: Sequence[np.ndarray], pad: int = 6) -> np.ndarray:
    h = max(c.shape[0] for c in cells)
    w = sum(c.shape[1] for c in cells) + pad * (len(cells) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for c in cells:
        out[:c.shape[0], x:x + c.shape[1]] = c
        x += c.shape[1] + pad
    return out


def colorbar(height: int, colormap: str = "jet", font=None) -> np.ndarray:
    """A vertical colour bar (1 at the top, 0 at the bottom) with tick labels."""
    from PIL import Image, ImageDraw

    font = font or _font()
    ramp = np.linspace(1.0, 0.0, max(2, height))[:, None].repeat(BAR_WIDTH, axis=1)
    bar = to_uint8_rgb(colorize(ramp, colormap))
    label_w = int(font.getlength("0.5")) + 6
    canvas = Image.new("RGB", (BAR_WIDTH + label_w, bar.shape[0] + FONT_SIZE), "white")
    off = FONT_SIZE // 2
    canvas.paste(Image.fromarray(bar), (0, off))
    draw = ImageDraw.Draw(canvas)
    for v in (1.0, 0.5, 0.0):
        y = off + int(round((1.0 - v) * (bar.shape[0] - 1)))
        draw.line([(BAR_WIDTH, y), (BAR_WIDTH + 2, y)], fill="black")
        draw.text((BAR_WIDTH + 4, y - off), f"{v:g}", fill="black", font=font)
    return np.asarray(canvas)


def cam_figure(image, cams: Sequence, labels: Sequence[str | None] | None = None,
               title: str | None = None, alpha: float = 0.5, colormap: str = "jet",
               show_map: bool = True, scale: int | None = None) -> np.ndarray:
    """One row: the image, then for each map the map itself (if ``show_map``) and its
    overlay, a caption under each, ``title`` above, one colour bar at the right."""
    img = enlarge(to_uint8_rgb(image), scale)
    hw = img.shape[:2]
    labels = list(labels) if labels is not None else [None] * len(cams)
    if len(labels) != len(cams):
        raise ValueError(f"{len(labels)} labels for {len(cams)} maps")
    pictures, captions = [img], ["input"]
    for cam, lab in zip(cams, labels):
        cam = _fit_map(cam, hw)
        if show_map:
            pictures.append(to_uint8_rgb(colorize(cam, colormap)))
            captions.append(f"map: {lab}" if lab else "map")
        pictures.append(overlay(img, cam, alpha, colormap))
        captions.append(lab or "overlay")
    n = caption_lines(captions, hw[1])
    cells = [_stack([p, caption_strip(c, hw[1], n)]) for p, c in zip(pictures, captions)]
    cells.append(_stack([colorbar(hw[0], colormap),
                         np.full((cells[0].shape[0] - hw[0] - FONT_SIZE, 1, 3), 255, np.uint8)]))
    row = _side_by_side(cells)
    if title:
        row = _stack([caption_strip(title, row.shape[1]), row])
    return _border(row)


def comparison_figure(image, cams: Sequence, methods: Sequence[str], title: str | None = None,
                      alpha: float = 0.5, colormap: str = "jet",
                      scale: int | None = None) -> np.ndarray:
    """One image explained by several methods: one row per method (the input, the map, the
    overlay, a colour bar), the method's name in a strip above its row, ``title`` on top.
    Every label sits outside the pictures."""
    if len(cams) != len(methods):
        raise ValueError(f"{len(methods)} method names for {len(cams)} maps")
    rows = [cam_figure(image, [cam], [None], title=name, alpha=alpha, colormap=colormap,
                       scale=scale) for cam, name in zip(cams, methods)]
    grid = _stack(rows)
    if title:
        grid = _stack([caption_strip(title, grid.shape[1]), grid])
    return grid


def save_comparison(path, image, cams: Sequence, methods: Sequence[str], title: str | None = None,
                    **options) -> Path:
    """Write ``comparison_figure(...)`` as a PNG."""
    return write_png(path, comparison_figure(image, cams, methods, title, **options))


def _border(img: np.ndarray, pad: int = 6) -> np.ndarray:
    return np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)


def save_overlay(path, image, cam, label: str | None = None, alpha: float = 0.5,
                 colormap: str = "jet", scale: int | None = None) -> Path:
    """Write the input, the map and their overlay side by side with ``label`` (e.g. the
    class name and score) above and a colour bar. Small images are enlarged."""
    return write_png(path, cam_figure(image, [cam], [None], title=label, alpha=alpha,
                                      colormap=colormap, scale=scale))


def save_cam_figure(path, image, cams: Sequence, labels: Sequence[str | None] | None = None,
                    title: str | None = None, **options) -> Path:
    """Write ``cam_figure(...)`` as a PNG."""
    return write_png(path, cam_figure(image, cams, labels, title, **options))


def dead_tile(h: int, w: int) -> np.ndarray:
    """A flat grey tile crossed out: a unit with nothing to show."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (w, h), (225, 225, 225))
    draw = ImageDraw.Draw(canvas)
    draw.line([(0, 0), (w - 1, h - 1)], fill=(160, 160, 160), width=2)
    draw.line([(0, h - 1), (w - 1, 0)], fill=(160, 160, 160), width=2)
    return np.asarray(canvas)


def image_grid(images: Sequence, labels: Sequence[str] | None = None, ncols: int | None = None,
               title: str | None = None, scale: int | None = None, pad: int = 6) -> np.ndarray:
    """A labelled grid as uint8 (H, W, 3): captions under the tiles, ``title`` above,
    wrapped to the grid's width. Small images are enlarged ``scale`` times with
    nearest-neighbour so single pixels stay visible. A ``None`` image is a dead tile."""
    if len(images) == 0:
        raise ValueError("no images for the grid")
    real = [to_uint8_rgb(i) for i in images if i is not None]
    if not real:
        raise ValueError("every image of the grid is None")
    h = max(t.shape[0] for t in real)
    w = max(t.shape[1] for t in real)
    scale = scale or max(1, -(-MIN_SIDE // max(h, w)))
    tiles = [dead_tile(h * scale, w * scale) if i is None else enlarge(to_uint8_rgb(i), scale)
             for i in images]
    h, w = h * scale, w * scale
    labels = list(labels) if labels is not None else [None] * len(tiles)
    if len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} images")
    ncols = ncols or int(np.ceil(np.sqrt(len(tiles))))
    nrows = int(np.ceil(len(tiles) / ncols))
    lines = caption_lines(labels, w)
    cells = [_stack([t, caption_strip(lab, w, lines)]) if lines else t
             for t, lab in zip(tiles, labels)]
    cell_h = max(c.shape[0] for c in cells)
    grid = np.full((nrows * (cell_h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, ncols)
        y0, x0 = pad + r * (cell_h + pad), pad + c * (w + pad)
        grid[y0:y0 + cell.shape[0], x0:x0 + cell.shape[1]] = cell
    if title:
        grid = _stack([caption_strip(title, max(grid.shape[1], 160)), grid])
    return grid


def save_grid(path, images: Sequence, labels: Sequence[str] | None = None,
              ncols: int | None = None, title: str | None = None, scale: int | None = None) -> Path:
    """Write ``image_grid(...)`` as a PNG."""
    return write_png(path, image_grid(images, labels, ncols, title, scale))


def write_png(path, pixels: np.ndarray) -> Path:
    """Write uint8 RGB ``pixels`` to ``path`` through a temporary sibling and a rename, so
    an interrupted or failed write leaves no partial file (``resnet_jax.files``)."""
    from PIL import Image

    from ..files import write_atomically

    image = Image.fromarray(np.ascontiguousarray(pixels))
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


__all__ = ["cam_figure", "caption_strip", "colorbar", "colorize", "comparison_figure", "dead_tile",
           "enlarge", "get_colormap", "image_grid", "overlay", "save_cam_figure",
           "save_comparison", "save_grid", "save_overlay", "to_uint8_rgb", "wrap", "write_png"]
