"""Datasets: labelled images held in memory or read from files on demand.

Every source gives an ``ImageSet``: uint8 images in HWC layout (1 or 3 channels) and int32
labels, with class names and the preprocessing that suits it. Sources:

- ``digits``: scikit-learn's handwritten digits (1797 8x8 grayscale images, 10 classes);
- ``faces``: scikit-image's faces-vs-non-faces subset of LFW (200 25x25 grayscale, 2 classes);
- an image folder laid out one sub-folder per class (``folder:PATH`` or just ``PATH``);
  with ``train/`` and ``val/`` (or ``test/``) sub-folders those are the splits;
- MNIST-style IDX files (``mnist:PATH``: ``train-images-idx3-ubyte[.gz]`` and friends);
- ``synthetic``: class-dependent random patterns, for tests.

Nothing here imports jax.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ResNetJaxError
from ..imagenet import MEAN as IMAGENET_MEAN
from ..imagenet import STD as IMAGENET_STD
from .images import read_image, read_image_reduced  # noqa: F401 (read_image re-exported)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DatasetError(ResNetJaxError):
    """A data set that cannot be read or used as asked."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How images of a data set are prepared for a model.

    Training: random-resized-crop (area fraction ``scale``, aspect ``ratio``) to
    ``image_size`` and, if ``hflip``, a horizontal flip with probability 1/2.
    Evaluation: resize the shorter side to ``image_size / crop_pct``, centre crop.
    Then, on the device, ``(pixel / 255 - mean) / std`` per channel.
    """

    image_size: int
    crop_pct: float = 0.875
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


@dataclasses.dataclass
class ImageSet:
    """Labelled images: in memory (``images``, N x H x W x C uint8), as file ``paths``, or
    as ``packed`` records (``resnet_jax.data.packed.Records``: encoded images in shards)."""

    name: str
    class_names: list[str]
    labels: np.ndarray
    channels: int
    images: np.ndarray | None = None
    paths: list[str] | None = None
    preprocess: Preprocess | None = None
    strict: bool = False  # a loader of these files stops at an unreadable one (else skips it)
    packed: object | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32)
        if sum(x is not None for x in (self.images, self.paths, self.packed)) != 1:
            raise ValueError("an ImageSet holds one of images, paths or packed records")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 HWC with ``channels`` channels."""
        if self.images is not None:
            return self.images[i]
        name, data = self.source(i)
        return read_image_reduced(name, self.channels, None, data)[0]

    def source(self, i: int) -> tuple[str, bytes | None]:
        """Where image ``i`` of a file-backed set is: (its path, None) or, packed, (its
        name, its encoded bytes)."""
        if self.paths is not None:
            return self.paths[i], None
        return self.packed.read(i)

    def subset(self, indices, name: str | None = None) -> ImageSet:
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self,
            name=name or self.name,
            labels=self.labels[indices],
            images=None if self.images is None else self.images[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            packed=None if self.packed is None else self.packed.subset(indices),
        )


# --------------------------------------------------------------------------- embedded


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(images (1797, 8, 8) float64 in 0..16, labels)``.

    Read from the CSV file scikit-learn installs, found without importing scikit-learn
    (its import is a large share of the training command's start; docs/performance.md).
    That file's place is scikit-learn's private layout, so when it is not there, or does
    not hold the 1797 digits, the public ``sklearn.datasets.load_digits`` reads them.
    """
    found = _digits_csv()
    if found is not None:
        return found
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _digits_csv() -> tuple[np.ndarray, np.ndarray] | None:
    """The digits from ``sklearn/datasets/data/digits.csv.gz``, or None."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        try:
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",", ndmin=2)
        except (OSError, ValueError, EOFError):
            continue
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    return None


def digits() -> ImageSet:
    """scikit-learn's 8x8 handwritten digits, pixel values 0..16 scaled to 0..255."""
    raw, labels = load_digits_arrays()
    images = np.round(raw * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSet(
        "digits", [str(c) for c in range(10)], labels, 1, images=images,
        preprocess=Preprocess(12, crop_pct=1.0, scale=(0.8, 1.0), ratio=(0.85, 1.18),
                              hflip=False, mean=(0.3,), std=(0.4,)),
    )


def faces() -> ImageSet:
    """scikit-image's LFW subset: 100 faces then 100 non-faces, 25x25 grayscale."""
    from skimage.data import lfw_subset

    x = lfw_subset()
    images = np.round(x * 255.0).astype(np.uint8)[..., None]
    labels = np.array([1] * 100 + [0] * 100, np.int32)
    return ImageSet(
        "faces", ["non-face", "face"], labels, 1, images=images,
        preprocess=Preprocess(32, crop_pct=1.0, scale=(0.6, 1.0), hflip=True,
                              mean=(0.5,), std=(0.25,)),
    )


def synthetic(num_classes: int = 4, size: int = 16, n: int = 256, channels: int = 3,
              seed: int = 0) -> ImageSet:
    """Class-dependent patterns plus noise: each class a fixed random template."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (num_classes, size, size, channels))
    labels = np.arange(n) % num_classes
    noise = rng.normal(0, 40, (n, size, size, channels))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    mean = (0.5,) * channels
    std = (0.3,) * channels
    return ImageSet(
        "synthetic", [f"class{i}" for i in range(num_classes)], labels, channels, images=images,
        preprocess=Preprocess(size, crop_pct=1.0, scale=(0.5, 1.0), hflip=True, mean=mean, std=std),
    )


# --------------------------------------------------------------------------- image folders


def image_folder(root, channels: int = 3, strict: bool = False, workers: int = 4,
                 class_names: Sequence[str] | None = None, name: str | None = None) -> ImageSet:
    """Images under ``root/<class>/``; classes are the sub-folders in sorted order.

    Listing reads no pixels: a damaged file is found when a batch reads it, then skipped
    and counted by the loader, or with ``strict`` reported as an error
    (``resnet_jax.data.pipeline``). ``check_data`` reads every file up front. ``workers``
    is unused (kept for callers of the former eager check).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = found
        if not class_names:
            raise DatasetError(
                f"{root} has no class sub-folders; expected one folder per class, "
                f"e.g. {root}/cat/001.jpg and {root}/dog/001.jpg"
            )
    paths, labels, empty = [], [], []
    for label, cls in enumerate(class_names):
        folder = root / cls
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            empty.append(cls)
        paths += files
        labels += [label] * len(files)
    if empty:
        raise DatasetError(
            f"class folder(s) {empty} under {root} hold no images "
            f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
        )

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    return ImageSet(
        name or root.name, list(class_names), np.array(labels, np.int32), channels, paths=paths,
        preprocess=Preprocess(224, mean=mean, std=std), strict=strict,
    )


def _image_files(folder: Path) -> list[str]:
    """The image files under ``folder`` and its sub-folders (not those reached through a
    link to a folder), sorted: one ``scandir`` per folder, whose entries' cached types save
    a stat per file."""
    found, todo = [], [str(folder)]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                    found.append(e.path)
    return sorted(found)


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An IDX file (MNIST's format), optionally gzipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: its IDX header is incomplete")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} is truncated or padded: its header promises shape {shape} "
            f"({expected} bytes of data), the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem.replace("-idx", ".idx"), stem + ".gz", stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root} has no {stem}[.gz]; expected MNIST's four IDX files there")


def mnist(root) -> dict[str, ImageSet]:
    """MNIST-style IDX files: ``train-*`` and ``t10k-*`` images and labels."""
    root = Path(root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
        if images.ndim != 3 or len(images) != len(labels):
            raise DatasetError(
                f"{root}: {prefix} images of shape {images.shape} and {len(labels)} labels do not match"
            )
        out[split] = ImageSet(
            f"mnist-{split}", [str(i) for i in range(10)], labels, 1,
            images=images.astype(np.uint8)[..., None],
            preprocess=Preprocess(28, crop_pct=1.0, scale=(0.8, 1.0), hflip=False,
                                  mean=(0.1307,), std=(0.3081,)),
        )
    return out


# --------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held-out) with ``fraction`` of each class held out (at least one)."""
    rng = np.random.default_rng(seed)
    rest, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * fraction)) if fraction > 0 else 0
        if fraction > 0 and len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


SPLIT_SEED = 0  # the held-out sets do not move with the training seed


def _split(data: ImageSet, test_fraction: float, val_fraction: float) -> dict[str, ImageSet]:
    train_idx, test_idx = stratified_split(data.labels, test_fraction, SPLIT_SEED)
    out = {"test": data.subset(test_idx, f"{data.name}-test")}
    train = data.subset(train_idx, f"{data.name}-train")
    if val_fraction > 0:
        fit, val = stratified_split(train.labels, val_fraction, SPLIT_SEED + 1)
        out["val"] = train.subset(val, f"{data.name}-val")
        train = train.subset(fit, f"{data.name}-train")
    out["train"] = train
    return out


_SYNTHETIC_RANGES = {"classes": (2, "an integer >= 2"), "size": (1, "an integer >= 1"),
                     "n": (1, "an integer >= 1"), "channels": (1, "1 or 3"), "seed": (0, "an integer >= 0")}


def _parse_synthetic(spec: str) -> dict:
    opts = {}
    _, _, rest = spec.partition(":")
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key not in _SYNTHETIC_RANGES:
            raise DatasetError(
                f"unknown synthetic option {key!r}; use e.g. synthetic:classes=4,size=16,n=256,channels=3"
            )
        low, rule = _SYNTHETIC_RANGES[key]
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (key == "channels" and number not in (1, 3)):
            raise DatasetError(f"synthetic option {key} must be {rule}; got {value!r} in {spec!r}")
        opts["num_classes" if key == "classes" else key] = number
    if opts.get("n", 256) < opts.get("num_classes", 4):
        raise DatasetError(f"synthetic option n must be at least classes (one image per class); got {spec!r}")
    return opts


def _unknown_split_classes(root: Path, split: str, known: Sequence[str], unknown_classes: str) -> None:
    """Refuse (or, with ``unknown_classes='skip'``, warn about) classes of ``root/split`` that
    ``root/train`` lacks: their images have no label the model could predict."""
    found = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith("."))
    extra = [c for c in found if c not in set(known)]
    if not extra:
        return
    if unknown_classes == "skip":
        warnings.warn(f"class folder(s) {extra} under {root / split} are not in {root / 'train'}; "
                      "their images are left out", stacklevel=3)
        return
    raise DatasetError(
        f"class folder(s) {extra} under {root / split} have no counterpart in {root / 'train'} "
        f"(its classes: {', '.join(known)}); add them to train/, remove them, or pass "
        "--skip-unknown-classes to leave their images out"
    )


def folder_sets(root, channels: int = 3, strict: bool = False,
                unknown_classes: str = "error") -> dict[str, ImageSet]:
    """An image folder's sets as listed: ``train`` and ``val`` and/or ``test`` when it has
    those sub-folders (their classes are train's), else ``all`` (split by ``load_splits``)."""
    root = Path(root)
    subs = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if not ("train" in subs and subs & {"val", "test"}):
        return {"all": image_folder(root, channels, strict)}
    train = image_folder(root / "train", channels, strict, name=f"{root.name}-train")
    out = {"train": train}
    for split in ("val", "test"):
        if split in subs:
            _unknown_split_classes(root, split, train.class_names, unknown_classes)
            out[split] = image_folder(root / split, channels, strict, class_names=train.class_names,
                                      name=f"{root.name}-{split}")
    return out


DATASETS = ("digits", "faces", "synthetic", "mnist:PATH", "folder:PATH", "PATH")


def load_splits(spec: str, *, test_fraction: float = 0.2, val_fraction: float = 0.1,
                channels: int | None = None, strict: bool = False,
                unknown_classes: str = "error") -> dict[str, ImageSet]:
    """The ``train``, ``val`` (when there is one) and ``test`` sets named by ``spec``.

    Embedded and single-folder sets are split per class with a fixed seed
    (``test_fraction`` of each class held out for test, then ``val_fraction`` of the rest
    for validation). A folder with ``train/`` and ``val/`` or ``test/`` sub-folders and
    MNIST's own files keep their splits; a class folder found in ``val/`` or ``test/`` but
    not in ``train/`` is an error, or with ``unknown_classes='skip'`` a warning.
    """
    kind, _, arg = spec.partition(":")
    if spec == "digits":
        return _split(digits(), test_fraction, val_fraction)
    if spec == "faces":
        return _split(faces(), test_fraction, val_fraction)
    if kind == "synthetic":
        return _split(synthetic(**_parse_synthetic(spec)), test_fraction, val_fraction)
    if kind == "mnist":
        sets = mnist(arg)
        if val_fraction > 0:
            fit, val = stratified_split(sets["train"].labels, val_fraction, SPLIT_SEED + 1)
            sets["val"] = sets["train"].subset(val, "mnist-val")
            sets["train"] = sets["train"].subset(fit, "mnist-train")
        return sets
    if kind == "folder" or Path(spec).is_dir():
        from .packed import is_packed, packed_sets

        root = Path(arg if kind == "folder" else spec)
        sets = (packed_sets(root, channels, strict) if is_packed(root)
                else folder_sets(root, channels or 3, strict, unknown_classes))
        if "all" in sets:
            return _split(sets["all"], test_fraction, val_fraction)
        return {**sets, "test": sets.get("test", sets.get("val"))}
    raise DatasetError(
        f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)} "
        "(PATH: a folder with one sub-folder of images per class)"
    )
