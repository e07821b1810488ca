"""The ``gradcam`` and ``visualize`` subcommands.

    resnet-jax gradcam --weights DIR cat.jpg dog.jpg [--target 281 --target 207]
                       [--layer layer4] [--method gradcam++] --out maps/ [--save-maps]
    resnet-jax visualize --weights DIR --layer conv2 --units 0-15 --out filters.png
    resnet-jax visualize --weights DIR --class 0-9 --l1 0.2 --out classes.png
    resnet-jax visualize --weights DIR --layer conv2 --units 0-3 --examples 6 --data digits \
                         [--snapshots 0,16,64] --out conv2.png
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResNetJaxError
from .methods import METHODS

# --score: the Target class (explain.targets) for each choice.
SCORES = {"logit": "ClassifierOutputTarget", "softmax": "ClassifierOutputSoftmaxTarget",
          "rest": "ClassifierOutputReST"}


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
    p.add_argument("--layer", action="append", default=None, metavar="NAME",
                   help="named output for CAM methods (default: the last stage, e.g. layer4); "
                        "repeat for several layers at once (their maps are combined)")
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument("--score", choices=list(SCORES), default="logit",
                   help="what is explained for each class: its logit (default), its softmax "
                        "probability, or its logit minus its cross-entropy (rest)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="CAM methods: the first principal component of the weighted "
                        "activations instead of their sum (less noise)")
    p.add_argument("--aug-smooth", action="store_true",
                   help="CAM methods: average the maps of flipped and rescaled copies "
                        "(test-time augmentation, 6x the work)")
    p.add_argument("--compare", metavar="METHODS", default=None,
                   help="'all' or a comma list of methods: one picture per image and target "
                        "with one row per method (instead of --method)")
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
    p.add_argument("--log-prob", action="store_true",
                   help="with --class: maximise log p(class) (softmax) instead of the logit y^i, "
                        "so the image is one the model confidently assigns to the class")
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
    p.add_argument("--size", type=int, default=None,
                   help="image side (default: the size stored with the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=0, metavar="K",
                   help="run K unrolled steps per compiled call (faster on CPU, longer "
                        "compilation); 0: all steps in one lax.scan")
    p.add_argument("--examples", type=int, default=0, metavar="K",
                   help="also find the K images of --data that excite each unit most and "
                        "draw them (with their receptive fields) beside its optimised image")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="with --examples: a data set as train.py's --dataset (digits, a "
                        "folder, a pack)")
    p.add_argument("--split", default=None,
                   help="with --examples: the split to search (default: val, else test)")
    p.add_argument("--snapshots", default=None, metavar="STEPS",
                   help="also write the images after these steps ('0,16,64') as a strip, "
                        "OUT_steps.png")
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
    from .inputs import load_model

    return load_model(weights, say=lambda line: None).class_names


def is_imagenet_model(model) -> bool:
    from .inputs import is_imagenet_model as check

    return check(model)


def load_inputs(model, paths, preprocess=None):
    """(model inputs NHWC, display images in [0, 1]) for image files, prepared with
    ``preprocess`` (default: what ``preprocessing_for`` finds for the bare model)."""
    from .inputs import preprocessing_for

    pre = preprocess or preprocessing_for(model)
    shown = pre.pixels(paths)
    return pre.normalize(shown), shown


def class_label(names, k: int) -> str:
    """"tabby (281)", or "class 3" when the name is the index itself or unknown."""
    if not names or str(names[k]) == str(k):
        return f"class {k}"
    return f"{names[k]} ({k})"


def check_gradcam_args(args) -> None:
    """Refuse option values that make no sense, naming the valid range."""
    import math

    from ..viz.overlays import get_colormap

    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise ResNetJaxError(f"--alpha {args.alpha} is outside [0, 1] (0: only the image, "
                             "1: only the heat map)")
    try:
        get_colormap(args.colormap)
    except ValueError as e:
        raise ResNetJaxError(f"--colormap: {e}") from None
    for t in args.target or []:
        if t < 0:
            raise ResNetJaxError(f"--target {t} is negative; give a class index from 0 (leave "
                                 "--target out to explain the predicted class)")


def output_names(paths, method: str) -> list[str]:
    """A distinct file-name stem per input: its own stem, prefixed with its folders'
    names where two inputs share one (a/cat.jpg, b/cat.jpg -> a_cat, b_cat)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    depth = 1
    while len(set(stems)) < len(stems) and depth < 8:
        stems = ["_".join([*p.parent.parts[-depth:], p.stem]).replace("/", "") or p.stem
                 for p in paths]
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return [f"{s}_{method}" for s in out]


def check_output_dir(path: Path) -> None:
    """Fail before any work when ``path`` cannot become the output folder."""
    import errno

    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder; --out takes a "
                                 "folder for the pictures", str(path))
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"its parent folder {what}", str(path))


def output_dir(path: Path) -> Path:
    """``path`` as a folder for outputs: created if missing (its parent must exist)."""
    check_output_dir(path)
    path.mkdir(exist_ok=True)
    return path


def save_npy(path: Path, array) -> Path:
    """``np.save`` through a temporary sibling and a rename (no partial file on failure)."""
    import numpy as np

    from ..files import write_atomically

    return write_atomically(path, lambda tmp: np.save(tmp, array))


def compare_methods(text: str | None) -> list[str]:
    """``--compare``: 'all' or a comma list of method names -> registered names."""
    from .methods import get_method

    if text is None:
        return []
    if text.strip().lower() == "all":
        return list(METHODS)
    names = [get_method(t.strip()).name for t in text.split(",") if t.strip()]
    if not names:
        raise ResNetJaxError("--compare: give 'all' or a comma list of methods, e.g. "
                             "gradcam,scorecam")
    return list(dict.fromkeys(names))


def run_gradcam(args) -> int:
    from ..viz.overlays import save_overlay
    from .api import explain
    from .inputs import load_model

    check_gradcam_args(args)
    compare = compare_methods(args.compare)
    check_output_dir(args.out)
    m = load_model(args.weights)
    targets = None
    if args.target:
        n = int(m.model.num_classes)
        bad = [t for t in args.target if t >= n]
        if bad:
            raise ResNetJaxError(f"--target {bad[0]} is out of range: the model has {n} classes "
                                 f"(valid indices 0..{n - 1})")
        targets = [list(args.target)] * len(args.images)
    targets = scored_targets(args.score, targets, len(args.images))
    if compare:
        return write_comparisons(args, m, targets, compare)
    result = explain(m.model, m.variables, list(args.images), targets, layer=layer_option(args),
                     method=args.method, preprocess=m.preprocess, **cam_options(args, args.method))
    maps = result.maps if result.maps.ndim == 4 else result.maps[:, None]
    tgts = result.targets if result.targets.ndim == 2 else result.targets[:, None]
    scores = result.scores if result.scores.ndim == 2 else result.scores[:, None]
    names = m.class_names
    out_dir = output_dir(args.out)
    where = f" at {layer_label(result.layer)}" if result.layer else ""
    written = []
    for i, (path, stem) in enumerate(zip(args.images, output_names(args.images, result.method))):
        for j in range(maps.shape[1]):
            k = int(tgts[i, j])
            name = names[k] if names is not None else f"class {k}"
            label = f"{class_label(names, k)}: p={scores[i, j]:.3f}\n{result.method}{where} - {path}"
            out = out_dir / f"{stem}_{k}.png"
            save_overlay(out, result.images[i], maps[i, j], label, alpha=args.alpha,
                         colormap=args.colormap)
            written.append(out)
            print(f"{path}: {name} ({k}) p={scores[i, j]:.3f} -> {out}")
        if args.save_maps:
            written.append(save_npy(out_dir / f"{stem}.npy", result.maps[i]))
            print(f"{path}: maps -> {written[-1]}")
    print(f"wrote {len(written)} file(s) to {out_dir}")
    return 0


def scored_targets(score: str, targets, n_images: int):
    """The --target classes (``None``: the predicted class) as ``score`` targets."""
    if score == "logit":
        return targets
    from . import targets as T

    kind = getattr(T, SCORES[score])
    rows = targets or [[None]] * n_images
    return [[kind(c) for c in row] for row in rows]


def layer_label(layer) -> str:
    return layer if isinstance(layer, str) else " + ".join(layer)


def layer_option(args):
    """``--layer`` given once: that name; several times: the names; never: None."""
    if not args.layer:
        return None
    return args.layer[0] if len(args.layer) == 1 else list(args.layer)


def cam_options(args, method: str) -> dict:
    """--eigen-smooth / --aug-smooth for a CAM method (refused for the others)."""
    from .methods import get_method

    wanted = {k: True for k in ("eigen_smooth", "aug_smooth") if getattr(args, k)}
    if not wanted:
        return {}
    if not get_method(method).uses_layer:
        if args.compare:
            return {}  # a comparison applies them to the CAM methods only
        flags = ", ".join("--" + k.replace("_", "-") for k in wanted)
        raise ResNetJaxError(f"{flags}: only for CAM methods; {method} works on the input's "
                             "gradients (choose e.g. --method gradcam)")
    return wanted


def write_comparisons(args, m, targets, methods: list[str]) -> int:
    """``--compare``: every method on the same images and targets, one picture per image
    and target, one row per method."""
    from ..viz.overlays import save_comparison
    from .api import explain

    results = []
    for name in methods:
        print(f"{name} ...", flush=True)
        results.append(explain(m.model, m.variables, list(args.images), targets,
                               layer=layer_option(args), method=name, preprocess=m.preprocess,
                               **cam_options(args, name)))
    first = results[0]
    tgts = first.targets if first.targets.ndim == 2 else first.targets[:, None]
    scores = first.scores if first.scores.ndim == 2 else first.scores[:, None]
    out_dir = output_dir(args.out)
    written = []
    for i, (path, stem) in enumerate(zip(args.images, output_names(args.images, "compare"))):
        for j in range(tgts.shape[1]):
            k = int(tgts[i, j])
            cams = [r.maps[i, j] if r.maps.ndim == 4 else r.maps[i] for r in results]
            rows = [f"{r.method}" + (f" at {layer_label(r.layer)}" if r.layer else "")
                    for r in results]
            title = f"{class_label(m.class_names, k)}: p={scores[i, j]:.3f} - {path}"
            out = out_dir / f"{stem}_{k}.png"
            save_comparison(out, first.images[i], cams, rows, title=title, alpha=args.alpha,
                            colormap=args.colormap)
            written.append(out)
            print(f"{path}: {len(methods)} methods for class {k} -> {out}")
    print(f"wrote {len(written)} file(s) to {out_dir}")
    return 0


def check_visualize_args(args) -> None:
    import math

    if args.steps <= 0:
        raise ResNetJaxError(f"--steps {args.steps}: give a positive number of optimisation "
                             "steps (e.g. 256)")
    if args.size is not None and args.size <= 0:
        raise ResNetJaxError(f"--size {args.size}: give a positive image side in pixels, or "
                             "leave it out for the model's own size")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ResNetJaxError(f"--lr {args.lr}: the learning rate must be a finite number "
                             "above 0 (e.g. 0.05)")
    for name in ("l1", "l2", "tv"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ResNetJaxError(f"--{name} {v}: a penalty weight must be a finite number "
                                 ">= 0 (0 turns it off)")
    if args.chunk < 0:
        raise ResNetJaxError(f"--chunk {args.chunk}: give 0 (one compiled loop) or a positive "
                             "number of steps per call")
    examples = getattr(args, "examples", 0)
    if examples < 0:
        raise ResNetJaxError(f"--examples {examples}: give a positive number of real images "
                             "per unit (0: none)")
    if examples and not getattr(args, "data", None):
        raise ResNetJaxError("--examples needs --data, the data set to search (e.g. --data "
                             "digits or a folder of images)")


def visualize_target(args, model, shapes, names):
    """(objective, labels, what, spatial units) for --class or --units of --layer."""
    from . import objectives as O

    if args.classes is not None:
        units = parse_indices(args.classes, "classes")
        n = model.num_classes
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            raise ResNetJaxError(
                f"class index {bad[0]} is out of range: the model has {n} classes "
                f"(valid indices 0..{n - 1})"
            )
        labels = [class_label(names, u) for u in units]
        if args.log_prob:
            return O.class_log_prob(units), labels, "class log-probabilities", False
        return O.class_logit(units), labels, "class logits", False
    if args.layer is None:
        raise ResNetJaxError(f"--units needs --layer; valid layer names: {', '.join(shapes)}")
    if args.layer not in shapes:
        raise ResNetJaxError(f"unknown layer {args.layer!r}; valid layer names: "
                             f"{', '.join(shapes)}")
    units = parse_indices(args.units, "units")
    spatial = len(shapes[args.layer]) == 4
    if spatial and not args.neuron:
        target, kind = O.channel(args.layer, units), "channel"
    else:
        target, kind = O.neuron(args.layer, units), "neuron"
    return target, [f"{kind} {u}" for u in units], f"{args.layer} {kind}s", True


def run_visualize(args) -> int:
    import numpy as np

    from ..files import check_output_file
    from ..viz.overlays import save_grid
    from . import objectives as O
    from .inputs import load_model
    from .maximize import _image_hw, check_objective, dead_units, evaluate, maximize
    from .taps import layer_shapes

    check_visualize_args(args)
    check_output_file(args.out)
    m = load_model(args.weights)
    model, variables, pre = m.model, m.variables, m.preprocess
    hw = _image_hw(model, args.size, pre)
    shapes = layer_shapes(model, variables, (1, *hw, int(model.in_channels)))
    target, labels, what, units = visualize_target(args, model, shapes, m.class_names)
    objective = target
    penalties = []
    for lam, fn, name in ((args.l1, O.l1, "L1"), (args.l2, O.l2, "L2"), (args.tv, O.tv, "TV")):
        if lam:
            objective = objective - lam * fn()
            penalties.append(f"{name} {lam:g}")
    check_objective(model, variables, objective, hw, pre)
    steps_kept = (parse_indices(args.snapshots, "snapshot steps")
                  if getattr(args, "snapshots", None) else None)
    images = maximize(model, variables, objective, steps=args.steps, seed=args.seed, lr=args.lr,
                      param=args.param, transforms=args.transforms, image_size=hw,
                      chunk=args.chunk or None, preprocess=pre, snapshots=steps_kept)
    if steps_kept:
        images, snaps = images
        write_snapshots(args, snaps, steps_kept, what)
    values = evaluate(model, variables, target, images, preprocess=pre)
    dead = (dead_units(model, variables, target, images, preprocess=pre) if units
            else np.zeros(len(images), bool))
    labels = [f"{lab}\n{'dead: never activates' if d else f'{v:.3g}'}"
              for lab, v, d in zip(labels, values, dead)]
    title = f"{what} maximised ({args.steps} steps" + (
        f", {', '.join(penalties)})" if penalties else ")")
    if getattr(args, "examples", 0):
        write_examples(args, m, shapes, images, values, title, dead)
    else:
        save_grid(args.out, [None if d else im for im, d in zip(images, dead)], labels,
                  title=title)
    alive = images[~dead]
    ink = float(np.mean(alive > 0.05)) if len(alive) else 0.0
    extra = f", {int(dead.sum())} dead unit(s) marked" if dead.any() else ""
    print(f"wrote {len(images)} images to {args.out} (mean value {np.mean(values):.3g}, "
          f"ink {ink:.1%}{extra})")
    return 0


def write_snapshots(args, snaps, steps, what: str) -> None:
    """The images after ``steps`` as a strip next to --out (OUT_steps.png)."""
    from .maximize import save_snapshot_strip

    path = args.out.with_name(f"{args.out.stem}_steps.png")
    save_snapshot_strip(path, snaps, steps, title=f"{what}: the images during optimisation")
    print(f"wrote the images at steps {', '.join(map(str, steps))} to {path}")


def example_units(args, shapes):
    """The ``explain.examples`` units behind --class or --units of --layer (with
    --neuron: the centre position, as ``objectives.neuron`` picks it)."""
    from . import examples as E

    if args.classes is not None:
        return [E.class_unit(int(u)) for u in parse_indices(args.classes, "classes")]
    units = parse_indices(args.units, "units")
    shape = shapes[args.layer]
    if args.neuron and len(shape) == 4:
        return [E.neuron_unit(args.layer, u, shape[1] // 2, shape[2] // 2) for u in units]
    return [E.channel_unit(args.layer, u) for u in units]


def example_data(args, m):
    """The --split of --data, read at the model's size and normalisation."""
    from ..data import Loader, Preprocess, load_splits

    sets = load_splits(args.data, channels=int(m.model.in_channels))
    split = args.split or ("val" if "val" in sets else "test")
    if split not in sets:
        raise ResNetJaxError(f"--split {split!r}: the data set {args.data!r} has the splits "
                             f"{', '.join(sets)}")
    p = m.preprocess
    pre = Preprocess(image_size=int(p.image_size), crop_pct=float(p.crop_pct), hflip=False,
                     mean=tuple(p.mean), std=tuple(p.std))
    return Loader(sets[split], 64, train=False, preprocess=pre, workers=2), split


def write_examples(args, m, shapes, images, values, title: str, dead) -> None:
    """--out: each unit's optimised image beside its top --examples real images of
    --data, with their receptive-field crops, one block per unit."""
    import numpy as np

    from ..viz.overlays import _stack, caption_strip, write_png
    from .examples import examples_figure, top_examples

    loader, split = example_data(args, m)
    blocks = []
    for unit, image, value, off in zip(example_units(args, shapes), images, values, dead):
        ex = top_examples(m.model, m.variables, loader, unit, k=args.examples)
        blocks.append(examples_figure(image, ex, title=str(unit), value=float(value),
                                      class_names=m.class_names, dead=bool(off)))
        print(f"{unit}: top {len(ex)} of {args.data} ({split}): images "
              f"{', '.join(map(str, ex.indices))}")
    sep = [np.full((10, max(b.shape[1] for b in blocks), 3), 255, np.uint8)]
    rows = [caption_strip(title + f"; top {args.examples} images of {args.data} ({split})",
                          max(b.shape[1] for b in blocks))]
    for b in blocks:
        rows += [b] + sep
    write_png(args.out, _stack(rows))
    print(f"wrote {len(blocks)} unit(s) with their top examples to {args.out}")


__all__ = ["parse_indices", "register", "run_gradcam", "run_visualize"]
