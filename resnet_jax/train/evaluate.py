"""Evaluate a saved model on a data set: accuracy per class and a confusion matrix."""

from __future__ import annotations

from pathlib import Path

from ..errors import ResNetJaxError


def evaluate_checkpoint(checkpoint, dataset: str | None = None, split: str = "test",
                        batch_size: int = 128, output=None, strict: bool = False) -> dict:
    """Evaluate ``checkpoint`` (run dir, step dir or model dir) on ``split`` of ``dataset``.

    Returns the accuracy, the confusion matrix, a printable per-class report and the
    path of the confusion-matrix PNG.
    """
    import dataclasses

    from ..checkpoint import load, load_config, resolve
    from ..data import Loader, Preprocess, load_splits
    from ..models.layers import inference_jit
    from ..viz.curves import plot_confusion_matrix
    from . import sharding as shd
    from .loop import evaluate
    from .state import TrainState
    from .step import make_eval_step

    path = resolve(checkpoint)
    config = load_config(path)
    model, variables = load(path)
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ResNetJaxError(f"{path} does not record its data set; pass --dataset")
    sets = load_splits(dataset, channels=config.get("in_channels"), strict=strict)
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
    matrix = result.per_class(num_classes)
    names = config.get("class_names") or data.class_names
    lines = [f"{path} on {dataset} ({split}, {result.count} images): "
             f"accuracy {result.accuracy:.2%}" + (f", top-5 {result.top5:.2%}" if result.top5 is not None else "")]
    width = max(len(str(n)) for n in names)
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        acc = matrix[i, i] / total if total else float("nan")
        lines.append(f"  {str(name):>{width}}  {acc:7.2%}  ({matrix[i, i]}/{total})")
    if output is None:
        run_root = path.parent if path.name.isdigit() else path
        output = run_root / f"confusion_{Path(dataset.split(':')[-1]).name}_{split}.png"
    png = plot_confusion_matrix(matrix, [str(n) for n in names], output,
                                title=f"{dataset} {split}: accuracy {result.accuracy:.2%}")
    return {"accuracy": result.accuracy, "matrix": matrix, "report": "\n".join(lines),
            "confusion_png": str(png), "count": result.count, "class_names": list(names)}
