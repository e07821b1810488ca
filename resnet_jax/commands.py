"""The foundation's subcommands: ``summary``, ``predict`` and ``convert``."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from .errors import ResNetJaxError


def register(sub) -> None:
    p = sub.add_parser("summary", help="print a model's layers, output shapes and parameter counts")
    p.add_argument("arch", help="a registered architecture (e.g. resnet18, my_resnet)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--stem", choices=["imagenet", "small"], default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.set_defaults(func=run_summary)

    p = sub.add_parser("predict", help="top-5 classes of images under a saved model",
                       description="Print each image's most likely classes, with the model's "
                                   "class names, after the preprocessing stored with the model "
                                   "(torchvision's for converted ImageNet models).")
    p.add_argument("--weights", required=True, type=Path, help="a saved model directory")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("convert", help="torchvision weights <-> flax model directory")
    add_convert_arguments(p)
    p.set_defaults(func=run_convert)


# --------------------------------------------------------------------------- summary

def _at_least(option: str, value, low: int, unit: str = "") -> None:
    """A command-line number below its valid range is a user error naming the range."""
    if value is not None and value < low:
        raise ResNetJaxError(f"{option} must be at least {low}{unit} (got {value})")


def run_summary(args) -> int:
    from .models import create_model
    from .summary import format_summary, summarize

    _at_least("--input-size", args.input_size, 1, " pixel")
    _at_least("--num-classes", args.num_classes, 1)
    _at_least("--in-channels", args.in_channels, 1)
    options = {k: v for k, v in (("stem", args.stem), ("in_channels", args.in_channels))
               if v is not None}
    try:
        model = create_model(args.arch, num_classes=args.num_classes, **options)
    except TypeError as e:  # an option this family has not (digit_cnn has no --stem)
        raise ResNetJaxError(str(e)) from None
    try:
        rows, totals = summarize(model, args.input_size)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        if args.input_size is None:
            raise
        from .models import input_shape

        usual = input_shape(model)[1]
        raise ResNetJaxError(
            f"{args.arch} cannot take a {args.input_size}x{args.input_size} input: its layers "
            f"shrink it to nothing ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"give a larger --input-size (its usual one is {usual})") from None
    print(format_summary(args.arch, rows, totals))
    return 0


# --------------------------------------------------------------------------- predict

def run_predict(args) -> int:
    """Top-k classes of image files, prepared exactly as the model's evaluation prepares
    its test images (the preprocessing stored with it; torchvision's for ImageNet models)."""
    import jax
    import numpy as np

    from . import ops
    from .explain.inputs import load_model
    from .xla_cpu import inference_jit

    if args.top <= 0:
        raise ResNetJaxError(f"--top {args.top}: give a positive number of classes to show")
    m = load_model(args.weights)
    batch = m.preprocess(list(args.images))
    model = ops.cpu_fast(m.model)
    logits = inference_jit(lambda v, x: model.apply(v, x, train=False))(m.variables, batch)
    probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
    k = min(args.top, probs.shape[-1])
    for path, p in zip(args.images, probs):
        print(path)
        for idx in np.argsort(-p, kind="stable")[:k]:
            label = m.class_names[idx] if m.class_names is not None else f"class {idx}"
            print(f"  {p[idx]:9.4%}  {idx:4d}  {label}")
    return 0


# --------------------------------------------------------------------------- convert

def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Bring torchvision weights into a flax model directory (--weights SRC --out DIR), "
        "or write a saved model back as a torch state dict (--to-torch DIR --out FILE)."
    )
    p.add_argument("--arch", help="registered architecture; inferred from the weights if omitted")
    p.add_argument("--weights", metavar="SRC",
                   help="torchvision weights name (IMAGENET1K_V1, DEFAULT, ...) or a "
                        ".pth/.pt/.safetensors file")
    p.add_argument("--to-torch", metavar="DIR", type=Path,
                   help="a saved model directory to write out as a torch state dict")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory (to flax) or .pth/.safetensors file (to torch)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="keep the backbone and start a fresh head with this many classes")
    p.add_argument("--verify", action="store_true",
                   help="run torchvision and the converted model on one random batch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run_convert(args) -> int:
    if bool(args.weights) == bool(args.to_torch):
        raise ResNetJaxError("give either --weights SRC (torch -> flax) or --to-torch DIR "
                             "(flax -> torch)")
    _at_least("--num-classes", args.num_classes, 1)
    if args.to_torch:
        given = [o for o, v in (("--num-classes", args.num_classes is not None),
                                ("--verify", args.verify)) if v]
        if given:
            raise ResNetJaxError(f"{' and '.join(given)} apply only to --weights (torch -> "
                                 "flax); --to-torch writes the saved model as it is")
        return _convert_to_torch(args)
    return _convert_from_torch(args)


WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
TORCH_OUT_SUFFIXES = (".pth", ".pt", ".safetensors")


def _read_source(arch: str | None, src: str):
    from .checkpoint import CONFIG_ITEM
    from .port import load_state_dict

    path = Path(src)
    if path.is_dir():
        hint = ("; it holds a saved flax model: to write that as a torch state dict, use "
                "--to-torch DIR --out FILE.pth" if (path / CONFIG_ITEM).is_dir() else "")
        raise ResNetJaxError(f"--weights {src} is a folder, not a .pth/.pt/.safetensors "
                             f"file or a torchvision weights name{hint}")
    if path.suffix in WEIGHTS_SUFFIXES or path.exists():
        return load_state_dict(path), str(path)
    if arch is None:
        raise ResNetJaxError(f"{src!r} is not a file; to use torchvision's weights by name, "
                             "also give --arch (e.g. --arch resnet18 --weights IMAGENET1K_V1)")
    from .port.hub import torchvision_state_dict

    return torchvision_state_dict(arch, src), f"torchvision {arch} {src}"


def _convert_from_torch(args) -> int:
    from .models import with_new_head
    from .port import from_torch, infer_arch

    if args.out.suffix in WEIGHTS_SUFFIXES:
        raise ResNetJaxError(
            f"--out {args.out}: converting --weights writes a model directory, not a "
            f"{args.out.suffix} file; give a folder name (to write torch weights, use "
            "--to-torch DIR --out FILE)")
    _check_out(args.out, args.overwrite, "model")
    sd, origin = _read_source(args.arch, args.weights)
    arch = args.arch or infer_arch(sd)
    model, variables = from_torch(sd, arch)
    print(f"read {origin}: {arch}, {model.num_classes} classes")
    new_head = args.num_classes is not None and args.num_classes != model.num_classes
    if new_head:
        old = model.num_classes
        model, variables = with_new_head(model, variables, args.num_classes)
        print(f"fc: replaced the {old}-class head with a freshly initialised "
              f"{args.num_classes}-class head; the backbone is kept")
    if args.verify:
        _verify(model, variables, sd, arch, new_head)
    out = _save_model(args.out, model, variables, arch, args.overwrite)
    print(f"wrote {out}")
    return 0


def _verify(model, variables, sd, arch: str, new_head: bool) -> None:
    from .port.hub import compare_with_torch, torchvision_model

    torch_model = torchvision_model(arch, sd, int(sd["fc.weight"].shape[0]))
    r = compare_with_torch(model, variables, torch_model, features_only=new_head)
    print(f"verify ({r['compared']}, random batch of {r['batch']} at 224x224): "
          f"relative error {r['relative_error']:.2e}, top-1 agrees on "
          f"{r['top1_agree']}/{r['batch']}")
    if r["relative_error"] > 1e-4:
        raise ResNetJaxError(f"verification failed: relative error {r['relative_error']:.2e} "
                             "exceeds 1e-4; nothing was written")


def _convert_to_torch(args) -> int:
    from .checkpoint import arch_of, load

    out = args.out
    if out.suffix not in TORCH_OUT_SUFFIXES:
        raise ResNetJaxError(f"--out {out}: expected a .pth, .pt or .safetensors file name")
    _check_out(out, args.overwrite, "torch")
    model, variables = load(args.to_torch)
    saved = arch_of(args.to_torch)
    if args.arch and saved and args.arch != saved:
        raise ResNetJaxError(f"--arch {args.arch} does not match the model saved at "
                             f"{args.to_torch}, which is a {saved}; leave --arch out")
    sd, data = _torch_bytes(variables, model, args.arch if not saved else None, out.suffix)
    _write_file(out, data, args.overwrite)
    print(f"wrote {out}: a state dict of {len(sd)} tensors for "
          f"{saved or args.arch or type(model).__name__} (load it with strict=True)")
    return 0


def _torch_bytes(variables, model, arch: str | None, suffix: str):
    """The state dict for ``model`` and the bytes of its ``suffix`` file; ``arch``, when
    given for a model saved without one, must describe the same layers."""
    import io

    import numpy as np

    from .port import to_torch, torch_shapes

    sd = to_torch(variables, model, as_numpy=True)
    if arch is not None:
        from .port import PortError

        try:
            named = to_torch(variables, arch, as_numpy=True)
        except PortError as e:
            raise ResNetJaxError(f"--arch {arch} does not describe the saved model: {e}") from None
        if {k: v.shape for k, v in named.items()} != torch_shapes(model):
            raise ResNetJaxError(f"--arch {arch} does not describe the saved model (its layers "
                                 "differ); leave --arch out")
    if suffix == ".safetensors":
        from safetensors.numpy import save

        return sd, save({k: np.array(v, order="C") for k, v in sd.items()})
    from .port.files import require_torch

    torch = require_torch("writing a .pth file")
    buffer = io.BytesIO()
    torch.save(to_torch(variables, model), buffer)
    return sd, buffer.getvalue()


# --------------------------------------------------------------------------- convert: output

def _is_model_dir(path: Path) -> bool:
    from .checkpoint import CONFIG_ITEM, VARIABLES_ITEM

    return (path / CONFIG_ITEM).is_dir() and (path / VARIABLES_ITEM).is_dir()


def _is_weights_file(path: Path) -> bool:
    """Whether ``path`` holds a state dict file of its suffix's kind (a previous output)."""
    import json
    import zipfile

    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                return 0 < size < 1 << 27 and isinstance(json.loads(f.read(size)), dict)
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def _count_files(path: Path, limit: int = 10_000) -> str:
    import itertools

    n = sum(1 for p in itertools.islice(path.rglob("*"), limit) if not p.is_dir())
    return f"{'over ' if n >= limit else ''}{n} file{'' if n == 1 else 's'}"


def _what_is(out: Path, kind: str) -> str | None:
    """None when --overwrite may replace ``out``, a previous output of ``kind`` ('model':
    a model directory, or an empty folder; 'torch': a state dict file); else what it is."""
    if out.is_symlink():
        return "a symbolic link"
    if out.is_dir():
        entries = list(out.iterdir())
        if kind == "model" and (_is_model_dir(out) or not entries):
            return None
        steps = [p for p in entries if p.name.isdigit() and _is_model_dir(p)]
        if steps:
            n = len(steps)
            return f"a training run's folder ({n} checkpoint step{'s' * (n != 1)}), not a saved model"
        what = "a saved model" if kind == "model" else "a weights file"
        return f"a folder of {_count_files(out)} that is not {what}"
    if out.is_file():
        if kind == "torch" and _is_weights_file(out):
            return None
        what = "a saved model" if kind == "model" else f"a {out.suffix} state dict"
        return f"a file of {out.stat().st_size} bytes that is not {what}"
    return "neither a file nor a folder"


def _check_out(out: Path, overwrite: bool, kind: str) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` is given and it is a previous output
    of ``kind``; never replace anything else (a folder of other files, a training run)."""
    if not (out.exists() or out.is_symlink()):
        return
    found = _what_is(out, kind)
    if found is None and not overwrite:
        raise ResNetJaxError(f"{out} already exists; pass --overwrite to replace it")
    if found is not None:
        replaced = ("a model directory written by resnet-jax" if kind == "model"
                    else "a .pth/.pt/.safetensors state dict")
        raise ResNetJaxError(f"{out} is {found}; refusing to replace it (--overwrite replaces "
                             f"only {replaced}); choose another --out")


def _make_parent(out: Path) -> None:
    """Create ``out``'s missing parent folders; a file in their place is an OSError naming it."""
    for p in (out.parent, *out.parent.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder is needed",
                                         str(p))
            break
    out.parent.mkdir(parents=True, exist_ok=True)


def _os_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as an OSError naming ``path`` where it is one (or orbax's wrapping of one)."""
    import os
    import re

    if isinstance(e, OSError):
        if e.filename is None and e.errno is not None:
            return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
        return e
    found = re.search(r"os_error_code='?(\d+)", str(e)) if isinstance(e, ValueError) else None
    if found and not isinstance(e, ResNetJaxError):
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    return e


def _save_model(out: Path, model, variables, arch: str, overwrite: bool) -> Path:
    """Save into ``out`` all or nothing. A new ``out`` is claimed first (an atomic mkdir),
    so of two converts to one new --out, one writes and the other is refused."""
    import os

    from .checkpoint import save

    _make_parent(out)
    claimed = False
    try:
        os.mkdir(out)
        claimed = True
    except FileExistsError:
        if not overwrite:
            raise ResNetJaxError(f"{out} was created by another process during this convert; "
                                 "pass --overwrite to replace it") from None
        _check_out(out, overwrite, "model")
    try:
        return save(out, model, variables, arch=arch, overwrite=True)
    except BaseException as e:
        if claimed:
            try:
                out.rmdir()  # only while still the empty claim
            except OSError:
                pass
        err = _os_error(e, out)
        if isinstance(err, OSError) and err.errno in _RACED and _is_model_dir(out):
            raise ResNetJaxError(f"another process replaced {out} during this convert; it "
                                 "holds that process's model, complete") from None
        if err is e:
            raise
        raise err from None


_RACED = (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST)


def _write_file(out: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``out`` through a uniquely named ``.partial`` file, removed on any
    failure. Without ``overwrite`` the file is linked into place, so an ``out`` another
    process wrote meanwhile is refused, never replaced."""
    import os
    import secrets

    _make_parent(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise ResNetJaxError(f"{out} was created by another process during this convert; "
                                 "pass --overwrite to replace it") from None
        except OSError as e:  # a file system without hard links
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(tmp, out)
    except OSError as e:
        if str(e.filename) == str(tmp):  # name what the user asked for, not the scratch file
            e = OSError(e.errno, e.strerror, str(out))
        raise _os_error(e, out) from None
    finally:
        try:
            if created:
                os.unlink(tmp)
        except FileNotFoundError:
            pass
