"""Images as the model takes them: any list or batch of images converted to a float32
NHWC batch of the model's channels and size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ResNetJaxError


def _to_float(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.asarray(a, np.float32)  # no copy when it already is float32


def expected_hw(model) -> tuple[int, int] | None:
    """The input size a model requires, or None when it takes any size (ResNets)."""
    from ..models import DigitCNN, input_shape

    if isinstance(model, DigitCNN):
        return tuple(input_shape(model)[1:3])
    return None


def prepare_images(model, images, image_size=None) -> jnp.ndarray:
    """A float32 NHWC batch the model accepts.

    Accepts one image (HW or HWC) or many (a list of images of any sizes, or an NHWC /
    NHW array); uint8 is scaled to [0, 1]. Channels are converted to the model's: a
    grayscale image is repeated to RGB, RGB is reduced to luminance for a 1-channel
    model, an alpha channel is dropped. Images are resized (bilinear) to ``image_size``,
    or to the size the model requires, or - when their sizes differ - to the model's
    usual input size.
    """
    from ..models import input_shape

    channels = int(getattr(model, "in_channels", 3))
    if batch_ready(model, images, image_size):
        # Already the batch the model takes: no host copy (and no transfer back and
        # forth when it is a device array).
        return jnp.asarray(images)
    if isinstance(images, (list, tuple)):
        items = [_to_float(i) for i in images]
    else:
        a = _to_float(images)
        if a.ndim == 2:  # one grayscale image
            items = [a]
        elif a.ndim == 3 and a.shape[-1] in (1, 3, 4):  # one HWC image
            items = [a]
        elif a.ndim in (3, 4):  # NHW grayscale batch or NHWC batch
            items = list(a)
        else:
            raise ResNetJaxError(
                f"expected an image (HW or HWC) or a batch (NHW or NHWC), got shape {a.shape}"
            )
    if not items:
        raise ResNetJaxError("no images given")
    out = []
    for i, img in enumerate(items):
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
            raise ResNetJaxError(
                f"image {i} has shape {img.shape}; expected HW or HWC with 1, 3 or 4 channels"
            )
        c = img.shape[-1]
        if c in (2, 4):  # drop alpha
            img, c = img[..., : c - 1], c - 1
        if c == 1 and channels == 3:
            img = np.repeat(img, 3, axis=-1)
        elif c == 3 and channels == 1:
            img = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        out.append(img)

    if image_size is not None:
        hw = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    else:
        hw = expected_hw(model)
        if hw is None:
            sizes = {o.shape[:2] for o in out}
            hw = sizes.pop() if len(sizes) == 1 else tuple(input_shape(model)[1:3])
    batch = []
    for img in out:
        if img.shape[:2] != tuple(hw):
            img = np.asarray(jax.image.resize(img, (*hw, img.shape[-1]), "linear"))
        batch.append(img)
    return jnp.asarray(np.stack(batch))


def batch_ready(model, images, image_size=None) -> bool:
    """Whether ``images`` is already a float32 NHWC batch of the model's channels that
    needs no resizing (``prepare_images`` then passes it through)."""
    channels = int(getattr(model, "in_channels", 3))
    shape = getattr(images, "shape", None)
    if isinstance(images, (list, tuple)) or shape is None or len(shape) != 4:
        return False
    if shape[-1] != channels or np.dtype(getattr(images, "dtype", None)) != np.float32:
        return False
    if image_size is not None:
        hw = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    else:
        hw = expected_hw(model)
    return hw is None or tuple(shape[1:3]) == tuple(hw)
