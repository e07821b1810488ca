"""Evaluate a saved model on a data set: accuracy per class and a confusion matrix."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

from ..errors import ResNetJaxError
from ..files import write_atomically


def _png_path(output, run_root: Path, dataset: str, split: str) -> Path:
    """Where the confusion matrix goes: ``output`` (a file, or a folder to write into) or
    beside the run. A missing folder is an ``OSError`` naming it, not created."""
    name = f"confusion_{Path(dataset.split(':')[-1]).name}_{split}.png"
    if output is None:
        return run_root / name
    output = Path(output)
    if output.is_dir():
        return output / name
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(errno.ENOENT, "no such directory to write into", str(parent))
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
    return output


def evaluate_checkpoint(checkpoint, dataset: str | None = None, split: str = "test",
                        batch_size: int = 128, output=None, strict: bool = False,
                        unknown_classes: str = "error") -> dict:
    """Evaluate ``checkpoint`` (run dir, step dir or model dir) on ``split`` of ``dataset``.

    Returns the accuracy, the confusion matrix, a printable per-class report and the
    path of the confusion-matrix PNG. A run's damaged newest step is skipped with a
    warning; examples whose logits are not finite count as wrong, with a warning.
    """
    import dataclasses

    if not batch_size >= 1:
        raise ResNetJaxError(f"--batch-size must be at least 1, got {batch_size}")

    from ..checkpoint import load_checkpoint
    from ..data import Loader, Preprocess, load_splits
    from ..viz.curves import plot_confusion_matrix
    from ..xla_cpu import inference_jit
    from . import sharding as shd
    from .loop import evaluate
    from .state import TrainState
    from .step import make_eval_step

    path, model, variables, config = load_checkpoint(checkpoint)
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ResNetJaxError(f"{path} does not record its data set; pass --dataset")
    png = _png_path(output, path.parent if path.name.isdigit() else path, dataset, split)
    sets = load_splits(dataset, channels=config.get("in_channels"), strict=strict,
                       unknown_classes=unknown_classes)
    if split not in sets:
        raise ResNetJaxError(f"data set {dataset!r} has no {split!r} split; it has {sorted(sets)}")
    data = sets[split]
    num_classes = int(config.get("num_classes", data.num_classes))
    if num_classes != data.num_classes:
        raise ResNetJaxError(
            f"the model in {path} predicts {num_classes} classes, data set {dataset!r} has "
            f"{data.num_classes}; evaluate it on the data set it was trained for"
        )
    if config.get("in_channels", data.channels) != data.channels:
        raise ResNetJaxError(
            f"the model in {path} takes {config['in_channels']}-channel images, "
            f"{dataset!r} has {data.channels}-channel ones"
        )
    pre = Preprocess.from_json(config["preprocess"]) if "preprocess" in config else data.preprocess
    if len(pre.mean) != data.channels:
        pre = dataclasses.replace(pre, mean=data.preprocess.mean, std=data.preprocess.std)
    mesh = shd.make_mesh()
    batch_size = max(mesh.devices.size, batch_size // mesh.devices.size * mesh.devices.size)
    loader = Loader(data, batch_size, train=False, preprocess=pre)
    state = TrainState(step=0, params=variables["params"],
                       batch_stats=variables.get("batch_stats", {}), opt_state=None,
                       apply_fn=model.apply, tx=None)
    state = shd.replicate(state, mesh)
    eval_step = inference_jit(make_eval_step(pre.mean, pre.std, num_classes))
    result = evaluate(state, loader, eval_step, mesh)
    if result.nonfinite:
        warnings.warn(f"{result.nonfinite} of {result.count} outputs of {path} were not finite "
                      "(NaN or infinite logits); they count as wrong", stacklevel=2)
    matrix = result.per_class(num_classes)
    names = config.get("class_names") or data.class_names
    lines = [f"{path} on {dataset} ({split}, {result.count} images): "
             f"accuracy {result.accuracy:.2%}" + (f", top-5 {result.top5:.2%}" if result.top5 is not None else "")]
    width = max(len(str(n)) for n in names)
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        acc = matrix[i, i] / total if total else float("nan")
        lines.append(f"  {str(name):>{width}}  {acc:7.2%}  ({matrix[i, i]}/{total})")
    png = write_atomically(png, lambda tmp: plot_confusion_matrix(
        matrix, [str(n) for n in names], tmp, title=f"{dataset} {split}: accuracy {result.accuracy:.2%}"))
    return {"accuracy": result.accuracy, "matrix": matrix, "report": "\n".join(lines),
            "confusion_png": str(png), "count": result.count, "class_names": list(names)}
