"""Data sets, transforms and the input pipeline, against torchvision/PIL references."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python
from PIL import Image

from resnet_jax.data import (
    DatasetError,
    Loader,
    Preprocess,
    eval_transform,
    image_folder,
    load_splits,
    mnist,
    random_resized_crop_box,
    read_idx,
    stratified_split,
    synthetic,
    train_transform,
)

# ----------------------------------------------------------------------------- sets


def test_digits_equal_sklearns_load_digits():
    from sklearn.datasets import load_digits

    from resnet_jax.data.datasets import digits, load_digits_arrays

    images, labels = load_digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)
    ds = digits()
    assert ds.class_names == [str(c) for c in ref.target_names]
    np.testing.assert_array_equal(ds.labels, ref.target)


def test_digits_csv_is_read_without_importing_sklearn():
    code = ("import sys\n"
            "from resnet_jax.data.datasets import load_digits_arrays\n"
            "images, labels = load_digits_arrays()\n"
            "assert images.shape == (1797, 8, 8) and labels.shape == (1797,)\n"
            "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n")
    run_python(code)


@pytest.mark.parametrize("csv", ["missing", "damaged", "other shape"])
def test_digits_fall_back_to_sklearns_public_loader(csv, tmp_path, monkeypatch):
    """scikit-learn's CSV sits in its private package layout; when it is not there (or not
    what it was), the digits come from ``sklearn.datasets.load_digits``, the same arrays."""
    import importlib.machinery
    import importlib.util

    from sklearn.datasets import load_digits

    from resnet_jax.data import datasets

    data = tmp_path / "datasets" / "data"
    data.mkdir(parents=True)
    if csv == "damaged":
        (data / "digits.csv.gz").write_bytes(b"not gzip")
    elif csv == "other shape":
        with gzip.open(data / "digits.csv.gz", "wt") as f:
            f.write("1,2,3\n4,5,6\n")
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name != "sklearn":
            return real(name, *args, **kwargs)
        spec = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path)]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert datasets._digits_csv() is None
    images, labels = datasets.load_digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)


def test_digits_splits_are_disjoint_stratified_and_fixed():
    from sklearn.datasets import load_digits

    sets = load_splits("digits")
    assert {k: len(v) for k, v in sets.items()} == {"train": 1295, "val": 143, "test": 359}
    ref = load_digits()
    # Every split's images are real digits images with their own labels, scaled 0..16 -> 0..255.
    flat = {img.tobytes(): lab for img, lab in zip(np.round(ref.images * 255 / 16).astype(np.uint8), ref.target, strict=True)}
    seen = set()
    for split in sets.values():
        for img, lab in zip(split.images[..., 0], split.labels, strict=True):
            key = img.tobytes()
            assert flat[key] == lab
            seen.add((key, split.name))
    # Each class is held out in proportion.
    counts = np.bincount(sets["test"].labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_splits("digits")
    np.testing.assert_array_equal(again["test"].images, sets["test"].images)


def test_stratified_split_holds_out_each_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    rest, held = stratified_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[held]).tolist() == [2, 1, 1]


def test_faces_two_classes():
    sets = load_splits("faces")
    assert sets["train"].class_names == ["non-face", "face"]
    assert sum(len(s) for s in sets.values()) == 200
    assert sets["test"].images.shape[1:] == (25, 25, 1)
    assert np.bincount(sets["test"].labels).tolist() == [20, 20]


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match="digits.*faces.*synthetic"):
        load_splits("cifar-typo")


# ----------------------------------------------------------------------------- transforms


def test_eval_transform_matches_torchvision_resize_center_crop():
    torch_t = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    for shape, size, crop in (((37, 53, 3), 24, 0.875), ((61, 40, 1), 32, 0.875), ((8, 8, 1), 16, 1.0)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        pil = Image.fromarray(img[..., 0] if shape[-1] == 1 else img)
        ref = torch_t.Compose([
            torch_t.Resize(int(round(size / crop)), interpolation=torch_t.InterpolationMode.BILINEAR),
            torch_t.CenterCrop(size),
        ])(pil)
        ref = np.asarray(ref)
        ref = ref[..., None] if ref.ndim == 2 else ref
        out = eval_transform(img, Preprocess(size, crop_pct=crop))
        np.testing.assert_array_equal(out, ref)


def test_random_resized_crop_follows_its_ranges_and_resamples_like_pil():
    rng = np.random.default_rng(1)
    areas, ratios = [], []
    for _ in range(400):
        left, top, right, bottom = random_resized_crop_box(40, 60, (0.3, 0.9), (0.5, 2.0), rng)
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
        areas.append((right - left) * (bottom - top) / 2400)
        ratios.append((right - left) / (bottom - top))
    assert 0.25 < min(areas) and max(areas) < 0.95 and np.std(areas) > 0.1
    assert 0.45 < min(ratios) and max(ratios) < 2.2
    # The crop is resampled exactly as PIL crops then resizes that box.
    img = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pre = Preprocess(16, scale=(0.3, 0.9), ratio=(0.5, 2.0), hflip=False)
    box = random_resized_crop_box(40, 60, pre.scale, pre.ratio, np.random.default_rng(5))
    ref = np.asarray(Image.fromarray(img).resize((16, 16), Image.BILINEAR, box=box))
    np.testing.assert_array_equal(train_transform(img, pre, np.random.default_rng(5)), ref)


def test_flip_happens_about_half_the_time_and_only_when_enabled():
    img = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    pre = Preprocess(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True)
    outs = [train_transform(img, pre, np.random.default_rng(i)) for i in range(200)]
    flipped = sum(np.array_equal(o, img[:, ::-1]) for o in outs)
    same = sum(np.array_equal(o, img) for o in outs)
    assert flipped + same == 200 and 70 < flipped < 130
    pre = Preprocess(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    assert all(np.array_equal(train_transform(img, pre, np.random.default_rng(i)), img) for i in range(50))


# ----------------------------------------------------------------------------- pipeline


def _batches(loader, state=None, n=5):
    with loader.iterator(state) as it:
        return [next(it) for _ in range(n)], it.state()


def test_loader_is_deterministic_per_seed_and_resumes_mid_epoch():
    data = synthetic(num_classes=3, size=8, n=50)
    mk = lambda seed: Loader(data, 8, train=True, seed=seed, threads=3, prefetch=3)  # noqa: E731
    a, _ = _batches(mk(0), n=14)  # 6 batches an epoch: crosses two epoch boundaries
    b, _ = _batches(mk(0), n=14)
    c, _ = _batches(mk(1), n=14)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))
    # Epochs differ in order and augmentation.
    assert not np.array_equal(a[0]["image"], a[6]["image"])
    # An iterator rebuilt from a saved state yields exactly the batches that follow.
    first, state = _batches(mk(0), n=4)
    assert state["epoch"] == 0 and state["batch"] == 4
    rest, _ = _batches(mk(0), state, n=10)
    for x, y in zip(first + rest, a, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    # Each epoch visits every image once (incomplete last batch dropped).
    labels = np.concatenate([x["label"] for x in a[:6]])
    assert len(labels) == 48


def test_loader_state_from_another_run_is_refused():
    data = synthetic(num_classes=3, size=8, n=50)
    with pytest.raises(DatasetError, match="seed"):
        Loader(data, 8, train=True, seed=1).iterator({"epoch": 0, "batch": 2, "seed": 0})
    with pytest.raises(DatasetError, match="size 40"):
        Loader(data, 8, train=True).iterator({"epoch": 0, "batch": 2, "size": 40})


def test_host_shards_make_up_the_global_batch():
    data = synthetic(num_classes=3, size=8, n=40)
    whole, _ = _batches(Loader(data, 8, train=True, seed=4), n=6)
    parts = [_batches(Loader(data, 8, train=True, seed=4, shard_index=i, shard_count=2), n=6)[0]
             for i in range(2)]
    for k in range(6):
        joined = np.concatenate([parts[0][k]["image"], parts[1][k]["image"]])
        np.testing.assert_array_equal(joined, whole[k]["image"])
        assert parts[0][k]["image"].shape[0] == 4


def test_eval_loader_pads_last_batch_with_mask():
    data = synthetic(num_classes=3, size=8, n=21)
    loader = Loader(data, 8, train=False)
    batches = list(loader.epoch(0))
    assert len(batches) == 3 and all(b["image"].shape[0] == 8 for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 21 and mask[21:].sum() == 0
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:21], data.labels)
    np.testing.assert_array_equal(batches[0]["image"], data.images[:8])


def test_batch_larger_than_dataset_is_a_clear_error():
    data = synthetic(num_classes=3, size=8, n=20)
    with pytest.raises(DatasetError, match=r"batch size 64 is larger than the training set .*20 images.*--batch-size 20"):
        Loader(data, 64, train=True)


# ----------------------------------------------------------------------------- folders


def _write(path, array, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt)


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(3):
            _write(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    return tmp_path


def test_folder_converts_grayscale_and_rgba(tmp_path):
    root = _folder(tmp_path)
    gray = np.full((10, 12), 77, np.uint8)
    _write(root / "cat" / "gray.png", gray)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half fully transparent
    _write(root / "dog" / "rgba.png", rgba)
    data = image_folder(root)
    assert data.class_names == ["cat", "dog"] and len(data) == 8
    g = data.image(data.paths.index(str(root / "cat" / "gray.png")))
    assert g.shape == (10, 12, 3) and (g == 77).all()
    r = data.image(data.paths.index(str(root / "dog" / "rgba.png")))
    assert r.shape == (10, 12, 3)
    np.testing.assert_array_equal(r[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(r[-1, 0], [255, 255, 255])  # transparent -> white
    one = image_folder(root, channels=1)
    assert one.image(0).shape == (10, 12, 1)


def test_folder_lists_without_decoding_and_check_data_names_the_unreadable(tmp_path):
    """Listing reads no pixels (a broken file is found when a batch meets it, see
    test_data_pipeline.py); check_data scans up front and names each broken file."""
    from resnet_jax.data import check_data

    root = _folder(tmp_path)
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = image_folder(root)
    assert len(data) == 8
    report = check_data(root, progress=False)
    assert not report.ok
    assert sorted(Path(str(p)).name for p, _ in report.unreadable) == ["corrupt.jpg", "truncated.png"]


def test_empty_class_folder_is_named(tmp_path):
    root = _folder(tmp_path)
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"\['zebra'\].*hold no images"):
        image_folder(root)


def test_folder_without_classes_and_with_train_val_split(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        image_folder(tmp_path / "empty")
    _folder(tmp_path / "set" / "train")
    _folder(tmp_path / "set" / "val")
    sets = load_splits(str(tmp_path / "set"))
    assert set(sets) == {"train", "val", "test"} and len(sets["train"]) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = load_splits(f"folder:{tmp_path / 'set' / 'train'}", test_fraction=0.34, val_fraction=0)
    assert len(flat["train"]) + len(flat["test"]) == 6 and len(flat["test"]) == 2


def test_a_class_only_in_val_is_an_error_or_left_out_with_a_warning(tmp_path):
    _folder(tmp_path / "set" / "train")
    _folder(tmp_path / "set" / "val")
    (tmp_path / "set" / "val" / "zebra").mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "set" / "val" / "zebra" / "0.png")
    with pytest.raises(DatasetError, match=r"\['zebra'\] under .*val have no counterpart in .*train"):
        load_splits(str(tmp_path / "set"))
    with pytest.warns(UserWarning, match=r"\['zebra'\] under .*val are not in .*train"):
        sets = load_splits(str(tmp_path / "set"), unknown_classes="skip")
    assert sets["val"].class_names == sets["train"].class_names
    assert "zebra" not in "".join(sets["val"].paths)


def test_synthetic_options_out_of_range_are_named():
    for spec, rule in (("synthetic:classes=0", "classes must be an integer >= 2"),
                       ("synthetic:n=x", "n must be an integer >= 1"),
                       ("synthetic:channels=2", "channels must be 1 or 3")):
        with pytest.raises(DatasetError, match=rule):
            load_splits(spec)


# ----------------------------------------------------------------------------- IDX


def _idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_files_read_like_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, gz=True)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
        if prefix == "t10k":
            expected = images
    sets = mnist(tmp_path)
    np.testing.assert_array_equal(sets["test"].images[..., 0], expected)
    assert sets["train"].labels.tolist() == [i % 10 for i in range(30)]
    full = load_splits(f"mnist:{tmp_path}")
    assert len(full["train"]) + len(full["val"]) == 30
    raw = (tmp_path / "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "bad").write_bytes(raw[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
