"""The training loop end to end: checkpoints that resnet_jax.load reads, resume after
SIGKILL, 4 devices against 1, fine-tuning, bad input and the evaluate command."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax.cli import main as cli_main
from resnet_jax.errors import ResNetJaxError
from resnet_jax.train import TrainConfig, TrainingDiverged, train
from resnet_jax.train.logs import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="synthetic:classes=3,size=8,n=96", arch="my_resnet",
            model_options={"stage_widths": [8, 16]}, batch_size=16, progress=False,
            tensorboard=False, plots=False, threads=2)
TINY_ARGS = ["--dataset", "synthetic:classes=3,size=8,n=96", "--arch", "my_resnet",
             "--stage-widths", "8,16", "--batch-size", "16", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment sharing one compilation cache among this module's runs."""
    e = dict(os.environ)
    e["RESNET_JAX_CACHE"] = str(tmp_path_factory.mktemp("xla-cache"))
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("XLA_FLAGS", None)
    return e


def _run(args, env, cwd, **kw):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, **kw)


def _losses(run_dir) -> dict[int, float]:
    """Per-step training loss; a step logged twice (before a crash, again after resuming)
    keeps its last record."""
    return {r["step"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")
            if r["kind"] == "train"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    summary = train(TrainConfig(**{**TINY, "plots": True, "tensorboard": True}, epochs=3, output=str(out),
                                checkpoint_every=5))
    return out, summary


def test_run_leaves_checkpoints_that_resnet_jax_load_reads(tiny_run):
    out, summary = tiny_run
    steps = sorted(int(p.name) for p in out.iterdir() if p.name.isdigit())
    assert summary["steps"] == 12 and steps[-1] == 12 and summary["checkpoint"] == str(out / "12")
    assert len(steps) <= 3 + 1  # the last 3 and the best by validation accuracy
    model, variables = resnet_jax.load(out)  # the latest step
    assert model.num_classes == 3 and tuple(model.stage_widths) == (8, 16)
    step_model, step_vars = resnet_jax.load(out / "12")
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(step_vars), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loaded model reproduces the accuracy the run reported on the test split.
    from resnet_jax.data import load_splits

    test = load_splits(TINY["dataset"])["test"]
    x = (test.images.astype(np.float32) / 255 - 0.5) / 0.3
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    acc = float(np.mean(np.argmax(np.asarray(logits), -1) == test.labels))
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)
    config = resnet_jax.checkpoint.load_config(out)
    assert config["arch"] == "my_resnet" and config["class_names"] == ["class0", "class1", "class2"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2, 3]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    assert {"loss", "accuracy", "lr", "images_per_s", "grad_norm"} <= set(last_train)
    assert records[-1]["kind"] == "test"
    assert (out / "curves.png").stat().st_size > 10_000
    (events_file,) = (out / "tensorboard").glob("events.out.tfevents.*")
    from test_tfevents import read_events

    losses = {e.step: e.summary.value[0].simple_value for e in read_events(events_file)
              if e.summary.value and e.summary.value[0].tag == "train/loss"}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in records if r["kind"] == "train"})
    best = summary["best_checkpoint"]
    assert best is not None and Path(best).is_dir()


def test_evaluate_prints_per_class_accuracy_and_writes_confusion_png(tiny_run, capsys, tmp_path):
    out, summary = tiny_run
    png = tmp_path / "cm.png"
    assert cli_main(["evaluate", "--checkpoint", str(out), "--output", str(png)]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {summary['test_accuracy']:.2%}" in text
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("class")]
    assert len(lines) == 3
    # The per-class counts add up to the test split.
    counts = [tuple(map(int, ln.rsplit("(", 1)[1].rstrip(")").split("/"))) for ln in lines]
    assert sum(c[1] for c in counts) == summary["test_count"]
    assert sum(c[0] for c in counts) == summary["test_correct"]
    assert png.stat().st_size > 5_000
    from PIL import Image

    assert Image.open(png).size[0] > 200


def test_resume_with_a_different_class_count_is_refused(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(ResNetJaxError, match=r"trained for 3 classes but data set .* has 5"):
        train(TrainConfig(**{**TINY, "dataset": "synthetic:classes=5,size=8,n=100"},
                          epochs=4, output=str(out), resume=True))


def test_existing_run_without_resume_is_refused(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ResNetJaxError, match="--resume"):
        train(TrainConfig(**TINY, epochs=3, output=str(out)))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    train(TrainConfig(**TINY, epochs=4, max_steps=4, output=str(out)))
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["4"]
    with pytest.raises(TrainingDiverged, match=r"at step 5 \(epoch 2\).*last good checkpoint, step 4"):
        train(TrainConfig(**TINY, epochs=4, output=str(out), resume=True, lr=1e38,
                          warmup_epochs=0))
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["4"]
    _, variables = resnet_jax.load(out)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(variables))


@pytest.mark.slow  # a training journey; test_models checks with_new_head by default
def test_finetune_new_head_with_frozen_backbone(tmp_path):
    source = resnet_jax.create_model("my_resnet", num_classes=7, stem="small", stage_widths=(8, 16))
    src_vars = resnet_jax.init_variables(source, 1, 8)
    resnet_jax.save(tmp_path / "pretrained", source, src_vars, arch="my_resnet")
    out = tmp_path / "ft"
    train(TrainConfig(**TINY, epochs=1, output=str(out), init_from=str(tmp_path / "pretrained"),
                      freeze_backbone=True))
    model, variables = resnet_jax.load(out)
    assert model.num_classes == 3 and variables["params"]["fc"]["kernel"].shape == (16, 3)
    for name, sub in src_vars["params"].items():
        if name == "fc":
            continue
        for a, b in zip(jax.tree_util.tree_leaves(sub), jax.tree_util.tree_leaves(variables["params"][name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # BatchNorm statistics keep moving in train mode (the backbone's parameters do not).
    assert int(variables["batch_stats"]["bn1"]["num_batches_tracked"]) == 4


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    rc = cli_main(["train", *TINY_ARGS[:-2], "--batch-size", "512", "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "batch size 512 is larger than the training set" in err[0] and "--batch-size" in err[0]
    empty = tmp_path / "imgs"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(empty / "a" / "0.png")
    rc = cli_main(["train", "--dataset", str(empty), "--output", str(tmp_path / "y"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "['b']" in err[0] and "hold no images" in err[0]


def _folder_with_a_broken_image(root, per_class: int, side: int):
    """Classes a and b of random ``side``-pixel PNGs, and a/broken.png that is not an image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.mark.slow  # test_data_pipeline's skip-and-count test runs by default
def test_corrupt_images_are_skipped_with_a_warning_or_fail_under_strict(tmp_path, capsys):
    root = _folder_with_a_broken_image(tmp_path / "imgs", 12, 10)
    args = ["train", "--dataset", str(root), "--arch", "my_resnet", "--stage-widths", "8,16",
            "--image-size", "8", "--batch-size", "8", "--epochs", "1", "--no-progress",
            "--no-tensorboard", "--no-plots", "--output"]
    assert cli_main([*args, str(tmp_path / "strict"), "--strict"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert cli_main([*args, str(tmp_path / "lenient")]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image" in captured.err
    assert "test accuracy" in captured.out


@pytest.mark.slow
def test_sigkill_then_resume_continues_with_the_same_losses(tmp_path, env):
    total = 160
    args = [*TINY_ARGS, "--epochs", "40", "--checkpoint-every", "10", "--no-plots"]
    ref = _run([*args, "--output", "ref"], env, tmp_path)
    assert ref.returncode == 0, ref.stderr
    reference = _losses(tmp_path / "ref")
    assert len(reference) == total

    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--output", "crash"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in (tmp_path / "crash").glob("*") if p.name.isdigit()]
        if done and max(done) >= 20:
            proc.send_signal(signal.SIGKILL)
            killed_after = max(done)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    seen = _losses(tmp_path / "crash")
    assert max(seen) < total  # killed mid-training

    resumed = _run([*args, "--output", "crash", "--resume"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    start = int(resumed.stderr.split("resumed at step ")[1].split()[0].rstrip(";"))
    assert killed_after <= start < total
    after = _losses(tmp_path / "crash")
    assert sorted(after) == list(range(1, total + 1))
    for step in range(start + 1, total + 1):
        assert after[step] == reference[step], f"step {step}: {after[step]} != {reference[step]}"
    # Steps run before the kill also matched (the data order does not depend on timing).
    assert all(seen[s] == reference[s] for s in seen)
    a = resnet_jax.load(tmp_path / "ref")[1]
    b = resnet_jax.load(tmp_path / "crash")[1]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


MESH_ARGS = [*TINY_ARGS, "--epochs", "2", "--max-steps", "6", "--no-plots"]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, env):
    cwd = tmp_path_factory.mktemp("one")
    r = _run([*MESH_ARGS, "--output", "one"], env, cwd)
    assert r.returncode == 0, r.stderr
    assert "on 1 device(s)" in r.stderr
    return cwd / "one"


def _assert_same_run(run_dir, reference):
    la, lb = _losses(run_dir), _losses(reference)
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    np.testing.assert_allclose([la[s] for s in sorted(la)], [lb[s] for s in sorted(lb)], rtol=1e-5)
    va = resnet_jax.load(run_dir)[1]
    vb = dict(jax.tree_util.tree_flatten_with_path(resnet_jax.load(reference)[1])[0])
    for path, x in jax.tree_util.tree_flatten_with_path(va)[0]:
        np.testing.assert_allclose(np.asarray(x), np.asarray(vb[path]), rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
    # BatchNorm saw the global batch at every step.
    assert int(va["batch_stats"]["bn1"]["num_batches_tracked"]) == 6


@pytest.mark.slow  # two training runs in fresh processes
def test_four_devices_match_one_device(tmp_path, env, one_device_run):
    four = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r4 = _run([*MESH_ARGS, "--output", "four"], four, tmp_path)
    assert r4.returncode == 0, r4.stderr
    assert "on 4 device(s)" in r4.stderr
    _assert_same_run(tmp_path / "four", one_device_run)


@pytest.mark.slow
def test_two_processes_match_one_device(tmp_path, env, one_device_run):
    """Two hosts on localhost (JAX's CPU collectives), each reading half of every batch."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *MESH_ARGS, "--output", "multi",
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert "on 2 device(s)" in outs[0][1]
    assert "test accuracy" in outs[0][0] and "test accuracy" not in outs[1][0]
    _assert_same_run(tmp_path / "multi", one_device_run)


def test_four_devices_refuse_a_batch_that_does_not_split(tmp_path, env):
    four = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = _run([*TINY_ARGS[:-4], "--batch-size", "18", "--output", "x", "--no-progress"], four, tmp_path)
    assert r.returncode == 2
    assert "batch size 18 does not split evenly over 4 devices" in r.stderr


# ----------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_default_run_reaches_98_5_percent_on_digits(tmp_path, env):
    """``python train.py`` with no arguments (cold compilation cache)."""
    cold = dict(env, RESNET_JAX_CACHE=str(tmp_path / "cold-cache"))
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--no-progress"], env=cold,
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    print(f"{line}  [wall {elapsed:.0f} s]")
    acc = float(line.split("test accuracy ")[1].split("%")[0]) / 100
    assert acc >= 0.985, line
    run_dir = Path(line.split("checkpoint ")[1].split(";")[0]).parent
    assert (tmp_path / run_dir / "curves.png").exists()


@pytest.mark.slow
def test_faces_with_my_resnet(tmp_path):
    summary = train(TrainConfig(dataset="faces", arch="my_resnet", output=str(tmp_path / "faces"),
                                progress=False, tensorboard=False))
    print(f"faces: test accuracy {summary['test_accuracy']:.2%} "
          f"({summary['test_correct']}/{summary['test_count']})")
    assert summary["test_accuracy"] >= 0.8


# ----------------------------------------------------------------------------- damage and recovery


def test_a_model_with_nan_outputs_scores_zero_with_a_warning(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    model, variables = resnet_jax.load(out)
    variables = jax.tree_util.tree_map(np.array, variables)
    variables["params"]["fc"]["kernel"][:] = np.nan
    resnet_jax.save(tmp_path / "nan", model, variables, arch="my_resnet")
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "nan"), "--dataset", TINY["dataset"],
                     "--output", str(tmp_path / "cm.png")]) == 0
    captured = capsys.readouterr()
    assert "accuracy 0.00%" in captured.out
    count = int(captured.out.split(" images)")[0].rsplit(" ", 1)[1])
    assert f"warning: {count} of {count} outputs of {tmp_path / 'nan'} were not finite" in captured.err


def test_evaluate_into_an_existing_folder_reports_the_file_it_wrote(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    folder = tmp_path / "reports"
    folder.mkdir()
    assert cli_main(["evaluate", "--checkpoint", str(out), "--output", str(folder)]) == 0
    reported = Path(capsys.readouterr().out.strip().splitlines()[-1].split("confusion matrix: ")[1])
    assert reported.parent == folder and reported.suffix == ".png"
    assert [p.name for p in folder.iterdir()] == [reported.name]


def test_evaluate_output_it_cannot_write_is_one_line_and_leaves_old_files(tiny_run, tmp_path, capsys):
    import resource

    out, _ = tiny_run
    missing = tmp_path / "missing" / "cm.png"
    assert cli_main(["evaluate", "--checkpoint", str(out), "--output", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnet-jax evaluate: error: {missing.parent}: no such directory to write into"]
    assert not missing.parent.exists()
    old = tmp_path / "cm.png"
    old.write_bytes(b"previous report")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # a disk that fills after 1 kB
    try:
        rc = cli_main(["evaluate", "--checkpoint", str(out), "--output", str(old)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"resnet-jax evaluate: error: {old}: File too large"]
    assert old.read_bytes() == b"previous report" and [p.name for p in tmp_path.iterdir()] == ["cm.png"]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A run saved at steps 2 and 4 (of 4 per epoch)."""
    out = tmp_path_factory.mktemp("two") / "run"
    train(TrainConfig(**TINY, epochs=1, max_steps=4, checkpoint_every=2, output=str(out)))
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["2", "4"]
    return out


def _copy(run, tmp_path):
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_flipped_bit_in_the_latest_step_falls_back_to_the_newest_intact_one(two_step_run, tmp_path, capsys):
    from test_checkpoint import _flip_a_byte_of_the_largest_array_file

    run = _copy(two_step_run, tmp_path)
    _flip_a_byte_of_the_largest_array_file(run / "4")
    with pytest.raises(resnet_jax.checkpoint.CheckpointError, match=r"checksum mismatch in step 4 \("):
        resnet_jax.load(run / "4")
    with pytest.warns(UserWarning, match=r"checksum mismatch in step 4 .*; using step 2, the newest intact"):
        resnet_jax.load(run)
    assert cli_main(["evaluate", "--checkpoint", str(run), "--output", str(tmp_path / "cm.png")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{run}/2 on ") and "checksum mismatch in step 4" in captured.err
    logged = []
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint, step 2, is kept"):
        train(TrainConfig(**TINY, epochs=2, output=str(run), resume=True, lr=1e38, warmup_epochs=0),
              log=logged.append)
    assert any("checksum mismatch in step 4" in m and "resumed from step 2" in m for m in logged)
    assert sorted(p.name for p in run.iterdir() if p.name[0].isdigit()) == ["2", "4.damaged"]


@pytest.mark.slow  # its flipped-bit sibling runs by default
def test_a_truncated_latest_step_resumes_from_the_older_one(two_step_run, tmp_path):
    run = _copy(two_step_run, tmp_path)
    for f in (run / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logged = []
    summary = train(TrainConfig(**TINY, epochs=2, output=str(run), resume=True), log=logged.append)
    assert any("step 4" in m and "resumed from step 2, the newest intact" in m for m in logged), logged
    assert any("resumed at step 2;" in m for m in logged)
    assert summary["checkpoint"] == str(run / "8")
    resnet_jax.checkpoint.load_step(run / "8")


def test_metrics_hold_each_step_once_after_a_resume(two_step_run, tmp_path):
    import shutil

    run = _copy(two_step_run, tmp_path)
    shutil.rmtree(run / "4")  # steps 3 and 4 were logged, then the run died before saving 4
    train(TrainConfig(**TINY, epochs=1, output=str(run), resume=True))
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"] == [4]


def test_unreadable_image_is_reported_once(tmp_path, capsys):
    root = _folder_with_a_broken_image(tmp_path / "imgs", 10, 8)
    assert cli_main(["train", "--dataset", str(root), "--arch", "my_resnet", "--stage-widths", "8,16",
                     "--image-size", "8", "--batch-size", "4", "--epochs", "1", "--max-steps", "1",
                     "--no-progress", "--no-tensorboard", "--no-plots", "--output", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.splitlines()
    reports = [ln for ln in err if "unreadable image" in ln or "broken.png" in ln]
    assert len(reports) == 1 and "skipped 1 unreadable image(s)" in reports[0] and "broken.png" in reports[0]


@pytest.mark.slow
def test_digit_cnn_without_batchnorm_trains_loads_evaluates_and_resumes(tmp_path, capsys):
    out = tmp_path / "cnn"
    args = ["--dataset", "synthetic:classes=3,size=28,n=48,channels=1", "--arch", "digit_cnn",
            "--batch-size", "16", "--no-progress", "--no-tensorboard", "--no-plots", "--output", str(out)]
    assert cli_main(["train", *args, "--epochs", "1", "--max-steps", "2"]) == 0
    model, variables = resnet_jax.load(out)
    assert type(model).__name__ == "DigitCNN" and set(variables) == {"params"}
    assert cli_main(["evaluate", "--checkpoint", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert cli_main(["train", *args, "--epochs", "2", "--max-steps", "4", "--resume"]) == 0
    assert "resumed at step 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["2", "4"]
    _, resumed = resnet_jax.load(out)
    assert not np.array_equal(np.asarray(resumed["params"]["fc"]["kernel"]),
                              np.asarray(variables["params"]["fc"]["kernel"]))
    grid = tmp_path / "classes.png"
    assert cli_main(["visualize", "--weights", str(out), "--class", "0-2", "--steps", "4",
                     "--out", str(grid)]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(grid).size[0] > 100


@pytest.mark.slow
def test_ten_random_sigkills_around_saves_resume_with_the_same_losses(tmp_path, env):
    """SIGKILL ten times at random moments around a save (while orbax writes a step, or
    just after); each resume continues from the newest intact step; the losses and the
    final weights equal an uninterrupted run's, and metrics.jsonl holds each step once."""
    total = 80
    args = [*TINY_ARGS, "--epochs", "20", "--checkpoint-every", "3", "--no-plots"]
    ref = _run([*args, "--output", "ref"], env, tmp_path)
    assert ref.returncode == 0, ref.stderr
    reference = _losses(tmp_path / "ref")
    rng = np.random.default_rng()
    run, kills = tmp_path / "crash", []
    for _ in range(10):
        before = {p.name for p in run.glob("*")} if run.exists() else set()
        resume = ["--resume"] if any(n.isdigit() for n in before) else []  # killed before a first save: anew
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--output", "crash",
                                 *resume], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, delay = time.time() + 240, float(rng.uniform(0, 0.03))
        while time.time() < deadline and proc.poll() is None:
            new = {p.name for p in run.glob("*")} - before
            if any(n[0].isdigit() for n in new):  # a step being written, or just written
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                kills.append((sorted(new), round(delay, 3)))
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        if proc.returncode == 0:
            break
    final = _run([*args, "--output", "crash", "--resume"], env, tmp_path)
    assert final.returncode == 0, (kills, final.stderr)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, total + 1)), kills
    after = _losses(run)
    assert all(after[s] == reference[s] for s in reference), kills
    a, b = resnet_jax.load(tmp_path / "ref")[1], resnet_jax.load(run)[1]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    print(f"{len(kills)} kills (new entries, delay s): {kills}")


def test_resnet_jax_train_evaluate_stays_the_function_after_the_evaluate_command_loads():
    import resnet_jax.train
    import resnet_jax.train.evaluation  # what `resnet-jax evaluate` imports

    assert callable(resnet_jax.train.evaluate)
    assert resnet_jax.train.evaluate is resnet_jax.train.evaluation.evaluate


def test_fetched_metrics_stop_at_the_first_non_finite_step_and_log_those_before(tmp_path):
    """Metrics of several steps fetched at once: the steps before the first non-finite one
    are logged, the error names that step, nothing after it is logged."""
    from types import SimpleNamespace

    from resnet_jax.train.logs import MetricLog
    from resnet_jax.train.loop import _Metrics

    run = SimpleNamespace(data=SimpleNamespace(steps_per_epoch=4), run_dir=tmp_path,
                          cfg=SimpleNamespace(batch_size=8))
    bar = SimpleNamespace(update=lambda n: None, set_postfix=lambda **kw: None)
    logs = MetricLog(tmp_path, tensorboard=False)
    skips = SimpleNamespace(count=lambda: 0, report=lambda: None)
    metrics = _Metrics(run, logs, bar, SimpleNamespace(last_good=4), skips)
    for step, loss in [(5, 1.0), (6, 0.5), (7, float("nan")), (8, float("inf"))]:
        metrics.add(step, {"loss": jax.numpy.float32(loss), "grad_norm": jax.numpy.float32(1.0)})
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 7 \(epoch 2\).*step 4, is kept"):
        metrics.fetch()
    logs.close()
    assert [(r["step"], r["epoch"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == \
        [(5, 2, 1.0), (6, 2, 0.5)]


def test_a_resumed_runs_tensorboard_file_restarts_after_the_resumed_step(tmp_path):
    """TensorBoard drops what an earlier file logged at or after a SessionLog.START's step."""
    from tensorboardX.proto import event_pb2
    from test_tfevents import read_events

    from resnet_jax.train.logs import MetricLog

    logs = MetricLog(tmp_path, start_step=4)
    logs.write({"kind": "train", "step": 5, "loss": 0.5})
    logs.close()
    events = read_events(next((tmp_path / "tensorboard").glob("events.out.tfevents.*")))
    assert events[1].step == 5 and events[1].session_log.status == event_pb2.SessionLog.START
    assert events[2].step == 5 and events[2].summary.value[0].tag == "train/loss"


class _Compiles(logging.Handler):
    """Counts JAX's "Finished XLA compilation of jit(NAME)" records (logged at DEBUG)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []
        self.threads: list[str] = []  # the thread that compiled each

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Finished XLA compilation of "):
            self.names.append(message.split(" of ", 1)[1].split(" in ")[0])
            self.threads.append(record.threadName)


def test_the_train_step_compiled_ahead_is_the_one_the_steps_run(tmp_path):
    """The loop compiles the train step in a thread from the state's and the batch's shapes
    while it draws the variables; the steps then run that executable: one compilation of
    train_step per run, fresh or resumed, not a second one for the arrays themselves."""
    logger = logging.getLogger("jax._src.dispatch")
    counter, level = _Compiles(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        run = tmp_path / "run"
        train(TrainConfig(**TINY, epochs=1, max_steps=2, output=str(run)))
        fresh = counter.names.count("jit(train_step)")
        train(TrainConfig(**TINY, epochs=1, max_steps=4, output=str(run), resume=True))
        resumed = counter.names.count("jit(train_step)") - fresh
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
    assert (fresh, resumed) == (1, 1), counter.names
    # Compiled ahead, in the loop's thread, both times (not at the first step, as it would
    # be had the compile ahead failed quietly).
    assert [t for n, t in zip(counter.names, counter.threads) if n == "jit(train_step)"] == \
        ["resnet-jax-compile"] * 2
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4]
