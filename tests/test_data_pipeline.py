"""The lazy folder, reduced-scale JPEG decoding, packed shards and the benchmark set."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import DatasetError, Loader, check_data, image_folder

REPO = Path(__file__).resolve().parent.parent


def _folder(root, per_class=6, side=12, broken=("a/3.png",)):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side + 2, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    for name in broken:
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def _epochs(loader, state=None, n=6):
    with loader.iterator(state) as it:
        return [next(it) for _ in range(n)], it.state()


def test_listing_a_folder_reads_no_pixels(tmp_path, monkeypatch):
    root = _folder(tmp_path / "set")
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("an image was opened while listing"))
    data = image_folder(root)
    assert len(data) == 12 and data.class_names == ["a", "b"]


def test_an_unreadable_image_is_skipped_mid_epoch_and_the_batches_stay_deterministic(tmp_path):
    data = image_folder(_folder(tmp_path / "set"))
    broken = str(tmp_path / "set" / "a" / "3.png")
    mk = lambda threads: Loader(data, 4, train=True, seed=3, threads=threads, prefetch=2)  # noqa: E731
    one, two = mk(1), mk(3)
    a, _ = _epochs(one, n=9)  # three epochs of three batches: the broken image is met in each
    b, _ = _epochs(two, n=9)
    assert one.unreadable and list(one.unreadable) == [broken] == list(two.unreadable)
    assert "3.png" in one.unreadable[broken]
    for x, y in zip(a, b, strict=True):
        assert x["image"].shape == (4, 224, 224, 3)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    first, state = _epochs(mk(2), n=4)  # resumed mid-epoch: the same batches follow
    rest, _ = _epochs(mk(2), state, n=5)
    for x, y in zip(first + rest, a, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    # The broken image's place goes to the next readable image of the epoch's order.
    order = list(one.order(0))
    at = order.index(data.paths.index(broken))
    nxt = order[(at + 1) % len(order)]
    if at < 12 - 12 % 4:
        assert a[at // 4]["label"][at % 4] == data.labels[nxt]


def test_strict_stops_at_the_unreadable_image_naming_it(tmp_path):
    data = image_folder(_folder(tmp_path / "set"), strict=True)
    with pytest.raises(DatasetError, match=r"3\.png.*--strict"):
        _epochs(Loader(data, 12, train=True, seed=0), n=1)


def test_an_unreadable_evaluation_image_is_masked_out(tmp_path):
    data = image_folder(_folder(tmp_path / "set"))
    batches = list(Loader(data, 5, train=False).epoch(0))
    mask = np.concatenate([b["mask"] for b in batches])
    broken = data.paths.index(str(tmp_path / "set" / "a" / "3.png"))
    assert mask.sum() == 11 and mask[broken] == 0


def test_check_data_lists_every_unreadable_image(tmp_path):
    root = _folder(tmp_path / "set", broken=("a/3.png",))
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "0.png").write_bytes(good[: len(good) // 2])  # truncated
    report = check_data(root, progress=False)
    assert report.checked == 12 and not report.ok
    assert [p.split("/")[-2:] for p, _ in report.unreadable] == [["a", "3.png"], ["b", "0.png"]]
    assert "2 of 12 images cannot be read" in report.summary()
    assert check_data(_folder(tmp_path / "good", broken=()), progress=False).ok


def test_training_skips_counts_and_logs_or_stops_under_strict(tmp_path):
    from resnet_jax.errors import ResNetJaxError
    from resnet_jax.train import TrainConfig, train

    root = _folder(tmp_path / "set", per_class=8)
    (root / "val").mkdir()
    train_root = root / "train"
    train_root.mkdir()
    for cls in ("a", "b"):
        (root / cls).rename(train_root / cls)
        (root / "val" / cls).mkdir()
        (train_root / cls / "7.png").rename(root / "val" / cls / "7.png")
    cfg = dict(dataset=str(root), arch="my_resnet", model_options={"stage_widths": [8, 16]},
               image_size=8, batch_size=14, epochs=1, progress=False, tensorboard=False, plots=False)
    with pytest.raises(ResNetJaxError, match=r"3\.png.*--strict"):
        train(TrainConfig(**cfg, output=str(tmp_path / "strict"), strict=True), log=lambda m: None)
    logged = []
    summary = train(TrainConfig(**cfg, output=str(tmp_path / "run")), log=logged.append)
    assert summary["skipped_images"] == 1
    lines = [m for m in logged if "unreadable" in m]
    assert len(lines) == 1 and "skipped 1 unreadable image(s)" in lines[0] and "3.png" in lines[0]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "test" and records[-1]["skipped_images"] == 1
    assert [r["skipped_images"] for r in records if r["kind"] == "train"] == [1]


# ----------------------------------------------------------------------------- reduced-scale decoding


@pytest.mark.parametrize("width,height,size", [(1000, 750, 224), (1000, 750, 112), (500, 375, 112)])
def test_a_jpeg_decoded_at_reduced_scale_stays_within_3_grey_levels_of_a_full_decode(
        tmp_path, width, height, size):
    import dataclasses

    from skimage import data as samples

    from resnet_jax.data import Preprocess, random_resized_crop_box, read_image
    from resnet_jax.data.images import read_image_reduced
    from resnet_jax.data.transforms import (
        eval_transform,
        eval_transform_file,
        train_transform,
        train_transform_file,
    )

    path = tmp_path / "photo.jpg"
    Image.fromarray(samples.astronaut()).resize((width, height), Image.BILINEAR).save(path, quality=90)
    full = read_image(path, 3)
    pre = dataclasses.replace(Preprocess(size), scale=(0.08, 1.0))
    diffs, scales, used = [], [], set()
    for seed in range(30):
        box = random_resized_crop_box(height, width, pre.scale, pre.ratio, np.random.default_rng(seed))
        used.add(min(8, (box[2] - box[0]) // size, (box[3] - box[1]) // size))
        fast = train_transform_file(path, 3, pre, np.random.default_rng(seed))
        slow = train_transform(full, pre, np.random.default_rng(seed))
        assert fast.shape == slow.shape == (size, size, 3)
        diffs.append(np.abs(fast.astype(int) - slow.astype(int)).mean())
    for s in (1.0, 0.5, 0.25):
        scales.append(read_image_reduced(path, 3, lambda w, h, s=s: (w * s, h * s))[1])
    fast, slow = eval_transform_file(path, 3, pre), eval_transform(full, pre)
    diffs.append(np.abs(fast.astype(int) - slow.astype(int)).mean())
    assert max(diffs) <= 3.0, max(diffs)
    assert scales == [1.0, 0.5, 0.25]  # the decoder does reduce
    assert max(used) >= 2  # and some of these crops were decoded reduced


# ----------------------------------------------------------------------------- the benchmark set


def test_imagenet_like_set_is_deterministic_sized_and_restartable(tmp_path):
    from benchmarks.imagenet_like import generate

    assert generate(tmp_path / "a", 6, classes=3, seed=1, progress=False) == 6
    assert generate(tmp_path / "b", 6, classes=3, seed=1, progress=False) == 6
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert [str(f) for f in files[:2]] == ["class_0000/0000000.jpg", "class_0000/0000003.jpg"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        with Image.open(tmp_path / "a" / f) as im:
            assert im.size == (500, 375) and im.format == "JPEG"
    (tmp_path / "a" / files[0]).unlink()
    assert generate(tmp_path / "a", 6, classes=3, seed=1, progress=False) == 1
    generate(tmp_path / "c", 3, classes=3, seed=2, progress=False)
    assert (tmp_path / "c" / files[0]).read_bytes() != (tmp_path / "b" / files[0]).read_bytes()
    assert len(image_folder(tmp_path / "a")) == 6


# ----------------------------------------------------------------------------- packed shards


def _split_folder(root, big=()):
    """train/ and val/ with classes a, b: JPEGs of 60x45, PNGs of 20x15, and ``big`` JPEGs
    of 300x200 (larger than the packs' max_side)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 5), ("val", 2)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                smooth = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((60, 45))
                smooth.save(root / split / cls / f"{i}.jpg", quality=90)
            Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).save(root / split / cls / "p.png")
    for name in big:
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).resize((300, 200)).save(
            root / name, quality=90)
    return root


def test_a_pack_gives_the_folders_labels_and_eval_images(tmp_path):
    import dataclasses

    from resnet_jax.data import Preprocess, load_splits, pack

    root = _split_folder(tmp_path / "set", big=("train/a/big.jpg", "val/b/big.jpg"))
    meta = pack(root, tmp_path / "packed", max_side=128, images_per_shard=4, progress=False)
    assert meta["class_names"] == ["a", "b"] and meta["unreadable"] == 0
    assert len(list((tmp_path / "packed").glob("train-*.array_record"))) == 4  # 13 images, 4 a shard
    folder, packed = load_splits(str(root)), load_splits(str(tmp_path / "packed"))
    pre = dataclasses.replace(Preprocess(32), crop_pct=0.875)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(folder[split].labels, packed[split].labels)
        assert folder[split].class_names == packed[split].class_names
        a = next(Loader(folder[split], len(folder[split]), train=False, preprocess=pre).epoch(0))
        b = next(Loader(packed[split], len(packed[split]), train=False, preprocess=pre).epoch(0))
        big = np.array(["big" in p for p in folder[split].paths])
        # Images within max_side are stored byte for byte: identical; the 300x200 ones are
        # re-encoded at 128x85 (JPEG quality 95): within 3 grey levels on average.
        np.testing.assert_array_equal(a["image"][~big], b["image"][~big])
        assert np.abs(a["image"][big].astype(int) - b["image"][big].astype(int)).mean() <= 3.0


def test_packing_refuses_to_overwrite_and_restarts_after_an_interruption(tmp_path, monkeypatch):
    import resnet_jax.data.packed as packed
    from resnet_jax.data import pack

    root = _split_folder(tmp_path / "set")
    out = tmp_path / "packed"
    real, calls = packed._write_shard, []

    def dies_on_the_third(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(packed, "_write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        pack(root, out, images_per_shard=4, progress=False)
    monkeypatch.setattr(packed, "_write_shard", lambda *a: calls.append(a[1]) or real(*a))
    pack(root, out, images_per_shard=4, progress=False)
    # The restart writes only the shard that died and those after it.
    assert calls == ["train-00000-of-00003.array_record", "train-00001-of-00003.array_record",
                     "train-00002-of-00003.array_record", "train-00002-of-00003.array_record",
                     "val-00000-of-00002.array_record", "val-00001-of-00002.array_record"]
    with pytest.raises(DatasetError, match="already holds a pack.*--overwrite"):
        pack(root, out, progress=False)
    pack(root, tmp_path / "clean", images_per_shard=4, progress=False)
    for f in sorted((tmp_path / "clean").iterdir()):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    pack(root, out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob("*.array_record")) == ["train-00000-of-00001.array_record",
                                                                  "val-00000-of-00001.array_record"]


@pytest.mark.slow
def test_training_on_a_pack_matches_training_on_its_folder(tmp_path):
    from resnet_jax.data import pack
    from resnet_jax.train import TrainConfig, train

    root = _split_folder(tmp_path / "set")
    pack(root, tmp_path / "packed", max_side=64, progress=False)
    cfg = dict(arch="my_resnet", model_options={"stage_widths": [8, 16]}, image_size=16, batch_size=4,
               epochs=1, max_steps=3, progress=False, tensorboard=False, plots=False)
    losses = []
    for name, dataset in (("folder", root), ("packed", tmp_path / "packed")):
        train(TrainConfig(**cfg, dataset=str(dataset), output=str(tmp_path / name)), log=lambda m: None)
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([(r["kind"], r.get("loss")) for r in records])
    assert losses[0] == losses[1] and len(losses[0]) == 5  # 3 steps, val, test


@pytest.mark.slow  # two training runs each; the loader's resume runs by default
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "pack"])
def test_a_run_on_a_folder_or_a_pack_resumes_with_the_same_losses(tmp_path, packed):
    from resnet_jax.data import pack
    from resnet_jax.train import TrainConfig, train

    root = _split_folder(tmp_path / "set")
    if packed:
        root = tmp_path / "packed"
        pack(tmp_path / "set", root, max_side=64, progress=False)
    cfg = dict(dataset=str(root), arch="my_resnet", model_options={"stage_widths": [8, 16]},
               image_size=16, batch_size=4, epochs=2, progress=False, tensorboard=False, plots=False,
               threads=3)

    def losses(run):
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}

    train(TrainConfig(**cfg, output=str(tmp_path / "ref")), log=lambda m: None)
    train(TrainConfig(**cfg, max_steps=2, output=str(tmp_path / "cut")), log=lambda m: None)
    train(TrainConfig(**cfg, resume=True, output=str(tmp_path / "cut")), log=lambda m: None)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref") and len(losses(tmp_path / "ref")) == 6


def test_check_data_and_pack_commands(tmp_path, capsys):
    from resnet_jax.cli import main

    root = _folder(tmp_path / "set")
    assert main(["check-data", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "1 of 12 images cannot be read" in out[0] and len(out) == 2 and "3.png" in out[1]
    assert main(["pack", str(root), str(tmp_path / "p"), "--max-side", "64", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "packed 12 images of 2 classes" in captured.out and "1 image(s) could not be read" in captured.err
    assert main(["pack", str(root), str(tmp_path / "p"), "--no-progress"]) == 2
    assert "already holds a pack" in capsys.readouterr().err
    assert main(["check-data", str(tmp_path / "missing")]) == 2


def test_a_closed_iterator_leaves_no_decoding_thread(tmp_path):
    """What a run stopped by Ctrl-C or SIGTERM does to its loader (``close`` with batches
    still being built): its worker threads end; nothing is left running."""
    import threading
    import time

    data = image_folder(_folder(tmp_path / "set", broken=()))
    with Loader(data, 4, train=True, seed=0, threads=3, prefetch=6).iterator() as it:
        next(it)
        assert any(t.name.startswith("resnet-jax-data") for t in threading.enumerate())
    deadline = time.time() + 30
    while time.time() < deadline and any(t.name.startswith("resnet-jax-data") for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("resnet-jax-data")]


def test_a_folder_of_hard_links_lists_every_link_without_decoding(tmp_path, monkeypatch):
    """benchmarks.bench_startup's large folders: N links to a few JPEGs, 100 classes."""
    from benchmarks.bench_startup import link_folder

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(src / f"{i}.jpg")
    assert link_folder(src, tmp_path / "big", 250) == 250
    assert link_folder(src, tmp_path / "big", 250) == 0  # restartable
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("an image was opened while listing"))
    data = image_folder(tmp_path / "big")
    assert len(data) == 250 and len(data.class_names) == 100


# ----------------------------------------------------------------------------- worker processes


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_at_the_next_batch(tmp_path, monkeypatch, capsys):
    """A SIGINT whose KeyboardInterrupt is raised inside a finalizer (as when a batch's shared
    memory is freed) is dropped by Python, with an "Exception ignored" traceback. With
    Python's own handler the iterator goes on; with ``interrupts.noting`` (the handler of
    every command-line process, beside ``interrupts.unraisable_hook``) the next batch raises
    KeyboardInterrupt instead, and no traceback is printed."""
    import signal
    import sys

    from resnet_jax import interrupts

    class SignalledWhileFinalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
            sum(range(1000))  # the handler runs here, inside the finalizer

    loader = Loader(image_folder(_folder(tmp_path / "set", broken=())), 4, train=True, seed=0,
                    threads=1, prefetch=1)
    monkeypatch.setattr(sys, "unraisablehook", interrupts.unraisable_hook)
    for handler, stops in ((signal.default_int_handler, False), (interrupts.noting, True)):
        monkeypatch.setattr(interrupts, "_received", [])
        old = signal.signal(signal.SIGINT, handler)
        try:
            with loader.iterator() as it:
                next(it)
                capsys.readouterr()
                SignalledWhileFinalized()  # freed at once: the interrupt is raised and dropped
                err = capsys.readouterr().err
                assert ("KeyboardInterrupt" in err) is not stops, err
                if stops:
                    with pytest.raises(KeyboardInterrupt):
                        next(it)
                else:
                    assert next(it)["image"].shape == (4, 224, 224, 3)
        finally:
            signal.signal(signal.SIGINT, old)


def _worker_children() -> list:
    """The worker processes this process has started and not yet joined."""
    import multiprocessing

    return [p for p in multiprocessing.active_children() if "prefetch" in p.name]


def test_worker_processes_build_the_threads_batches_for_each_host_and_resume_mid_epoch(tmp_path):
    """Loader(workers=2): the batches of the in-process threads, position by position, on
    host 1 of 2 (its half of each global batch); its state resumes in threads (and with 1
    worker: the slow kill-and-resume journeys); unreadable files met in a worker are merged
    into the loader; close leaves no worker."""
    pytest.importorskip("grain")
    data = image_folder(_folder(tmp_path / "set"))  # a/3.png is unreadable
    broken = str(tmp_path / "set" / "a" / "3.png")
    host = dict(train=True, seed=3, shard_index=1, shard_count=2)  # seed 3: a/3.png in host 1's half
    whole, _ = _epochs(Loader(data, 4, train=True, seed=3), n=7)
    threads = Loader(data, 4, **host, threads=2)
    ref, _ = _epochs(threads, n=7)
    two = Loader(data, 4, **host, workers=2)
    with two.iterator() as it:
        first = [next(it) for _ in range(4)]
        assert len(_worker_children()) == 2
        state = it.state()
    assert not _worker_children()
    assert state["epoch"] == 1 and state["batch"] == 1
    rest, _ = _epochs(Loader(data, 4, **host), state, n=3)
    spec = two.batch_spec()  # the global batch the train step is compiled for ahead
    for x, y, g in zip(first + rest, ref, whole, strict=True):
        assert x["image"].shape == (2, 224, 224, 3)
        assert {k: ((2 * v.shape[0], *v.shape[1:]), v.dtype) for k, v in x.items()} == spec
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(x[key], y[key])
            np.testing.assert_array_equal(x[key], g[key][2:])
    assert list(two.unreadable) == [broken] == list(threads.unreadable)
    assert two.unreadable[broken] == threads.unreadable[broken]
    # In-memory sets are already decoded: they stay in this process's threads.
    from resnet_jax.data import synthetic

    assert Loader(synthetic(n=16), 4, train=True, workers=2).workers == 0



@pytest.mark.slow  # a fresh process with two workers; the default sibling is the test above
def test_a_script_that_exits_holding_worker_batches_prints_nothing_and_leaves_no_shared_memory(tmp_path):
    """A script that iterates a Loader with workers at its top level and exits while its
    variables still hold batches: no finalizer error at exit, no leaked shared memory."""
    import os
    import subprocess
    import sys

    pytest.importorskip("grain")
    _folder(tmp_path / "set", broken=())
    script = tmp_path / "script.py"
    script.write_text(
        "from resnet_jax.data import Loader, image_folder\n"
        "if __name__ == '__main__':\n"
        f"    loader = Loader(image_folder({str(tmp_path / 'set')!r}), 4, train=True, workers=2)\n"
        "    it = loader.iterator()\n"
        "    batches = [next(it) for _ in range(4)]\n"
        "    batch = next(it)\n"
        "    print(int(batch['image'].sum() > 0), len(batches))\n")
    before = set(os.listdir("/dev/shm"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.split() == ["1", "4"], done.stderr
    assert "Exception ignored" not in done.stderr and "leaked" not in done.stderr, done.stderr
    # Shared memory blocks only: the named semaphores (sem.*) there come and go with the
    # processes of tests running beside this one.
    assert not {name for name in set(os.listdir("/dev/shm")) - before if not name.startswith("sem.")}


@pytest.mark.slow
def test_strict_stops_in_a_worker_process_naming_the_file(tmp_path):
    pytest.importorskip("grain")
    data = image_folder(_folder(tmp_path / "set"), strict=True)
    with pytest.raises(DatasetError, match=r"3\.png.*--strict"):
        _epochs(Loader(data, 12, train=True, seed=0, workers=1), n=1)
    assert not _worker_children()


JOURNEY = ["--arch", "my_resnet", "--stage-widths", "8,16", "--image-size", "16", "--batch-size", "2",
           "--val-fraction", "0", "--epochs", "10", "--no-progress", "--no-tensorboard", "--no-plots"]
JOURNEY_STEPS = 160  # 32 training images (8 held out for the test), 16 steps an epoch


def _below(pid: int) -> set[int]:
    """The processes below ``pid``, from /proc."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _living(pids, wait: float = 60.0) -> list[int]:
    """Those of ``pids`` still running (not zombies) after waiting up to ``wait`` seconds."""
    import time
    from pathlib import Path

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + wait
    while time.time() < deadline and any(map(alive, pids)):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """A folder (40 PNGs, one unreadable), its pack, and the reference run's losses
    (no worker processes)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from resnet_jax.data import pack

    pytest.importorskip("grain")
    tmp = tmp_path_factory.mktemp("journey")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "RESNET_JAX_CACHE": str(tmp / "cache")}
    root = _folder(tmp / "set", per_class=20)
    pack(root, tmp / "packed", max_side=64, progress=False)
    ref = subprocess.run([sys.executable, str(repo / "train.py"), "--dataset", str(root), *JOURNEY,
                          "--workers", "0", "--output", str(tmp / "ref")], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr
    return {"folder": root, "pack": tmp / "packed", "env": env, "repo": repo,
            "losses": _train_losses(tmp / "ref")}


def _train_losses(run) -> dict:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("source,how,resume_workers", [
    ("folder", "SIGKILL", 1), ("pack", "SIGKILL", 1),
    ("folder", "Ctrl-C", 2), ("pack", "SIGTERM", 2)])
def test_a_run_with_worker_processes_stopped_or_killed_leaves_none_and_resumes_exactly(
        tmp_path, journey, source, how, resume_workers):
    """``train.py --workers 2`` stopped after its first checkpoint: by SIGKILL, by Ctrl-C (SIGINT
    to its process group, as a terminal sends it) or by SIGTERM. Its worker processes all end
    (a killed run's exit on their own), the last checkpoint loads, and ``--resume`` with
    another worker count gives the losses of the reference run without workers, step for step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import resnet_jax

    cmd = [sys.executable, str(journey["repo"] / "train.py"), "--dataset", str(journey[source]), *JOURNEY,
           "--output", str(tmp_path / "run")]
    proc = subprocess.Popen([*cmd, "--workers", "2"], cwd=tmp_path, env=journey["env"], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    run, below, deadline = tmp_path / "run", set(), time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if run.is_dir() and any(p.name.isdigit() for p in run.iterdir()):
                below = _below(proc.pid)
                if how == "Ctrl-C":
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    proc.send_signal(getattr(signal, how))
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert len(below) >= 2, f"no worker processes were running: {below}"  # the two workers, at least
    status = {"SIGKILL": -signal.SIGKILL, "Ctrl-C": 130, "SIGTERM": 143}[how]
    assert proc.returncode == status, err
    if how != "SIGKILL":
        assert err.strip().splitlines()[-1] == ("interrupted" if how == "Ctrl-C" else "terminated"), err
        assert "Traceback" not in err, err
    assert not _living(below), "processes of the stopped run are still running"
    seen = _train_losses(run)
    steps = sorted(int(p.name) for p in run.iterdir() if p.name.isdigit())
    assert steps and steps[-1] < JOURNEY_STEPS and max(seen) < JOURNEY_STEPS  # stopped mid-run
    resnet_jax.load(run)  # the latest step, whole
    resumed = subprocess.run([*cmd, "--resume", "--workers", str(resume_workers)], cwd=tmp_path,
                             env=journey["env"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {steps[-1]}" in resumed.stderr
    after, reference = _train_losses(run), journey["losses"]
    assert sorted(after) == sorted(reference) == list(range(1, JOURNEY_STEPS + 1))
    assert after == reference
    assert all(seen[s] == reference[s] for s in seen)  # before the stop too
