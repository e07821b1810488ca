"""Bad settings, busy or unwritable run directories, Ctrl-C and SIGTERM: each ends in one
clear line (status 2 for a mistake, 1 for the file system, 130 for Ctrl-C, 143 for
SIGTERM), before anything is written or with everything saved so far kept."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import resnet_jax
from resnet_jax.cli import main as cli_main
from resnet_jax.errors import ResNetJaxError
from resnet_jax.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic:classes=3,size=8,n=48"
TINY_ARGS = ["--dataset", DATA, "--arch", "my_resnet", "--stage-widths", "8,16", "--batch-size", "16",
             "--max-steps", "2", "--epochs", "1", "--no-progress", "--no-tensorboard", "--no-plots"]
TINY = dict(dataset=DATA, arch="my_resnet", model_options={"stage_widths": [8, 16]}, batch_size=16,
            max_steps=2, epochs=1, progress=False, tensorboard=False, plots=False)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


BAD_SETTINGS = [
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--epochs", "-2"], "--epochs must be an integer >= 1"),
    (["--max-steps", "-1"], "--max-steps must be an integer >= 1"),
    (["--max-steps", "0"], "--max-steps must be an integer >= 1"),
    (["--image-size", "0"], "--image-size must be an integer >= 1"),
    (["--image-size", "-8"], "--image-size must be an integer >= 1"),
    (["--devices", "0"], "--devices must be an integer >= 1"),
    (["--lr", "-0.1"], "--lr must be a finite number >= 0"),
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--lr", "inf"], "--lr must be a finite number >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be a finite number in [0, 1)"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be a finite number in [0, 1)"),
    (["--clip-norm", "0"], "--clip-norm must be a finite number > 0"),
    (["--clip-norm", "-1"], "--clip-norm must be a finite number > 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be a finite number >= 0"),
    (["--workers", "-1"], "--workers must be an integer >= 0"),
    (["--eval-every", "0"], "--eval-every must be an integer >= 1"),
    (["--stage-widths", "0,16"], "--stage-widths must be integers >= 1"),
    (["--stage-sizes", "1,0"], "--stage-sizes must be integers >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--keep", "0"], "--keep must be an integer >= 1"),
    (["--log-every", "0"], "--log-every must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--dataset", "synthetic:classes=0"], "synthetic option classes must be an integer >= 2"),
    (["--dataset", "synthetic:classes=1"], "synthetic option classes must be an integer >= 2"),
    (["--dataset", "synthetic:size=0"], "synthetic option size must be an integer >= 1"),
]


@pytest.mark.parametrize("bad,message", BAD_SETTINGS, ids=[" ".join(b) for b, _ in BAD_SETTINGS])
def test_out_of_range_settings_are_refused_before_anything_is_written(bad, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *TINY_ARGS, *bad, "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert message in line and "got" in line
    assert not out.exists()


def test_every_setting_has_its_flag_and_the_flags_give_the_setting():
    """The train command's flags are generated from TrainConfig: each field has one, with
    the field's default, and parsed flags build the same config as the API."""
    import argparse
    import dataclasses

    from resnet_jax.train.cli import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train"])
    assert config_from_args(args) == TrainConfig()
    args = parser.parse_args(["train", *TINY_ARGS, "--no-nesterov", "--channels", "1", "--lr", "0.5",
                              "--log-every", "3", "--stem", "small", "--resume", "--output", "x"])
    assert config_from_args(args) == TrainConfig(
        **{**TINY, "model_options": {"stage_widths": [8, 16], "stem": "small"}}, nesterov=False,
        channels=1, lr=0.5, log_every=3, resume=True, output="x")
    assert {f.name for f in dataclasses.fields(TrainConfig)} - set(vars(args)) == {"model_options"}


def test_the_api_refuses_what_the_command_refuses(tmp_path):
    with pytest.raises(ResNetJaxError, match=r"--lr must be a finite number >= 0; got nan"):
        train(TrainConfig(**{**TINY, "lr": float("nan")}, output=str(tmp_path / "run")))
    with pytest.raises(ResNetJaxError, match=r"--label-smoothing must be .* \[0, 1\); got 1.5"):
        TrainConfig(**{**TINY, "label_smoothing": 1.5}).resolved().validate()
    assert not (tmp_path / "run").exists()


def test_one_class_image_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    for i in range(6):
        (tmp_path / "imgs" / "only").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / "only" / f"{i}.png")
    args = [a if a != DATA else str(tmp_path / "imgs") for a in TINY_ARGS]
    assert cli_main(["train", *args, "--batch-size", "2", "--output", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert "has 1 class (only)" in line and "at least 2" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "small"
    train(TrainConfig(**TINY, output=str(out)))
    return out


@pytest.mark.parametrize("option,saved,asked", [
    (["--arch", "resnet18"], "'my_resnet'", "'resnet18'"),
    (["--stage-widths", "16,32"], "[8, 16]", "[16, 32]"),
])
def test_resume_with_another_model_names_both(small_run, option, saved, asked, capsys):
    args = [*TINY_ARGS, "--epochs", "2", "--max-steps", "4", "--output", str(small_run), "--resume"]
    i = args.index(option[0])
    args[i: i + 2] = option
    assert cli_main(["train", *args]) == 2
    line = _one_error_line(capsys)
    assert saved in line and asked in line and "--resume" in line
    assert sorted(p.name for p in small_run.iterdir() if p.name.isdigit()) == ["2"]


def test_second_run_on_a_locked_directory_names_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from resnet_jax.train.lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResNetJaxError, match=rf"in use by another training run \(PID {holder.pid}\)"):
            train(TrainConfig(**TINY, output=str(out)))
        assert not any(p.name.isdigit() for p in out.iterdir())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's lock: no stale lock to clean up.
    from resnet_jax.train.lock import RunLock

    with RunLock(out):
        pass


def test_output_that_is_a_file_or_unwritable_is_one_line_with_status_1(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert cli_main(["train", *TINY_ARGS, "--output", str(afile)]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("resnet-jax train: error: ") and str(afile) in line and "not a directory" in line
    assert afile.read_text() == "keep me"
    if os.geteuid() == 0:
        locked = Path("/sys/resnet-jax-run")  # root may write anywhere a mode allows; sysfs refuses
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        locked = tmp_path / "ro" / "run"
    assert cli_main(["train", *TINY_ARGS, "--output", str(locked)]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("resnet-jax train: error: /") and ("not permitted" in line or "denied" in line)


def test_full_disk_during_a_save_keeps_the_earlier_checkpoint(small_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    _, before = resnet_jax.load(run)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # No file may grow past 4 kB (EFBIG, as a full disk gives ENOSPC): the log lines fit,
    # the checkpoint's arrays do not.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        rc = cli_main(["train", *TINY_ARGS, "--epochs", "2", "--max-steps", "4", "--output", str(run),
                       "--resume"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1] == f"resnet-jax train: error: {run}/4: File too large"
    assert len(err) == 2 and err[0].startswith("training my_resnet")  # no traceback, no orbax log
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["2", "metrics.jsonl"]
    _, after = resnet_jax.load(run)
    import jax

    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ctrl_c_during_a_save_finishes_the_save_then_exits_130(small_run, tmp_path, monkeypatch, capsys):
    import shutil

    import orbax.checkpoint as ocp

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    real_save = ocp.CheckpointManager.save

    def interrupted_save(self, step, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the step is being written
        time.sleep(0.05)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", interrupted_save)
    assert cli_main(["train", *TINY_ARGS, "--epochs", "2", "--max-steps", "4", "--output", str(run),
                     "--resume", "--checkpoint-every", "1"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir() if p.name.isdigit()) == ["2", "3"]
    resnet_jax.checkpoint.load_step(run / "3")  # complete, and its checksum holds


def _interrupted_python(code_before: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    """Run ``argv`` (a script and its arguments) in a fresh interpreter after ``code_before``
    (which arranges for a SIGINT)."""
    code = f"import os, signal, sys, runpy; {code_before}; sys.argv = {argv!r}; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESNET_JAX_CACHE": "off"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# SIGINT as the script starts to import jax (a finder consulted first sends it).
SIGINT_AT_JAX_IMPORT = (
    "sys.meta_path.insert(0, type('Interrupt', (), {'find_spec': lambda self, name, *a: "
    "(name == 'jax' and os.kill(os.getpid(), signal.SIGINT)) or None})())")
# SIGINT inside orbax's save of a step.
SIGINT_IN_SAVE = (
    "import orbax.checkpoint as ocp, time; real = ocp.CheckpointManager.save; "
    "ocp.CheckpointManager.save = lambda self, *a, **k: (os.kill(os.getpid(), signal.SIGINT), "
    "time.sleep(0.05), real(self, *a, **k))[2]")


def test_ctrl_c_during_imports_or_a_save_prints_no_traceback(tmp_path):
    early = _interrupted_python(SIGINT_AT_JAX_IMPORT, [str(REPO / "train.py"), *TINY_ARGS, "--output", "a"],
                                tmp_path)
    assert early.returncode == 130, early.stderr
    assert early.stderr.strip() == "interrupted"
    assert not (tmp_path / "a").exists()
    late = _interrupted_python(SIGINT_IN_SAVE, [str(REPO / "train.py"), *TINY_ARGS, "--output", "b"], tmp_path)
    assert late.returncode == 130, late.stderr
    assert "Traceback" not in late.stderr and "Event loop is closed" not in late.stderr
    assert late.stderr.strip().splitlines()[-1] == "interrupted"
    (step,) = [p for p in (tmp_path / "b").iterdir() if p.name.isdigit()]
    resnet_jax.checkpoint.load_step(step)


@pytest.mark.slow  # its Ctrl-C sibling runs by default
def test_sigterm_during_imports_or_a_save_stops_as_ctrl_c_does_with_status_143(tmp_path):
    early = _interrupted_python(SIGINT_AT_JAX_IMPORT.replace("SIGINT", "SIGTERM"),
                                [str(REPO / "train.py"), *TINY_ARGS, "--output", "a"], tmp_path)
    assert early.returncode == 143, early.stderr
    assert early.stderr.strip() == "terminated"
    assert not (tmp_path / "a").exists()
    late = _interrupted_python(SIGINT_IN_SAVE.replace("SIGINT", "SIGTERM"),
                               [str(REPO / "train.py"), *TINY_ARGS, "--output", "b"], tmp_path)
    assert late.returncode == 143, late.stderr
    assert "Traceback" not in late.stderr and "Event loop is closed" not in late.stderr
    assert late.stderr.strip().splitlines()[-1] == "terminated"
    (step,) = [p for p in (tmp_path / "b").iterdir() if p.name.isdigit()]  # the save finished
    resnet_jax.checkpoint.load_step(step)


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (psutil when installed, else a scan of /proc)."""
    try:
        import psutil

        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except ImportError:
        pass
    except Exception:  # pid is gone
        return set()
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_mid_run_exits_143_keeps_the_last_checkpoint_and_resume_continues(tmp_path):
    """``python train.py`` gets SIGTERM after its first checkpoint: one line, status 143, no
    half-written step, no process left behind; the latest step loads and --resume ends the run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESNET_JAX_CACHE": str(tmp_path / "cache")}
    args = [str(REPO / "train.py"), "--dataset", DATA, "--arch", "my_resnet", "--stage-widths", "8,16",
            "--batch-size", "16", "--epochs", "40", "--checkpoint-every", "2", "--threads", "2",
            "--no-progress", "--no-tensorboard", "--no-plots", "--output", "run"]
    before = _descendants(os.getpid())
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run, deadline, below = tmp_path / "run", time.time() + 240, set()
    try:
        while time.time() < deadline and proc.poll() is None:
            if run.is_dir() and any(p.name.isdigit() for p in run.iterdir()):
                below = _descendants(proc.pid)
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err, err
    assert not [p for p in run.iterdir() if "tmp" in p.name], list(run.iterdir())
    assert not [pid for pid in below if _alive(pid)]
    assert not [pid for pid in _descendants(os.getpid()) - before if _alive(pid)]
    steps = sorted(int(p.name) for p in run.iterdir() if p.name.isdigit())
    total = int(err.split(" steps on ")[0].rsplit(" ", 1)[1])
    assert steps and steps[-1] < total  # stopped mid-run
    resnet_jax.load(run)  # the latest step, whole: its checksum holds
    resumed = subprocess.run([sys.executable, *args, "--resume"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {steps[-1]}" in resumed.stderr
    assert max(int(p.name) for p in run.iterdir() if p.name.isdigit()) == total


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_evaluate_refuses_a_batch_size_below_one(small_run, batch, capsys):
    code = cli_main(["evaluate", "--checkpoint", str(small_run), "--batch-size", batch])
    assert code == 2 and f"--batch-size must be at least 1, got {batch}" in capsys.readouterr().err


def test_stage_widths_that_do_not_match_the_stages_are_refused(tmp_path, capsys):
    args = [a for a in TINY_ARGS if a not in ("my_resnet", "--arch")]
    code = cli_main(["train", *args, "--arch", "resnet18", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "4 stages" in err and "(8, 16)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_outputs_never_replace_what_is_not_a_regular_file(small_run, tmp_path, kind, capsys):
    """evaluate's and visualize's pictures are written by a rename; a device, pipe or folder
    standing at the output path is refused, never renamed over."""
    target = tmp_path / "out.png"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    for argv in (["evaluate", "--checkpoint", str(small_run), "--output", str(target)],
                 ["visualize", "--weights", str(small_run), "--class", "0", "--steps", "2",
                  "--out", str(target)]):
        code = cli_main(argv)
        err = capsys.readouterr().err
        if kind == "folder" and argv[0] == "evaluate":  # a folder is where the picture goes
            assert code == 0 and len(list(target.glob("confusion_*.png"))) == 1
            continue
        assert code == 1 and str(target) in err and len(err.strip().splitlines()) == 1, err
        assert target.is_fifo() if kind == "fifo" else target.is_dir()
