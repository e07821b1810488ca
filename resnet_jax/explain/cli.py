"""The ``gradcam`` and ``visualize`` subcommands.

    resnet-jax gradcam --weights DIR cat.jpg dog.jpg [--target 281 --target 207]
                       [--layer layer4] [--method gradcam++] --out maps/ [--save-maps]
    resnet-jax visualize --weights DIR --layer conv2 --units 0-15 --out filters.png
    resnet-jax visualize --weights DIR --class 0-9 --l1 0.2 --out classes.png
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResNetJaxError

METHOD_CHOICES = (
    "gradcam", "gradcam++", "hirescam", "saliency", "smoothgrad", "integrated_gradients",
    "guided_backprop", "guided_gradcam",
)


def register(sub) -> None:
    p = sub.add_parser(
        "gradcam", help="Grad-CAM family / saliency maps of images, as PNG overlays",
        description="Write a heat-map overlay (class name and score above it) for each "
                    "image and target class.",
    )
    p.add_argument("--weights", required=True, type=Path, help="a saved model directory")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class to explain (repeat for several per image); default: predicted")
    p.add_argument("--layer", default=None,
                   help="named output for CAM methods (default: the last stage, e.g. layer4)")
    p.add_argument("--method", default="gradcam", choices=METHOD_CHOICES)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--save-maps", action="store_true", help="also write the raw maps as .npy")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity (0-1)")
    p.add_argument("--colormap", default="jet", help="a matplotlib colour map")
    p.set_defaults(func=run_gradcam)

    p = sub.add_parser(
        "visualize", help="activation maximisation: images that excite units or classes",
        description="Optimise one input per unit (all in one compiled batch) and write them "
                    "as a labelled grid.",
    )
    p.add_argument("--weights", required=True, type=Path, help="a saved model directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--units", help="channels / neurons of --layer: '0-15', '3', '0,4,9'")
    what.add_argument("--class", dest="classes", metavar="K",
                      help="class logits to maximise: '3', '0-9', '1,7'")
    p.add_argument("--layer", default=None, help="named output whose --units to maximise")
    p.add_argument("--neuron", action="store_true",
                   help="maximise the centre position of each channel instead of its sum")
    p.add_argument("--l1", type=float, default=0.0, metavar="LAMBDA",
                   help="L1 penalty on the input (forces 'no ink' pixels)")
    p.add_argument("--l2", type=float, default=0.0, metavar="LAMBDA")
    p.add_argument("--tv", type=float, default=0.0, metavar="LAMBDA",
                   help="total-variation penalty")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--param", choices=["fourier", "pixel", "box"], default=None,
                   help="image parameterisation (default: fourier for RGB, box for grayscale)")
    p.add_argument("--transforms", choices=["auto", "standard", "none"], default="auto")
    p.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=0, metavar="K",
                   help="run K unrolled steps per compiled call (faster on CPU, longer "
                        "compilation); 0: all steps in one lax.scan")
    p.add_argument("--out", required=True, type=Path, help="PNG file for the grid")
    p.set_defaults(func=run_visualize)


def parse_indices(text: str, what: str) -> list[int]:
    """'0-15', '3', '0,4,9', '0-3,8' -> a list of ints."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ResNetJaxError(
            f"cannot read {what} {text!r}: use an index (3), a range (0-15) or a list (0,4,9)"
        ) from None
    if not out:
        raise ResNetJaxError(f"no {what} given")
    return out


def class_names_for(model, weights) -> list[str] | None:
    from .. import imagenet
    from ..checkpoint import load_config

    try:
        names = load_config(weights).get("class_names")
    except ResNetJaxError:
        names = None
    if names is None and getattr(model, "num_classes", None) == 1000:
        names = list(imagenet.class_names())
    return names


def is_imagenet_model(model) -> bool:
    from ..models import ResNet

    return isinstance(model, ResNet) and model.in_channels == 3 and model.stem == "imagenet"


def load_inputs(model, paths):
    """(model inputs NHWC, display images in [0, 1]) for image files.

    ImageNet ResNets get torchvision's preprocessing (resize 256, centre crop 224,
    normalise); other models get the image converted to their channels, resized to their
    input size and scaled to [0, 1].
    """
    import numpy as np

    from .. import imagenet
    from ..models import input_shape

    if is_imagenet_model(model):
        x = np.stack([imagenet.preprocess(imagenet.load_image(p)) for p in paths])
        return x, imagenet.denormalize(x)
    n, h, w, c = input_shape(model)
    mode = "L" if c == 1 else "RGB"
    imgs = []
    for p in paths:
        img = imagenet.load_image(p, mode).resize((w, h))
        a = np.asarray(img, np.float32) / 255.0
        imgs.append(a[..., None] if a.ndim == 2 else a)
    x = np.stack(imgs)
    return x, x


def run_gradcam(args) -> int:
    import numpy as np

    from ..checkpoint import load
    from ..viz.overlays import save_overlay
    from .api import explain

    model, variables = load(args.weights)
    x, shown = load_inputs(model, args.images)
    targets = None
    if args.target:
        targets = [list(args.target)] * len(x)
    result = explain(model, variables, x, targets, layer=args.layer, method=args.method)
    maps = result.maps if result.maps.ndim == 4 else result.maps[:, None]
    tgts = result.targets if result.targets.ndim == 2 else result.targets[:, None]
    scores = result.scores if result.scores.ndim == 2 else result.scores[:, None]
    names = class_names_for(model, args.weights)
    args.out.mkdir(parents=True, exist_ok=True)
    where = f" at {result.layer}" if result.layer else ""
    for i, path in enumerate(args.images):
        stem = Path(path).stem
        for j in range(maps.shape[1]):
            k = int(tgts[i, j])
            name = names[k] if names is not None else f"class {k}"
            label = f"{name} ({k}): {scores[i, j]:.3f}\n{result.method}{where}"
            out = args.out / f"{stem}_{result.method}_{k}.png"
            save_overlay(out, shown[i], maps[i, j], label, alpha=args.alpha,
                         colormap=args.colormap)
            print(f"{path}: {name} ({k}) p={scores[i, j]:.3f} -> {out}")
        if args.save_maps:
            np.save(args.out / f"{stem}_{result.method}.npy", result.maps[i])
    return 0


def run_visualize(args) -> int:
    import numpy as np

    from ..checkpoint import load
    from ..models import input_shape
    from ..viz.overlays import save_grid
    from . import objectives as O
    from .base import layer_shapes
    from .maximize import check_objective, evaluate, maximize

    model, variables = load(args.weights)
    size = args.size
    shape = input_shape(model, size)
    shapes = layer_shapes(model, variables, shape)
    if args.classes is not None:
        units = parse_indices(args.classes, "classes")
        n = model.num_classes
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            raise ResNetJaxError(
                f"class index {bad[0]} is out of range: the model has {n} classes "
                f"(valid indices 0..{n - 1})"
            )
        target = O.class_logit(units)
        names = class_names_for(model, args.weights)
        labels = [f"{u}: {names[u]}" if names else f"class {u}" for u in units]
        what = "class logits"
    else:
        if args.layer is None:
            raise ResNetJaxError(
                f"--units needs --layer; valid layer names: {', '.join(shapes)}"
            )
        if args.layer not in shapes:
            raise ResNetJaxError(
                f"unknown layer {args.layer!r}; valid layer names: {', '.join(shapes)}"
            )
        units = parse_indices(args.units, "units")
        spatial = len(shapes[args.layer]) == 4
        if spatial and not args.neuron:
            target, kind = O.channel(args.layer, units), "channel"
        else:
            target, kind = O.neuron(args.layer, units), "neuron"
        labels = [f"{kind} {u}" for u in units]
        what = f"{args.layer} {kind}s"
    objective = target
    penalties = []
    for lam, fn, name in ((args.l1, O.l1, "L1"), (args.l2, O.l2, "L2"), (args.tv, O.tv, "TV")):
        if lam:
            objective = objective - lam * fn()
            penalties.append(f"{name} {lam:g}")
    check_objective(model, variables, objective, size)
    images = maximize(model, variables, objective, steps=args.steps, seed=args.seed, lr=args.lr,
                      param=args.param, transforms=args.transforms, image_size=size,
                      chunk=args.chunk or None)
    values = evaluate(model, variables, target, images)
    labels = [f"{lab}\n{v:.3g}" for lab, v in zip(labels, values)]
    title = f"{what} maximised ({args.steps} steps" + (
        f", {', '.join(penalties)})" if penalties else ")")
    save_grid(args.out, images, labels, title=title)
    ink = float(np.mean(images > 0.05))
    print(f"wrote {len(images)} images to {args.out} (mean value {np.mean(values):.3g}, "
          f"ink {ink:.1%})")
    return 0


__all__ = ["parse_indices", "register", "run_gradcam", "run_visualize"]
