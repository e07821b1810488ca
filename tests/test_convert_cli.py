"""convert and summary against bad input: planted files, full disks, foreign folders, races.

Each test is named after what it protects. The named-weights tests use a torch.hub cache
in tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
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
