"""Fixtures made once per attack run: images, weights, pickles, runs, data folders.

``build(root)`` returns a dict of name -> path (strings), used as ``{name}`` in the
cases' arguments. A ``*_ref`` image is what the matching unusual image must decode to,
by the training loader's rules, saved as a plain 8-bit RGB PNG.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

EVIL_CODE = "import os; open(os.environ.get('ATTACK_MARKER', '/dev/null'), 'w').write('ran')"
TINY_TRAIN = ["--dataset", "synthetic:classes=3,size=16,n=48", "--max-steps", "2", "--batch-size", "8",
              "--epochs", "1", "--no-plots", "--no-tensorboard", "--no-progress"]


class Evil:
    """Unpickling this runs ``EVIL_CODE``, which writes the case's marker file."""

    def __reduce__(self):
        return exec, (EVIL_CODE,)


def scene(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """An RGB picture with structure (gradients, a disc, stripes), uint8 HWC."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) % 64 * 4], -1)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (h / 4) ** 2
    img[disc] = [230, 40, 30]
    img[(x // 12) % 2 == 0] *= 0.7
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _save_ref(arr: np.ndarray, path: Path) -> str:
    from PIL import Image

    Image.fromarray(arr).convert("RGB").save(path)
    return str(path)


def _scaled_ref(values: np.ndarray) -> np.ndarray:
    """The training loader's rule for 16-bit and float images: scale the maximum to 255."""
    hi = float(values.max()) or 1.0
    return (values.astype(np.float64) * (255.0 / hi)).round().astype(np.uint8)


def bomb_png(path: Path, width: int = 20000, height: int = 10000) -> None:
    """A valid 1-bit PNG of width*height pixels (beyond PIL's limit), a few kB on disk."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))


def unusual_images(d: Path) -> dict[str, str]:
    """Images that must decode like the loader does, each with its reference."""
    from PIL import Image

    d.mkdir(parents=True)
    rgb = scene()
    fx = {}
    Image.fromarray(rgb).save(d / "rgb.jpg", quality=92)
    fx["rgb_jpg"] = str(d / "rgb.jpg")
    with Image.open(d / "rgb.jpg") as im:
        fx["rgb_jpg_ref"] = _save_ref(np.asarray(im.convert("RGB")), d / "rgb_jpg_ref.png")
    gray = rgb.mean(-1)
    g16 = (gray * 3000 / 255 + 500).astype(np.uint16)  # max ~3500: not white when scaled
    Image.fromarray(g16).save(d / "gray16.png")
    fx["gray16"], fx["gray16_ref"] = str(d / "gray16.png"), _save_ref(_scaled_ref(g16), d / "gray16_ref.png")
    f32 = (gray / 255.0 * 0.8 + 0.05).astype(np.float32)
    Image.fromarray(f32, mode="F").save(d / "float.tif")
    fx["float_tif"], fx["float_tif_ref"] = str(d / "float.tif"), _save_ref(_scaled_ref(f32), d / "float_ref.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    with Image.open(d / "cmyk.jpg") as im:
        fx["cmyk"], fx["cmyk_ref"] = str(d / "cmyk.jpg"), _save_ref(np.asarray(im.convert("RGB")), d / "cmyk_ref.png")
    fx.update(transparent_images(d, rgb))
    gray8 = gray.astype(np.uint8)
    Image.fromarray(gray8).save(d / "gray8.png")
    fx["gray8"], fx["gray8_ref"] = str(d / "gray8.png"), _save_ref(gray8, d / "gray8_ref.png")
    return fx


def transparent_images(d: Path, rgb: np.ndarray) -> dict[str, str]:
    """A palette PNG with a transparent colour and an RGBA PNG; references on white."""
    from PIL import Image

    fx = {}
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    with Image.open(d / "palette.png") as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    fx["palette"] = str(d / "palette.png")
    fx["palette_ref"] = _save_ref(np.asarray(Image.alpha_composite(white, rgba).convert("RGB")),
                                  d / "palette_ref.png")
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, rgb.shape[1] // 3:] = 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "rgba.png")
    with Image.open(d / "rgba.png") as im:
        comp = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    fx["rgba"], fx["rgba_ref"] = str(d / "rgba.png"), _save_ref(np.asarray(comp.convert("RGB")), d / "rgba_ref.png")
    return fx


def plain_images(d: Path) -> dict[str, str]:
    """Odd but valid files, and files that are not images at all."""
    from PIL import Image

    rgb = scene(seed=1)
    Image.fromarray(rgb[:1, :1]).save(d / "one.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(d / "white.png")
    Image.fromarray(rgb).save(d / "really_png.jpg", format="PNG")
    Image.fromarray(rgb).save(d / "bmp.bmp")
    Image.fromarray(rgb).save(d / "webp.webp", lossless=True)
    frames = [Image.fromarray(np.roll(rgb, 20 * i, 1)) for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.repeat(rgb[:, :4], 1, 1)).save(d / "narrow.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (d / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bomb_png(d / "bomb.png")
    (d / "a_dir.png").mkdir()
    for sub in ("same_a", "same_b"):
        (d / sub).mkdir()
    Image.fromarray(rgb).save(d / "same_a" / "x.png")
    Image.fromarray(scene(seed=2)[::-1]).save(d / "same_b" / "x.png")
    names = {"one": "one.png", "white": "white.png", "png_as_jpg": "really_png.jpg",
             "bmp": "bmp.bmp", "webp": "webp.webp", "gif": "anim.gif", "narrow": "narrow.png",
             "trunc": "trunc.jpg", "empty_img": "empty.png", "text_img": "text.png",
             "garbage_img": "garbage.png", "bomb": "bomb.png", "dir_img": "a_dir.png",
             "same_a": "same_a/x.png", "same_b": "same_b/x.png"}
    fx = {k: str(d / v) for k, v in names.items()}
    fx["missing_img"] = str(d / "no_such_image.jpg")
    return fx


def evil_files(d: Path) -> dict[str, str]:
    """Files whose unpickling runs code, in every container torch.load accepts."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    fx = {}
    for name in ("evil.pth", "evil.pt", "evil.bin", "evil.ckpt", "evil.tar"):
        torch.save(Evil(), d / name)
        fx[name.replace(".", "_")] = str(d / name)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": Evil()}, d / "evil_dict.pth")
    with open(d / "evil_legacy.pth", "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with open(d / "evil.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    fx.update({"evil_dict": str(d / "evil_dict.pth"), "evil_legacy": str(d / "evil_legacy.pth"),
               "evil_pkl": str(d / "evil.pkl")})
    return fx


def random_resnet18(seed: int = 0, num_classes: int = 1000):
    """torchvision resnet18, random weights, random BatchNorm statistics (its top-1
    probability differs visibly between pictures, so ``predict`` tells decodings apart)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def weight_files(d: Path) -> dict[str, str]:
    """resnet18 state dicts: intact, as safetensors, damaged and edited."""
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    sd = random_resnet18().state_dict()
    torch.save(sd, d / "r18.pth")
    raw = (d / "r18.pth").read_bytes()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "r18.safetensors"))
    (d / "r18_trunc.pth").write_bytes(raw[: len(raw) // 2])
    (d / "r18_empty.pth").write_bytes(b"")
    flipped = bytearray(raw)
    for i in range(0, 64, 7):  # the zip's local header: no longer a readable archive
        flipped[i] ^= 0xFF
    (d / "r18_flip.pth").write_bytes(bytes(flipped))
    st = (d / "r18.safetensors").read_bytes()
    (d / "r18_trunc.safetensors").write_bytes(st[: len(st) // 3])
    (d / "text.pth").write_text("not a checkpoint\n")
    edits = {
        "r18_missing_key": {k: v for k, v in sd.items() if k != "layer2.0.conv1.weight"},
        "r18_extra_key": {**sd, "layer9.0.conv1.weight": torch.zeros(3)},
        "r18_wrong_shape": {**sd, "layer3.1.bn2.weight": torch.ones(7)},
        "r18_fc10": {**sd, "fc.weight": sd["fc.weight"][:10], "fc.bias": sd["fc.bias"][:10]},
        "r18_nan": {**sd, "fc.weight": torch.full_like(sd["fc.weight"], float("nan"))},
        "not_a_dict": [1, 2, 3],
    }
    fx = {"r18_pth": str(d / "r18.pth"), "r18_st": str(d / "r18.safetensors"),
          "r18_trunc": str(d / "r18_trunc.pth"), "r18_empty": str(d / "r18_empty.pth"),
          "r18_flip": str(d / "r18_flip.pth"), "r18_st_trunc": str(d / "r18_trunc.safetensors"),
          "text_pth": str(d / "text.pth")}
    for name, obj in edits.items():
        torch.save(obj, d / f"{name}.pth")
        fx[name] = str(d / f"{name}.pth")
    return fx


def hub_cache(torch_home: Path, weights: dict) -> None:
    """Planted files in torch.hub's cache, named as torchvision's downloads."""
    import torch

    ckpts = torch_home / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save(Evil(), ckpts / "resnet34-b627a593.pth")
    shutil.copy(weights["r18_pth"], ckpts / "resnet18-f37072fd.pth")  # right name, wrong hash
    shutil.copy(weights["r18_trunc"], ckpts / "resnet50-11ad3fa6.pth")


REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], env: dict, cwd: Path, what: str) -> None:
    from .core import command

    proc = subprocess.run(command(args), env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fixture {what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def data_folders(d: Path) -> dict[str, str]:
    """Image folders and MNIST folders that are wrong in one way each."""
    from PIL import Image

    def put(folder: Path, n: int, seed: int):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(scene(12, 12, seed * 100 + i)).save(folder / f"{i}.png")

    for c in ("a", "b"):
        put(d / "valonly" / "train" / c, 6, ord(c))
        put(d / "valonly" / "val" / c, 2, ord(c) + 1)
        put(d / "good" / c, 10, ord(c))
        put(d / "broken" / c, 10, ord(c))
    put(d / "valonly" / "val" / "zebra", 2, 9)
    (d / "broken" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    put(d / "oneclass" / "only", 12, 3)
    put(d / "emptyclass" / "a", 6, 4)
    (d / "emptyclass" / "b").mkdir()
    (d / "noclass").mkdir()
    Image.fromarray(scene(12, 12)).save(d / "noclass" / "loose.png")
    (d / "mnist_empty").mkdir()
    (d / "mnist_garbage").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / "mnist_garbage" / stem).write_bytes(os.urandom(300))
    names = ("valonly", "good", "broken", "oneclass", "emptyclass", "noclass", "mnist_empty",
             "mnist_garbage")
    return {f"data_{n}": str(d / n) for n in names}


def nan_head_model(run: Path, out: Path) -> None:
    """The run's latest model with a NaN head, saved with the run's config (data set too)."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from resnet_jax.checkpoint import load, load_config, save_args

    model, variables = load(run)
    config = load_config(run)
    params = dict(variables["params"])
    head = [k for k in params if k in ("fc", "head", "Dense_0")] or [sorted(params)[-1]]
    params[head[0]] = {k: jnp.full_like(v, jnp.nan) for k, v in params[head[0]].items()}
    variables = {**variables, "params": params}
    # save_args writes the checksum of these variables where the code keeps one.
    extra = {k: v for k, v in config.items() if k != "arch" and not k.endswith("sha256")}
    items = save_args(model, variables, config.get("arch"), **extra)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(out.absolute(), args=ocp.args.Composite(**items))


def models(root: Path, env: dict, fx: dict) -> dict[str, str]:
    """A tiny trained run (steps 1 and 2), a converted resnet18, a NaN-head model."""
    run = root / "run"
    run_cli(["resnet-jax", "train", *TINY_TRAIN, "--checkpoint-every", "1", "--keep", "5",
             "--output", str(run)], env, root, "tiny training run")
    model18 = root / "model18"
    run_cli(["convert_weights.py", "--weights", fx["r18_pth"], "--out", str(model18)],
            env, root, "converted resnet18")
    # In a child: the harness itself never imports jax (it forks the cases' processes).
    code = ("import sys; from pathlib import Path; from benchmarks.attack_cases.fixtures import "
            "nan_head_model; nan_head_model(Path(sys.argv[1]), Path(sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(root / "nan_model")],
                          env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fixture NaN-head model failed:\n{proc.stderr[-3000:]}")
    return {"run": str(run), "model18": str(model18), "nan_model": str(root / "nan_model")}


def environment(root: Path) -> dict:
    """The subprocesses' environment: every cache and home inside the attack's temp dir."""
    env = dict(os.environ)
    env.update(HOME=str(root / "home"), TORCH_HOME=str(root / "torch_home"),
               XDG_CACHE_HOME=str(root / "home" / ".cache"), MPLCONFIGDIR=str(root / "mpl"),
               RESNET_JAX_CACHE=str(root / "xla_cache"), PYTHONWARNINGS="default",
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    env.pop("XLA_FLAGS", None)
    return env


def build(root: Path) -> tuple[dict, dict]:
    """Make every fixture under ``root``; returns (fixtures, environment)."""
    root.mkdir(parents=True, exist_ok=True)
    env = environment(root)
    for sub in ("home", "mpl"):
        (root / sub).mkdir(exist_ok=True)
    fx = {"root": str(root), "torch_home": env["TORCH_HOME"]}
    fx.update(unusual_images(root / "images"))
    fx.update(plain_images(root / "images"))
    fx.update(evil_files(root / "evil"))
    fx.update(weight_files(root / "weights"))
    hub_cache(root / "torch_home", fx)
    fx.update(data_folders(root / "data"))
    fx.update(models(root, env, fx))
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    fx["readonly"] = str(ro)
    self_check(fx, env)
    return fx, env


def self_check(fx: dict, env: dict) -> None:
    """The fixtures are what the cases say they are: the pickles do run code when loaded
    unsafely, the bomb is one for PIL, the unusual images have their unusual modes."""
    from PIL import Image

    modes = {"gray16": ("I;16",), "float_tif": ("F",), "cmyk": ("CMYK",), "palette": ("P",),
             "rgba": ("RGBA",), "gray8": ("L",), "one": ("RGB",)}
    for key, want in modes.items():
        with Image.open(fx[key]) as im:
            if im.mode not in want:
                raise RuntimeError(f"fixture {key} has mode {im.mode}, expected {want}")
    try:
        Image.open(fx["bomb"])
        raise RuntimeError("the bomb PNG opened without PIL's DecompressionBombError")
    except Image.DecompressionBombError:
        pass
    markers = Path(fx["root"]) / "evil_markers"
    markers.mkdir(exist_ok=True)
    evil = [v for k, v in fx.items() if k.startswith("evil")]
    evil.append(str(Path(fx["torch_home"]) / "hub" / "checkpoints" / "resnet34-b627a593.pth"))
    code = ("import os, sys, torch\n"
            "for i, path in enumerate(sys.argv[2:]):\n"
            "    os.environ['ATTACK_MARKER'] = os.path.join(sys.argv[1], str(i))\n"
            "    try:\n"
            "        torch.load(path, weights_only=False)\n"
            "    except Exception:\n"
            "        pass\n")
    subprocess.run([sys.executable, "-c", code, str(markers), *evil], env=env, capture_output=True)
    missed = [p for i, p in enumerate(evil) if not (markers / str(i)).exists()]
    shutil.rmtree(markers)
    if missed:
        raise RuntimeError(f"{missed} did not run their code when unpickled unsafely")
