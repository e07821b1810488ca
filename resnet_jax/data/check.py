"""``check_data``: read every image of a folder data set once, up front, and list the ones
that cannot be read (``resnet-jax check-data PATH``). Training does not need it: its
loader skips and counts an unreadable image when it meets one."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .datasets import DatasetError, image_folder
from .images import ImageError, ordered_map, read_image


@dataclasses.dataclass
class CheckReport:
    """What ``check_data`` found: images read and ``(path, reason)`` of each unreadable one."""

    checked: int
    unreadable: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def summary(self) -> str:
        if self.ok:
            return f"all {self.checked} images can be read"
        shown = "; ".join(reason for _, reason in self.unreadable[:5])
        more = f" (and {len(self.unreadable) - 5} more)" if len(self.unreadable) > 5 else ""
        return f"{len(self.unreadable)} of {self.checked} images cannot be read: {shown}{more}"


def _folders(root: Path) -> list[Path]:
    """The class-folder roots under ``root``: its train/val/test splits, or itself."""
    if not root.is_dir():
        raise DatasetError(f"check-data: {root} does not exist or is not a directory; "
                           "expected an image folder (one sub-folder per class)")
    splits = [root / s for s in ("train", "val", "test") if (root / s).is_dir()]
    return splits if (root / "train").is_dir() and len(splits) > 1 else [root]


def _read(path: str, channels: int) -> str | None:
    try:
        read_image(path, channels)
        return None
    except ImageError as e:
        return str(e)


def check_data(path, channels: int = 3, workers: int = 4, progress: bool = True) -> CheckReport:
    """Decode every image under ``path`` (a folder as training reads it) with a progress
    bar; the report lists the unreadable ones, in listing order."""
    from tqdm import tqdm

    paths = [p for root in _folders(Path(path)) for p in image_folder(root, channels).paths]
    bad = []
    with ThreadPoolExecutor(max(1, int(workers))) as pool, \
            tqdm(total=len(paths), unit="img", disable=not progress, leave=False) as bar:
        reasons = ordered_map(pool, lambda p: _read(p, channels), paths)
        for p, reason in zip(paths, reasons, strict=True):
            bar.update(1)
            if reason is not None:
                bad.append((p, reason))
    return CheckReport(len(paths), bad)
