"""Packed data sets: an image folder written as a few large ArrayRecord shard files.

``pack(folder, out, max_side=256)`` (command: ``resnet-jax pack FOLDER OUT --max-side 256``)
writes, for each set of the folder as training lists it (``train`` and ``val``/``test``
sub-folders, or the whole folder as ``all``, split by ``load_splits`` as a folder is):

- ``<set>-NNNNN-of-MMMMM.array_record``: one record per image, in the folder's listing
  order (classes sorted, files sorted), the encoded image: a JPEG whose longer side is
  at most ``max_side`` is stored as it is (byte for byte); any other image is decoded as
  training decodes it, shrunk (antialiased) so its longer side is at most ``max_side``,
  and stored as a JPEG of quality 95;
- ``<set>-labels.npy`` (int32) and ``<set>-names.json`` (each record's source file, for
  messages), and last ``meta.json`` (format, class names, channels, shard files).

ArrayRecord (the ``array-record`` package, which grain reads) gives random access by
record index. ``--dataset OUT`` then trains exactly as on the folder, with the same
augmentation and the same lazy handling of an unreadable record. Packing is restartable:
each shard is written under a temporary name and renamed when complete, so a second
``pack`` with the same arguments writes only the missing shards. An existing pack is
replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .datasets import DatasetError, ImageSet, Preprocess, folder_sets
from .images import ImageError, ordered_map, read_image_reduced

FORMAT = "resnet-jax-packed/1"
META = "meta.json"
IMAGES_PER_SHARD = 10_000
JPEG_QUALITY = 95


def is_packed(root) -> bool:
    return (Path(root) / META).is_file()


def _array_record():
    """The ``array_record`` module that reads and writes shards, or an error saying how to get it."""
    try:
        from array_record.python import array_record_module
    except ImportError:
        raise DatasetError("packed data sets need the array-record package: "
                           "pip install 'resnet-jax[data]' (or pip install array-record)") from None
    return array_record_module


# --------------------------------------------------------------------------- reading


class Records:
    """Random access to one packed set's records: ``read(i) -> (name, encoded bytes)``.

    Each thread opens its own reader of each shard (lazily, so worker processes that
    inherit a ``Records`` open their own)."""

    def __init__(self, root: Path, shards: list[str], counts: list[int], names: list[str],
                 index: np.ndarray | None = None):
        self.root, self.shards, self.counts, self.names = Path(root), shards, counts, names
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.index = np.arange(self.starts[-1]) if index is None else np.asarray(index, np.int64)
        self._local = threading.local()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, indices) -> Records:
        return Records(self.root, self.shards, self.counts, self.names, self.index[np.asarray(indices)])

    def read(self, i: int) -> tuple[str, bytes]:
        g = int(self.index[i])
        shard = int(np.searchsorted(self.starts, g, side="right") - 1)
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = {}
        if shard not in readers:
            readers[shard] = _array_record().ArrayRecordReader(str(self.root / self.shards[shard]),
                                               "readahead_buffer_size:0,max_parallelism:0")
        k = g - int(self.starts[shard])
        return f"{self.root / self.shards[shard]}#{k} ({self.names[g]})", readers[shard].read([k])[0]


def packed_sets(root, channels: int | None = None, strict: bool = False) -> dict[str, ImageSet]:
    """The sets of a pack, as ``folder_sets`` gives them for the folder it was made from."""
    root = Path(root)
    try:
        meta = json.loads((root / META).read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{root / META} cannot be read ({e}); pack the folder again") from None
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{root} holds a pack of format {meta.get('format')!r}; this version "
                           f"reads {FORMAT!r}: pack the folder again")
    if channels is not None and channels != meta["channels"]:
        raise DatasetError(f"{root} was packed with {meta['channels']}-channel images; "
                           f"--channels {channels} needs a pack made with --channels {channels}")
    ch = meta["channels"]
    mean, std = (Preprocess(224).mean, Preprocess(224).std) if ch == 3 else ((0.5,), (0.25,))
    out = {}
    for name, split in meta["sets"].items():
        names = json.loads((root / f"{name}-names.json").read_text())
        records = Records(root, split["shards"], split["counts"], names)
        out[name] = ImageSet(split["name"], list(meta["class_names"]), np.load(root / f"{name}-labels.npy"),
                             ch, packed=records, preprocess=Preprocess(224, mean=mean, std=std),
                             strict=strict)
    return out


# --------------------------------------------------------------------------- writing

_OURS = ("*.array_record", "*.array_record.tmp", "*-labels.npy", "*-names.json", META, "plan.json")


def _encoded(path: str, channels: int, max_side: int) -> tuple[bytes, bool]:
    """(the record of one image, whether it could be read): the file's own bytes when its
    longer side is at most ``max_side`` (or it cannot be read: training then skips it as
    it would the file), else the image shrunk to ``max_side`` as a JPEG."""
    from PIL import Image

    raw = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
        if max(w, h) <= max_side:
            return raw, True
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = read_image_reduced(path, channels, lambda w, h: size, raw)[0]
    except (ImageError, OSError, SyntaxError, ValueError, EOFError):
        return raw, False
    im = Image.fromarray(img[..., 0] if channels == 1 else img).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), True


def _prepare(out: Path, plan: dict, overwrite: bool) -> None:
    """Make ``out`` ready: new, replaced (``overwrite``) or an unfinished pack of ``plan``."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"pack: {out} is a file; give a folder for the pack")
    if overwrite and out.is_dir():
        for pattern in _OURS:
            for f in out.glob(pattern):
                f.unlink()
    elif (out / META).is_file():
        raise DatasetError(f"pack: {out} already holds a pack; pass --overwrite (overwrite=True) "
                           "to replace it, or choose another output folder")
    elif (out / "plan.json").is_file():
        if json.loads((out / "plan.json").read_text()) != plan:
            raise DatasetError(f"pack: {out} holds an unfinished pack made with other arguments "
                               f"or another folder; pass --overwrite to start it again")
    elif out.is_dir() and any(out.iterdir()):
        raise DatasetError(f"pack: {out} is not empty and holds no pack; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(plan, indent=1))


def _write_shard(out: Path, shard: str, paths: list[str], ch: int, max_side: int, pool, bar) -> int:
    tmp = out / (shard + ".tmp")
    writer = _array_record().ArrayRecordWriter(str(tmp), "group_size:1")
    bad = 0
    try:
        for record, ok in ordered_map(pool, lambda p: _encoded(p, ch, max_side), paths):
            writer.write(record)
            bad += not ok
            bar.update(1)
    finally:
        writer.close()
    tmp.replace(out / shard)
    return bad


def pack(folder, out, max_side: int = 256, overwrite: bool = False, channels: int = 3,
         workers: int = 4, progress: bool = True, images_per_shard: int = IMAGES_PER_SHARD) -> dict:
    """Write ``folder`` as a pack in ``out`` (see the module's docstring); returns its
    ``meta.json`` contents plus ``unreadable``, the number of images stored unread."""
    from tqdm import tqdm

    folder, out = Path(folder), Path(out)
    if int(max_side) < 1:
        raise DatasetError(f"pack: --max-side must be an integer >= 1 (pixels); got {max_side}")
    sets = folder_sets(folder, channels)  # lists only: reads no pixels
    plan = {"format": FORMAT, "source": str(folder.resolve()), "max_side": int(max_side),
            "channels": channels, "images_per_shard": int(images_per_shard),
            "sets": {k: len(v) for k, v in sets.items()}}
    _prepare(out, plan, overwrite)
    meta = {"format": FORMAT, "class_names": sets.get("all", sets.get("train")).class_names,
            "channels": channels, "max_side": int(max_side), "sets": {}}
    bad = 0
    with ThreadPoolExecutor(max(1, int(workers))) as pool, \
            tqdm(total=sum(map(len, sets.values())), unit="img", disable=not progress) as bar:
        for name, data in sets.items():
            chunks = [data.paths[s:s + images_per_shard] for s in range(0, len(data), images_per_shard)]
            shards = [f"{name}-{k:05d}-of-{len(chunks):05d}.array_record" for k in range(len(chunks))]
            np.save(out / f"{name}-labels.npy", data.labels)
            (out / f"{name}-names.json").write_text(json.dumps([str(Path(p).relative_to(folder))
                                                                for p in data.paths]))
            for shard, paths in zip(shards, chunks, strict=True):
                if (out / shard).is_file():  # written by an earlier, interrupted pack
                    bar.update(len(paths))
                    continue
                bad += _write_shard(out, shard, paths, channels, int(max_side), pool, bar)
            meta["sets"][name] = {"name": data.name, "shards": shards, "counts": list(map(len, chunks))}
    (out / META).write_text(json.dumps(meta, indent=1))
    (out / "plan.json").unlink()
    return {**meta, "unreadable": bad}
