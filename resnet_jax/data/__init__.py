"""Data: embedded and on-disk image sets, transforms and the input pipeline.

    >>> from resnet_jax.data import load_splits, Loader
    >>> sets = load_splits("digits")          # train / val / test ImageSets
    >>> loader = Loader(sets["train"], 128, train=True, seed=0)
    >>> it = loader.iterator()                # it.state() goes into checkpoints
    >>> batch = next(it)                      # {'image': uint8 NHWC, 'label', 'mask'}
"""

from .check import CheckReport, check_data
from .datasets import (
    DATASETS,
    DatasetError,
    ImageSet,
    Preprocess,
    digits,
    faces,
    image_folder,
    load_splits,
    mnist,
    read_idx,
    read_image,
    stratified_split,
    synthetic,
)
from .packed import is_packed, pack
from .pipeline import DataIterator, Loader
from .transforms import eval_transform, random_resized_crop_box, train_transform

__all__ = [
    "CheckReport", "DATASETS", "DataIterator", "DatasetError", "ImageSet", "Loader", "Preprocess", "check_data", "digits",
    "eval_transform", "faces", "image_folder", "load_splits", "is_packed", "mnist", "pack", "random_resized_crop_box",
    "read_idx", "read_image", "stratified_split", "synthetic", "train_transform",
]
