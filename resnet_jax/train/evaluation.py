"""Evaluation: one pass of the jitted eval step over a loader, and the ``evaluate``
command's report (accuracy per class, a confusion matrix) for a saved model."""

from __future__ import annotations

import dataclasses
import errno
import os
import warnings
from pathlib import Path

import jax
import numpy as np

from ..errors import ResNetJaxError
from ..files import write_atomically
from . import sharding as shd


@dataclasses.dataclass
class EvalResult:
    loss: float
    accuracy: float
    top5: float | None
    count: int
    predictions: np.ndarray
    labels: np.ndarray
    nonfinite: int = 0  # examples whose logits were not all finite (counted as wrong)

    def per_class(self, num_classes: int) -> np.ndarray:
        """Confusion matrix: rows true class, columns predicted class."""
        m = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(m, (self.labels, self.predictions), 1)
        return m


def evaluate(state, loader, eval_step, mesh) -> EvalResult:
    """One pass over ``loader`` (in order, padded) with the jitted ``eval_step``."""
    sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "correct5": 0.0, "nonfinite": 0.0}
    preds, labels = [], []
    has5 = False
    for batch in loader.epoch(0):
        out = eval_step(state, shd.shard_batch(batch, mesh))
        out = jax.device_get({k: v for k, v in out.items() if k != "prediction" or jax.process_count() == 1})
        for k in sums:
            if k in out:
                sums[k] += float(out[k])
        has5 = has5 or "correct5" in out
        if "prediction" in out:
            keep = batch["mask"] > 0
            preds.append(np.asarray(out["prediction"])[keep])
            labels.append(batch["label"][keep])
    n = max(sums["count"], 1.0)
    return EvalResult(
        sums["loss_sum"] / n, sums["correct"] / n, sums["correct5"] / n if has5 else None,
        int(sums["count"]),
        np.concatenate(preds) if preds else np.zeros(0, np.int64),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        int(sums["nonfinite"]),
    )


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
    from ..checkpoint import load_checkpoint
    from ..data import Loader
    from ..viz.curves import plot_confusion_matrix
    from ..xla_cpu import inference_jit
    from .state import TrainState
    from .step import make_eval_step

    if not batch_size >= 1:
        raise ResNetJaxError(f"--batch-size must be at least 1, got {batch_size}")
    path, model, variables, config = load_checkpoint(checkpoint)
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ResNetJaxError(f"{path} does not record its data set; pass --dataset")
    png = _png_path(output, path.parent if path.name.isdigit() else path, dataset, split)
    data, pre = _split_for(path, config, dataset, split, strict, unknown_classes)
    num_classes = data.num_classes
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
    png = write_atomically(png, lambda tmp: plot_confusion_matrix(
        matrix, [str(n) for n in names], tmp, title=f"{dataset} {split}: accuracy {result.accuracy:.2%}"))
    return {"accuracy": result.accuracy, "matrix": matrix,
            "report": _report(path, dataset, split, result, matrix, names),
            "confusion_png": str(png), "count": result.count, "class_names": list(names)}


def _split_for(path: Path, config: dict, dataset: str, split: str, strict: bool,
               unknown_classes: str):
    """The ``split`` of ``dataset`` that the model in ``path`` can read, and its preprocessing
    (the model's own, saved with it, where known)."""
    from ..data import Preprocess, load_splits

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
    return data, pre


def _report(path, dataset: str, split: str, result: EvalResult, matrix, names) -> str:
    """The accuracy, then one line per class: its accuracy and hits over its examples."""
    lines = [f"{path} on {dataset} ({split}, {result.count} images): "
             f"accuracy {result.accuracy:.2%}" + (f", top-5 {result.top5:.2%}" if result.top5 is not None else "")]
    width = max(len(str(n)) for n in names)
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        acc = matrix[i, i] / total if total else float("nan")
        lines.append(f"  {str(name):>{width}}  {acc:7.2%}  ({matrix[i, i]}/{total})")
    return "\n".join(lines)
