"""The commands: summary, convert (both directions, torchvision's cache), predict."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from conftest import torchvision_model
from PIL import Image

import resnet_jax
from resnet_jax.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_lists_layers_shapes_and_totals(capsys):
    code, out, _ = run(capsys, "summary", "resnet18")
    assert code == 0
    assert "Total params: 11,689,512" in out
    assert re.search(r"^\s+layer4\.1\.conv2\s+1x7x7x512\s+2,359,296$", out, re.M)
    code, out, _ = run(capsys, "summary", "my_resnet")
    for line in [r"conv1\s+1x112x112x64", r"maxpool\s+1x56x56x64", r"layer1\s+1x56x56x64",
                 r"layer2\s+1x28x28x128", r"avgpool\s+1x128", r"fc\s+1x2\s+258"]:
        assert re.search("^" + line, out, re.M), line
    code, out, _ = run(capsys, "summary", "resnet50", "--input-size", "160", "--num-classes", "10")
    assert re.search(r"^layer4\s+1x5x5x2048", out, re.M) and "fc " in out
    code, _, err = run(capsys, "summary", "resnet_50")
    assert code == 2 and "Did you mean 'resnet50'?" in err and "\n" == err[-1] and err.count("\n") == 1


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_convert_torchvision_weights_from_populated_cache(tmp_path, torch_home, capsys,
                                                          monkeypatch):
    """The named-weights path goes through torch.hub's cache: a file placed there is used
    and nothing is downloaded. (Its name carries its own SHA-256 prefix, as torchvision's
    names do, so the published address is pointed at that name.)"""
    import hashlib

    from resnet_jax.port import hub

    tv = torchvision_model("resnet18", seed=11)
    staged = tmp_path / "w.pth"
    torch.save(tv.state_dict(), staged)
    prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/resnet18-{prefix}.pth"
    named = hub.weights_url

    def published(arch, name):
        named(arch, name)  # an unknown name stays an error
        return url

    monkeypatch.setattr(hub, "weights_url", published)
    cached = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    staged.rename(cached)

    out_dir = tmp_path / "r18"
    code, out, err = run(capsys, "convert", "--arch", "resnet18", "--weights", "IMAGENET1K_V1",
                         "--out", out_dir, "--verify")
    assert code == 0, err
    rel = float(re.search(r"relative error ([0-9.e+-]+)", out).group(1))
    assert rel <= 1e-5 and "top-1 agrees on 2/2" in out
    model, variables = resnet_jax.load(out_dir)
    assert resnet_jax.checkpoint.arch_of(out_dir) == "resnet18"
    back = resnet_jax.port.to_torch(variables, model)
    assert all(torch.equal(back[k], v) for k, v in tv.state_dict().items())

    # ... and back to torch through the command, as .pth and as .safetensors.
    for name in ("back.pth", "back.safetensors"):
        code, out, err = run(capsys, "convert", "--to-torch", out_dir, "--out", tmp_path / name)
        assert code == 0, err
    loaded = torch.load(tmp_path / "back.pth", weights_only=True)
    from safetensors.torch import load_file
    loaded_st = load_file(str(tmp_path / "back.safetensors"))
    for k, v in tv.state_dict().items():
        assert torch.equal(loaded[k], v) and torch.equal(loaded_st[k], v), k

    code, _, err = run(capsys, "convert", "--arch", "resnet18", "--weights", "IMAGENET1K_V7",
                       "--out", tmp_path / "x")
    assert code == 2 and "IMAGENET1K_V1" in err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_convert_file_with_new_head(tmp_path, capsys):
    tv = torchvision_model("resnet34", seed=3)
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    code, out, err = run(capsys, "convert", "--weights", tmp_path / "w.pth", "--out",
                         tmp_path / "ft", "--num-classes", "5", "--verify")
    assert code == 0, err
    assert "fresh" in out and "5-class head" in out and "pooled features" in out
    model, variables = resnet_jax.load(tmp_path / "ft")
    assert model.num_classes == 5 and variables["params"]["fc"]["kernel"].shape == (512, 5)
    np.testing.assert_array_equal(
        variables["params"]["layer3_1"]["conv2"]["kernel"],
        tv.layer3[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))


def test_bad_inputs_write_nothing(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "convert", "--arch", "resnet50", "--weights",
                       tmp_path / "r18.pth", "--out", out_dir)
    assert code == 2 and "fit arch 'resnet18'" in err
    (tmp_path / "half.pth").write_bytes((tmp_path / "r18.pth").read_bytes()[:4096])
    code, _, err = run(capsys, "convert", "--weights", tmp_path / "half.pth", "--out", out_dir)
    assert code == 2 and "truncated" in err
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.pth", "r18.pth"]

    # An existing model directory is never replaced without --overwrite.
    code, _, _ = run(capsys, "convert", "--weights", tmp_path / "r18.pth", "--out", out_dir)
    assert code == 0
    before = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*"))
    code, _, err = run(capsys, "convert", "--weights", tmp_path / "r18.pth", "--out", out_dir)
    assert code == 2 and "--overwrite" in err
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) == before

    code, _, err = run(capsys, "predict", "--weights", tmp_path, tmp_path / "r18.pth")
    assert code == 2 and "holds no resnet-jax checkpoint" in err


def test_predict_matches_torchvision(tmp_path, capsys):
    tv = torchvision_model("resnet18", seed=8)
    model, variables = resnet_jax.port.from_torch(tv)
    resnet_jax.save(tmp_path / "model", model, variables, arch="resnet18")
    paths = []
    for name in ("chelsea", "coffee"):
        paths.append(tmp_path / f"{name}.jpg")
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1], quality=95)
    gray = tmp_path / "camera.png"
    Image.fromarray(skimage.data.camera()).save(gray)
    paths.append(gray)

    code, out, err = run(capsys, "predict", "--weights", tmp_path / "model", *paths)
    assert code == 0, err
    blocks = out.strip().split(str(tmp_path))[1:]
    preset = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    for path, block in zip(paths, blocks):
        img = Image.open(path).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(tv(preset(img)[None]), -1)[0].numpy()
        rows = re.findall(r"^\s+([0-9.]+)%\s+(\d+)\s+(.+)$", block, re.M)
        assert len(rows) == 5
        top5 = np.argsort(-probs)[:5]
        assert [int(r[1]) for r in rows] == list(top5)
        assert [r[2] for r in rows] == [names[i] for i in top5]
        np.testing.assert_allclose([float(r[0]) / 100 for r in rows], probs[top5], atol=1e-4)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    code, _, err = run(capsys, "predict", "--weights", tmp_path / "model", broken)
    assert code == 2 and "broken.jpg" in err and "truncated or not an image" in err


@pytest.mark.parametrize("entry", ["train.py", "convert_weights.py", "resnet_jax.cli"])
def test_ctrl_c_while_jax_loads_ends_in_one_line_with_status_130(entry, tmp_path):
    """A Ctrl-C that lands while an entry point loads jax (here: when jaxlib's native
    extension is first imported) prints "interrupted", exits 130, and no traceback: a
    KeyboardInterrupt raised inside that extension's start-up would surface as an
    ImportError or crash the interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    start = (f"runpy.run_path({str(root / entry)!r}, run_name='__main__')" if entry.endswith(".py")
             else f"runpy.run_module({entry!r}, run_name='__main__', alter_sys=True)")
    code = (
        "import os, runpy, signal, sys, time\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'jaxlib._jax':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            time.sleep(0.05)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.argv = ['{entry}', 'summary', 'my_resnet']\n"
        f"{start}\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert (r.returncode, r.stderr.strip()) == (130, "interrupted"), r.stderr[-2000:]
