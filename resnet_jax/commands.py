"""The foundation's subcommands: ``summary``, ``predict`` and ``convert``."""

from __future__ import annotations

import argparse
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

def run_summary(args) -> int:
    from .models import create_model
    from .summary import format_summary, summarize

    options = {k: v for k, v in (("stem", args.stem), ("in_channels", args.in_channels))
               if v is not None}
    model = create_model(args.arch, num_classes=args.num_classes, **options)
    rows, totals = summarize(model, args.input_size)
    print(format_summary(args.arch, rows, totals))
    return 0


# --------------------------------------------------------------------------- predict

def run_predict(args) -> int:
    """Top-k classes of image files, prepared exactly as the model's evaluation prepares
    its test images (the preprocessing stored with it; torchvision's for ImageNet models)."""
    import jax
    import numpy as np

    from .explain.inputs import load_model
    from .models.layers import inference_jit

    if args.top <= 0:
        raise ResNetJaxError(f"--top {args.top}: give a positive number of classes to show")
    m = load_model(args.weights)
    batch = m.preprocess(list(args.images))
    logits = inference_jit(lambda v, x: m.model.apply(v, x, train=False))(m.variables, batch)
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
    if args.to_torch:
        return _convert_to_torch(args)
    return _convert_from_torch(args)


def _read_source(arch: str | None, src: str):
    from .port import load_state_dict

    path = Path(src)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors") or path.exists():
        return load_state_dict(path), str(path)
    if arch is None:
        raise ResNetJaxError(f"{src!r} is not a file; to use torchvision's weights by name, "
                             "also give --arch (e.g. --arch resnet18 --weights IMAGENET1K_V1)")
    from .port.hub import torchvision_state_dict

    return torchvision_state_dict(arch, src), f"torchvision {arch} {src}"


def _convert_from_torch(args) -> int:
    from .checkpoint import save
    from .models import with_new_head
    from .port import from_torch, infer_arch

    if args.out.exists() and not args.overwrite:
        raise ResNetJaxError(f"{args.out} already exists; pass --overwrite to replace it")
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
        from .port.hub import compare_with_torch, torchvision_model

        torch_model = torchvision_model(arch, sd, int(sd["fc.weight"].shape[0]))
        r = compare_with_torch(model, variables, torch_model, features_only=new_head)
        print(f"verify ({r['compared']}, random batch of {r['batch']} at 224x224): "
              f"relative error {r['relative_error']:.2e}, top-1 agrees on "
              f"{r['top1_agree']}/{r['batch']}")
        if r["relative_error"] > 1e-4:
            raise ResNetJaxError(f"verification failed: relative error {r['relative_error']:.2e} "
                                 "exceeds 1e-4; nothing was written")
    out = save(args.out, model, variables, arch=arch, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _convert_to_torch(args) -> int:
    import numpy as np

    from .checkpoint import arch_of, load
    from .port import to_torch

    model, variables = load(args.to_torch)
    arch = args.arch or arch_of(args.to_torch)
    out = args.out
    if out.exists() and not args.overwrite:
        raise ResNetJaxError(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix not in (".pth", ".pt", ".safetensors"):
        raise ResNetJaxError(f"--out {out}: expected a .pth, .pt or .safetensors file name")
    tmp = out.with_name(f".{out.name}.partial")
    if out.suffix == ".safetensors":
        from safetensors.numpy import save_file

        sd = to_torch(variables, model, as_numpy=True)
        save_file({k: np.array(v, order="C") for k, v in sd.items()}, str(tmp))
    else:
        from .port.files import require_torch

        torch = require_torch("writing a .pth file")
        sd = to_torch(variables, model)
        torch.save(sd, tmp)
    tmp.replace(out)
    print(f"wrote {out}: a state dict of {len(sd)} tensors for "
          f"{arch or type(model).__name__} (load it with strict=True)")
    return 0
