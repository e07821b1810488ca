"""The preprocessing a saved model was trained with, applied to any images given to it.

    m = load_model("runs/digits-my_resnet")        # (model, variables, preprocess, class_names, config)
    x = m.preprocess(["a.png", "b.png"])            # float32 NHWC, normalised as in evaluation
    shown = m.preprocess.pixels(["a.png"])          # the same crop in [0, 1], for pictures
    maps = gradcam(m.model, m.variables, ["a.png"], preprocess=m.preprocess)

A training run stores its ``resnet_jax.data.Preprocess`` and channel count in the model's
config; ``Preprocessing`` applies exactly ``resnet-jax evaluate``'s transform to them:
resize the shorter side to ``image_size / crop_pct``, centre-crop ``image_size``, then
``(x / 255 - mean) / std``. Models converted from torchvision (ImageNet stem, 3 channels,
nothing stored) get torchvision's preset; any other model without a stored one gets
[0, 1] pixels at its usual size, and ``preprocessing_for`` says so on stderr.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import ResNetJaxError

STORED = "stored with the model"
IMAGENET = "torchvision's ImageNet preset"
ASSUMED = "assumed"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images become a model's input: eval geometry, then per-channel normalisation."""

    image_size: int
    crop_pct: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: int = 3
    source: str = "given"

    def __post_init__(self):
        if int(self.image_size) <= 0 or not 0 < float(self.crop_pct) <= 1:
            raise ResNetJaxError(f"invalid preprocessing: image_size {self.image_size} must be "
                                 f"positive and crop_pct {self.crop_pct} in (0, 1]")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.channels):
                raise ResNetJaxError(f"preprocessing {name} {list(v)} has {len(v)} values for a "
                                     f"{self.channels}-channel model (expected 1 or {self.channels})")
        if any(s <= 0 for s in self.std):
            raise ResNetJaxError(f"preprocessing std {list(self.std)} must be positive")

    @classmethod
    def from_preprocess(cls, pre, channels: int, source: str = STORED) -> Preprocessing:
        """From a ``resnet_jax.data.Preprocess`` (what training stores) and a channel count."""
        return cls(int(pre.image_size), float(pre.crop_pct), tuple(pre.mean), tuple(pre.std),
                   int(channels), source)

    @classmethod
    def imagenet(cls) -> Preprocessing:
        from .. import imagenet

        return cls(imagenet.CROP_SIZE, imagenet.CROP_SIZE / imagenet.RESIZE_SIZE,
                   imagenet.MEAN, imagenet.STD, 3, IMAGENET)

    def describe(self) -> str:
        resize = int(round(self.image_size / self.crop_pct))
        geometry = (f"{self.image_size}x{self.image_size}" if resize == self.image_size
                    else f"resize {resize}, centre crop {self.image_size}")
        return (f"{geometry}, {self.channels} channel(s), (x - {list(self.mean)}) / "
                f"{list(self.std)} on pixels in [0, 1] ({self.source})")

    def pixels(self, images) -> np.ndarray:
        """float32 NHWC in [0, 1] after the eval resize and crop. ``images``: a path, a
        uint8 or [0, 1] float image (HW / HWC), an NHW / NHWC batch, or a list of these."""
        items = _as_items(images)
        if not items:
            raise ResNetJaxError("no images given")
        return np.stack([self._one(item, i) for i, item in enumerate(items)])

    def normalize(self, x):
        """``(x - mean) / std`` per channel on [0, 1] pixels (numpy or jax arrays)."""
        if isinstance(x, np.ndarray):
            return (x.astype(np.float32) - np.asarray(self.mean, np.float32)) / np.asarray(
                self.std, np.float32)
        import jax.numpy as jnp

        x = jnp.asarray(x, jnp.float32)
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    def denormalize(self, x) -> np.ndarray:
        """The [0, 1] pixels of a normalised batch (clipped)."""
        x = np.asarray(x, np.float32)
        return np.clip(x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32),
                       0.0, 1.0)

    def __call__(self, images) -> np.ndarray:
        """The normalised float32 NHWC batch the model takes."""
        return self.normalize(self.pixels(images))

    def _one(self, item, i: int) -> np.ndarray:
        from ..data import Preprocess
        from ..data.images import read_image
        from ..data.transforms import eval_transform

        pre = Preprocess(self.image_size, crop_pct=self.crop_pct)
        if isinstance(item, (str, Path)):
            item = read_image(item, self.channels)
        a = np.asarray(item)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or 0 in a.shape:
            raise ResNetJaxError(f"image {i} has shape {a.shape}; expected HW or HWC with 1, 3 "
                                 "or 4 channels")
        if a.dtype == np.uint8:
            a = _to_channels(a, self.channels)
            return eval_transform(a, pre).astype(np.float32) * np.float32(1.0 / 255.0)
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)) or a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ResNetJaxError(
                f"image {i} has values in [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]; give raw "
                "images as uint8 or floats in [0, 1] (already normalised ones need no preprocess=)")
        return _eval_float(_to_channels(a, self.channels), pre)


def _as_items(images) -> list:
    if isinstance(images, (str, Path)):
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    a = np.asarray(images)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4)):
        return [a]
    if a.ndim in (3, 4):
        return list(a)
    raise ResNetJaxError(f"expected an image (HW or HWC) or a batch (NHW or NHWC), got shape {a.shape}")


def _to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """Drop alpha, then convert as PIL does (L -> RGB repeats, RGB -> L by ITU-R 601-2;
    uint8 through PIL itself, for its rounding)."""
    from PIL import Image

    c = a.shape[-1]
    if c in (2, 4):
        a, c = a[..., : c - 1], c - 1
    if c == channels:
        return a
    if c == 1:
        return np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).convert("L"))[..., None]
    return (a @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _eval_float(a: np.ndarray, pre) -> np.ndarray:
    """``eval_transform``'s geometry on a float image (PIL's bilinear in mode "F")."""
    from PIL import Image

    h, w, c = a.shape
    size, resize = pre.image_size, int(round(pre.image_size / pre.crop_pct))
    if (h, w) == (size, size) and resize == size:
        return np.clip(a, 0.0, 1.0)
    if h <= w:
        nh, nw = resize, max(resize, int(resize * w / h))
    else:
        nw, nh = resize, max(resize, int(resize * h / w))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    planes = []
    for k in range(c):
        im = Image.fromarray(np.ascontiguousarray(a[..., k]), mode="F").resize((nw, nh),
                                                                              Image.BILINEAR)
        planes.append(np.asarray(im.crop((left, top, left + size, top + size)), np.float32))
    return np.clip(np.stack(planes, -1), 0.0, 1.0)


def is_imagenet_model(model) -> bool:
    from ..models import ResNet

    return isinstance(model, ResNet) and model.in_channels == 3 and model.stem == "imagenet"


def preprocessing_for(model, config: dict | None = None, *, where=None,
                      say=None) -> Preprocessing:
    """The preprocessing stored in ``config`` (a saved model's), torchvision's preset for an
    ImageNet ResNet, or - said in one line through ``say`` (default: stderr) - [0, 1]
    pixels at the model's usual size."""
    from ..data import Preprocess
    from ..models import input_shape

    config = config or {}
    channels = int(config.get("in_channels", getattr(model, "in_channels", 3)))
    if config.get("preprocess"):
        try:
            pre = Preprocess.from_json(config["preprocess"])
        except (TypeError, ValueError, AttributeError) as e:
            raise ResNetJaxError(f"the preprocessing stored with {where or 'the model'} cannot "
                                 f"be read ({e}): {config['preprocess']!r}") from None
        return Preprocessing.from_preprocess(pre, channels)
    if is_imagenet_model(model):
        return Preprocessing.imagenet()
    size = int(input_shape(model)[1])
    out = Preprocessing(size, 1.0, (0.0,) * channels, (1.0,) * channels, channels,
                        f"{ASSUMED}: none is stored with the model")
    (say or _stderr)(f"note: {where or 'the model'} stores no preprocessing; assuming "
                     f"{out.describe()}")
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class SavedModel(NamedTuple):
    """A saved model with what it needs to read images and name its classes."""

    model: Any
    variables: dict
    preprocess: Preprocessing
    class_names: list[str] | None
    config: dict


def load_model(path, say=None) -> SavedModel:
    """Read a model directory or training run: the model, its variables, its
    ``Preprocessing`` and class names (ImageNet's for a 1000-class model without any)."""
    from .. import imagenet
    from ..checkpoint import load, load_config

    model, variables = load(path)
    config = load_config(path)
    pre = preprocessing_for(model, config, where=str(path), say=say)
    names = config.get("class_names")
    if names is None and int(getattr(model, "num_classes", 0)) == 1000:
        names = list(imagenet.class_names())
    return SavedModel(model, variables, pre, list(names) if names else None, config)


__all__ = ["Preprocessing", "SavedModel", "is_imagenet_model", "load_model", "preprocessing_for"]
