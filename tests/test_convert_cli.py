"""convert and summary against bad input: planted files, full disks, foreign folders, races.

Each test is named after what it protects. The named-weights tests use a torch.hub cache
in tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchvision_model

import resnet_jax
from resnet_jax.cli import main
from resnet_jax.port import hub

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err


def listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Payload:
    """A pickle that, if ever unpickled with weights_only=False, creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Payload(marker)}, path)


def _point_weights_at(monkeypatch, file_name: str) -> str:
    """torchvision's resnet18 weights, published (for this test) under ``file_name``."""
    url = "https://download.pytorch.org/models/" + file_name
    monkeypatch.setattr(hub, "weights_url", lambda arch, name: url)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    return url


def _no_download(*args, **kwargs):
    raise AssertionError("the test must not download")


def test_planted_pickle_in_torch_hub_cache_never_runs(tmp_path, torch_home, capsys):
    """A file planted under the name torchvision expects is refused by its hash, and its
    code does not run (the marker file is never created)."""
    marker = tmp_path / "code_ran"
    cached = hub.cache_path("resnet18", "IMAGENET1K_V1")
    assert cached == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    _plant(cached, marker)
    found = _sha256(cached)[:8]
    code, _, err = run(capsys, "convert", "--arch", "resnet18", "--weights", "IMAGENET1K_V1",
                       "--out", tmp_path / "out")
    assert code == 2 and not marker.exists()
    assert "f37072fd" in one_line(err) and found in err and str(cached) in err
    assert not (tmp_path / "out").exists()


def test_planted_pickle_with_matching_hash_is_refused_by_the_safe_load(
        tmp_path, torch_home, monkeypatch, capsys):
    """Even when the hash in the name matches (an attacker who controls the name), the
    file is opened with weights_only=True: refused, never executed."""
    marker = tmp_path / "code_ran"
    staged = tmp_path / "planted.pth"
    _plant(staged, marker)
    name = f"resnet18-{_sha256(staged)[:8]}.pth"
    _point_weights_at(monkeypatch, name)
    cached = torch_home / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    staged.rename(cached)
    code, _, err = run(capsys, "convert", "--arch", "resnet18", "--weights", "IMAGENET1K_V1",
                       "--out", tmp_path / "out")
    assert code == 2 and not marker.exists()
    assert "weights_only=True" in one_line(err) and str(cached) in err


def test_named_weights_load_from_cache_when_hash_matches(tmp_path, torch_home, monkeypatch,
                                                         capsys):
    """The successful path of `convert --arch resnet18 --weights IMAGENET1K_V1`: a cached
    file whose SHA-256 starts with the prefix in its name is converted bit for bit."""
    tv = torchvision_model("resnet18", seed=21)
    staged = tmp_path / "w.pth"
    torch.save(tv.state_dict(), staged)
    name = f"resnet18-{_sha256(staged)[:8]}.pth"
    _point_weights_at(monkeypatch, name)
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    staged.rename(torch_home / "hub" / "checkpoints" / name)
    code, out, err = run(capsys, "convert", "--arch", "resnet18", "--weights", "IMAGENET1K_V1",
                         "--out", tmp_path / "r18")
    assert code == 0, err
    assert "torchvision resnet18 IMAGENET1K_V1" in out
    model, variables = resnet_jax.load(tmp_path / "r18")
    back = resnet_jax.port.to_torch(variables, model)
    assert all(torch.equal(back[k], v) for k, v in tv.state_dict().items())


def test_torchvision_file_name_hash_is_checked_on_cached_files(tmp_path, torch_home):
    """Real state dict, wrong content for its name: the error names both prefixes."""
    cached = hub.cache_path("resnet34", "IMAGENET1K_V1")
    cached.parent.mkdir(parents=True)
    torch.save(torchvision_model("resnet34").state_dict(), cached)
    found = _sha256(cached)[:8]
    with pytest.raises(resnet_jax.port.PortError) as e:
        hub.torchvision_state_dict("resnet34", "IMAGENET1K_V1")
    assert f"starts with {found}, but the name says b627a593" in str(e.value)


def test_missing_named_weights_are_downloaded_through_torch_hub(tmp_path, torch_home,
                                                                monkeypatch):
    """Absent from the cache: torch.hub.download_url_to_file fetches it (with the hash
    prefix to check), and the downloaded file is read safely."""
    tv = torchvision_model("resnet18", seed=3)
    staged = tmp_path / "w.pth"
    torch.save(tv.state_dict(), staged)
    prefix = _sha256(staged)[:8]
    url = f"https://example.invalid/resnet18-{prefix}.pth"
    monkeypatch.setattr(hub, "weights_url", lambda arch, name: url)
    calls = []

    def fake_download(src, dst, hash_prefix=None, progress=True):
        calls.append((src, dst, hash_prefix))
        Path(dst).write_bytes(staged.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    sd = hub.torchvision_state_dict("resnet18", "IMAGENET1K_V1", progress=False)
    dst = torch_home / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    assert calls == [(url, str(dst), prefix)]
    assert (sd["fc.weight"] == tv.fc.weight.detach().numpy()).all()

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    dst.unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(resnet_jax.port.PortError, match=f"place the file at {dst}"):
        hub.torchvision_state_dict("resnet18", "IMAGENET1K_V1", progress=False)


# --------------------------------------------------------------------------- outputs

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny model (my_resnet) as a torch state dict file and as a saved model directory."""
    d = tmp_path_factory.mktemp("small")
    model = resnet_jax.create_model("my_resnet")
    variables = resnet_jax.init_variables(model, 1)
    torch.save(resnet_jax.port.to_torch(variables, "my_resnet"), d / "w.pth")
    resnet_jax.save(d / "model", model, variables, arch="my_resnet")
    return d


@pytest.mark.slow
def test_overwrite_never_replaces_a_folder_that_is_not_a_saved_model(tmp_path, small, capsys):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    for name in ("a.txt", "b.jpg", "notes/c.md"):
        (out / name).write_text(name)
    before = listing(out)
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", out,
                       "--overwrite")
    assert code == 2 and (f"{out} is a folder of 3 files that is not a saved model; refusing "
                          "to replace it") in one_line(err)
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", out)
    assert code == 2 and "refusing to replace it" in one_line(err) and "--overwrite" in err
    assert listing(out) == before

    run_dir = tmp_path / "run"  # a training run's root: numbered steps, not one model
    shutil.copytree(small / "model", run_dir / "5")
    before = listing(run_dir)
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", run_dir,
                       "--overwrite")
    assert code == 2 and "a training run's folder (1 checkpoint step)" in one_line(err)
    assert listing(run_dir) == before

    notes = tmp_path / "notes.pth"
    notes.write_text("keep me")
    code, _, err = run(capsys, "convert", "--to-torch", small / "model", "--out", notes,
                       "--overwrite")
    assert code == 2 and "a file of 7 bytes that is not a .pth state dict" in one_line(err)
    assert notes.read_text() == "keep me"

    # What --overwrite is for: a previous model directory, a previous state dict file.
    prev = tmp_path / "prev"
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", prev, *extra)
        assert code == 0, err
    for name in ("w.pth", "w.safetensors"):
        for extra in ([], ["--overwrite"]):
            code, _, err = run(capsys, "convert", "--to-torch", prev, "--out", tmp_path / name,
                               *extra)
            assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.pth", "out", "prev", "run", "w.pth", "w.safetensors"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_to_torch_on_full_disk_leaves_no_partial_file(tmp_path, small, capsys, monkeypatch):
    """Disk full while writing: one line naming the file and the cause, status 1, no
    .partial file left, and the earlier file of that name untouched."""
    out = tmp_path / "w.pth"
    code, _, err = run(capsys, "convert", "--to-torch", small / "model", "--out", out)
    assert code == 0, err
    before = out.read_bytes()
    monkeypatch.setattr(os, "fsync", _disk_full)
    for target, extra in ((out, ["--overwrite"]), (tmp_path / "new.safetensors", [])):
        code, _, err = run(capsys, "convert", "--to-torch", small / "model", "--out", target,
                           *extra)
        assert code == 1 and one_line(err).endswith(f"{target}: No space left on device\n")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".partial"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, _, err = run(capsys, "convert", "--to-torch", small / "model", "--out", out,
                       "--overwrite")
    assert code == 1 and one_line(err).endswith(f"{out}: Read-only file system\n")
    assert out.read_bytes() == before


@pytest.mark.slow  # convert runs under file-size limits; the bad-input cases run by default
def test_convert_on_full_disk_or_unusable_out_keeps_previous_model(tmp_path, small, capsys,
                                                                    monkeypatch):
    """The flax side: disk full during orbax's write, an --out under a file; one line,
    status 1, the previous model and the folder as they were. A missing parent is made."""
    import orbax.checkpoint as ocp

    prev = tmp_path / "parent" / "model"  # the parent does not exist yet: it is made
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", prev)
    assert code == 0, err
    before = listing(tmp_path)

    def full(self, *args, **kwargs):  # what orbax raises on ENOSPC (measured on a tmpfs)
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ... Failed to write 3177548 bytes "
                         "to file 17: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.Checkpointer, "save", full)
    for target, extra in ((prev, ["--overwrite"]), (tmp_path / "new", [])):
        code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", target,
                           *extra)
        assert code == 1 and f"{target}: No space left on device" in one_line(err)
    monkeypatch.undo()
    (tmp_path / "file.txt").write_text("x")
    before["file.txt"] = b"x"
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out",
                       tmp_path / "file.txt" / "model")
    assert code == 1 and f"{tmp_path / 'file.txt'}: a file stands where a folder" in one_line(err)
    code, _, err = run(capsys, "convert", "--to-torch", prev, "--out",
                       tmp_path / "file.txt" / "w.pth")
    assert code == 1 and f"{tmp_path / 'file.txt'}: a file stands where a folder" in one_line(err)
    assert listing(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["file.txt", "parent"]


@pytest.mark.slow  # two converts racing
def test_out_written_by_another_process_meanwhile_is_not_replaced(tmp_path, small, capsys,
                                                                  monkeypatch):
    """Two converts to one --out: the one that finishes second is refused with one line;
    the first one's output stays whole (never a mixture, never silently replaced)."""
    import resnet_jax.commands as commands

    out = tmp_path / "out"
    real_from_torch = resnet_jax.port.from_torch

    def other_finishes_first(*args, **kwargs):
        result = real_from_torch(*args, **kwargs)
        shutil.copytree(small / "model", out)
        return result

    monkeypatch.setattr(resnet_jax.port, "from_torch", other_finishes_first)
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", out)
    assert code == 2 and "created by another process" in one_line(err)
    assert listing(out) == listing(small / "model")

    pth = tmp_path / "w.pth"
    real_bytes = commands._torch_bytes

    def other_writes_first(*args, **kwargs):
        result = real_bytes(*args, **kwargs)
        pth.write_bytes(b"the other's")
        return result

    monkeypatch.setattr(commands, "_torch_bytes", other_writes_first)
    code, _, err = run(capsys, "convert", "--to-torch", small / "model", "--out", pth)
    assert code == 2 and "created by another process" in one_line(err)
    assert pth.read_bytes() == b"the other's"
    assert sorted(os.listdir(tmp_path)) == ["out", "w.pth"]


def test_ctrl_c_during_convert_leaves_no_claimed_out(tmp_path, small, capsys, monkeypatch):
    """Ctrl-C while the model is written: status 130, one line, and no empty --out left
    (the folder claimed for the write is given back); an earlier model is kept."""
    import orbax.checkpoint as ocp

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.Checkpointer, "save", interrupted)
    code, _, err = run(capsys, "convert", "--weights", small / "w.pth", "--out", tmp_path / "m")
    assert code == 130 and err == "interrupted\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_two_concurrent_converts_to_one_out_never_mix(tmp_path, small):
    """Real processes: of two converts started together, one writes the model and the
    other gets a one-line error (status 2); no staging folder is left behind."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "resnet_jax.cli", "convert", "--weights",
           str(small / "w.pth"), "--out", str(out)]
    env = dict(os.environ, RESNET_JAX_CACHE="off", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    loser = one_line(results[1][1])
    assert "already exists" in loser or "created by another process" in loser
    assert listing(out) and resnet_jax.load(out)[0] == resnet_jax.create_model("my_resnet")
    assert os.listdir(tmp_path) == ["out"]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv,valid", [
    ("resnet18 --input-size 0", "--input-size must be at least 1 pixel (got 0)"),
    ("resnet18 --input-size -3", "--input-size must be at least 1 pixel (got -3)"),
    ("resnet18 --num-classes -1", "--num-classes must be at least 1 (got -1)"),
    ("resnet18 --num-classes 0", "--num-classes must be at least 1 (got 0)"),
    ("resnet18 --in-channels 0", "--in-channels must be at least 1 (got 0)"),
    ("digit_cnn --input-size 9", "digit_cnn cannot take a 9x9 input"),
    ("digit_cnn --stem small", "digit_cnn has no option(s) ['stem']"),
])
def test_summary_rejects_sizes_outside_valid_range(capsys, argv, valid):
    code, out, err = run(capsys, "summary", *argv.split())
    assert code == 2 and valid in one_line(err) and out == ""


@pytest.fixture(scope="module")
def bad_files(small, tmp_path_factory):
    """Files a user may give by mistake, beside a good one."""
    d = tmp_path_factory.mktemp("bad")
    good = (small / "w.pth").read_bytes()
    (d / "truncated.pth").write_bytes(good[: len(good) // 2])
    (d / "empty.pth").write_bytes(b"")
    from safetensors.torch import save_file

    sd = torch.load(small / "w.pth", weights_only=True)
    save_file({k: v.to(torch.int8).contiguous() for k, v in sd.items()}, str(d / "int8.safetensors"))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    torch.save(other.state_dict(), d / "not_a_resnet.pth")
    torch.save(other, d / "pickled_module.pth")
    return d


BAD_CONVERTS = [  # (arguments, what the one-line error says)
    (["--weights", "{bad}/truncated.pth"], "truncated or is not a PyTorch weights file"),
    (["--weights", "{bad}/empty.pth"], "truncated or is not a PyTorch weights file"),
    (["--weights", "{bad}/int8.safetensors"], "int8 tensors"),
    (["--weights", "{bad}/not_a_resnet.pth"], "not of a registered architecture"),
    (["--weights", "{bad}/pickled_module.pth"], "weights_only=True"),
    (["--weights", "{bad}/missing.pth"], "does not exist"),
    (["--arch", "resnet18", "--weights", "{small}/w.pth"], "fit arch 'my_resnet'"),
    (["--arch", "resnet_18", "--weights", "{small}/w.pth"], "Did you mean 'resnet18'?"),
    (["--weights", "{small}/w.pth", "--num-classes", "0"], "--num-classes must be at least 1"),
    (["--weights", "{small}/w.pth", "--num-classes", "-2"], "--num-classes must be at least 1"),
    (["--arch", "resnet18", "--weights", "IMAGENET1K_V9"], "no torchvision weights named"),
    (["--arch", "my_resnet", "--weights", "IMAGENET1K_V1"], "has no torchvision weights"),
    (["--weights", "IMAGENET1K_V1"], "also give --arch"),
    (["--weights", "{small}/model"], "use --to-torch"),
    (["--weights", "{small}/w.pth", "--out", "{tmp}/x.pth"], "writes a model directory"),
    (["--to-torch", "{small}/model", "--num-classes", "3"], "apply only to --weights"),
    (["--to-torch", "{small}/model", "--verify"], "apply only to --weights"),
    (["--to-torch", "{small}/model", "--arch", "resnet50"], "which is a my_resnet"),
    (["--to-torch", "{small}/model", "--out", "{tmp}/x.txt"], "expected a .pth, .pt or"),
    (["--to-torch", "{bad}"], "holds no resnet-jax checkpoint"),
    (["--to-torch", "{small}/model", "--weights", "{small}/w.pth"], "give either"),
    ([], "give either"),
]


@pytest.mark.parametrize("argv,says", BAD_CONVERTS, ids=[" ".join(a) for a, _ in BAD_CONVERTS])
def test_bad_convert_input_is_one_line_error_and_writes_nothing(tmp_path, small, bad_files,
                                                                 capsys, argv, says):
    argv = [a.format(bad=bad_files, small=small, tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / ("out.pth" if "--to-torch" in argv else "out"))]
    code, out, err = run(capsys, "convert", *argv)
    assert code == 2 and says in one_line(err), err
    assert os.listdir(tmp_path) == []
