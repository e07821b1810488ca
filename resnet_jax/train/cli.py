"""The ``train`` and ``evaluate`` subcommands (heavy imports stay inside the functions)."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# Flags that fill TrainConfig.model_options (fields of the model, not of the run).
MODEL_OPTION_FLAGS = {
    "stage_widths": dict(type=_int_list, metavar="STAGE_WIDTHS", help="e.g. 32,64"),
    "stage_sizes": dict(type=_int_list, metavar="STAGE_SIZES", help="blocks per stage, e.g. 1,1"),
    "stem": dict(choices=("imagenet", "small"),
                 help="default: small for images up to 64 pixels, else imagenet"),
}
_TYPES = {"int": int, "float": float, "str": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(groups: dict, field) -> None:
    """The flag of one ``TrainConfig`` field: ``--name`` with the field's type and default;
    a bool is a switch away from its default (``--strict``, ``--no-progress``)."""
    meta = dict(field.metadata)
    group, help_text = groups[meta.pop("group")], meta.pop("help")
    if not meta.pop("flag", True):
        if field.name == "model_options":
            for name, options in MODEL_OPTION_FLAGS.items():
                group.add_argument(_flag(name), dest=f"model_option_{name}", **options)
        return
    if field.default is True:
        group.add_argument(_flag(f"no_{field.name}"), dest=field.name, action="store_false",
                           help=help_text or None)
        return
    if field.default is False:
        group.add_argument(_flag(field.name), action="store_true", help=help_text or None)
        return
    kind = _TYPES[str(field.type).split("|")[0].strip()]
    if field.default is not None and kind is not str:
        help_text = f"{help_text} (default: %(default)s)".strip()
    group.add_argument(_flag(field.name), type=kind, default=field.default, help=help_text or None,
                       **meta)


def register(subparsers) -> None:
    import dataclasses

    from .config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train a model (default: my_resnet on the embedded digits)",
        description="Train a registered architecture with a jitted optax step. With no "
        "arguments: the embedded handwritten digits, about a minute on a laptop CPU. "
        "Settings left out take the data set's defaults.",
    )
    groups = {name: p.add_argument_group(name) for name in ("data", "model", "optimization", "run")}
    for field in dataclasses.fields(TrainConfig):
        _add_field(groups, field)
    r = groups["run"]
    r.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0")
    r.add_argument("--num-processes", type=int, metavar="N", help="multi-host: processes in all")
    r.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process's index")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "evaluate", help="accuracy per class and a confusion matrix of a saved model",
        description="Evaluate a checkpoint (a training run, one of its steps, or a saved model).",
    )
    e.add_argument("--checkpoint", required=True, metavar="DIR")
    e.add_argument("--dataset", help="default: the data set the checkpoint was trained on")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--output", metavar="PNG", help="confusion-matrix picture (default: next to the run)")
    e.add_argument("--strict", action="store_true")
    e.add_argument("--skip-unknown-classes", action="store_true",
                   help="image folders: leave out val/ or test/ classes that train/ lacks")
    e.set_defaults(func=run_evaluate)


def config_from_args(args):
    """The ``TrainConfig`` of parsed ``train`` arguments (one per field, plus the model's)."""
    import dataclasses

    from .config import TrainConfig

    options = {name: getattr(args, f"model_option_{name}") for name in MODEL_OPTION_FLAGS}
    options = {k: v for k, v in options.items() if v}
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.metadata.get("flag", True)}
    return TrainConfig(**given, model_options=options or None)


def run_train(args) -> int:
    import sys
    import warnings

    from .sharding import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    from .loop import train

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda m, *a, **k: log(f"warning: {m}")
        summary = train(config_from_args(args), log=log)
    import jax

    if jax.process_index() == 0:
        top5 = f", top-5 {summary['test_top5']:.2%}" if summary.get("test_top5") is not None else ""
        print(
            f"test accuracy {summary['test_accuracy']:.2%} ({summary['test_correct']}/"
            f"{summary['test_count']}){top5} in {summary['seconds']:.0f} s; "
            f"checkpoint {summary['checkpoint']}"
            + (f"; best {summary['best_checkpoint']}" if summary.get("best_checkpoint") else ""),
            flush=True,
        )
    return 0


def run_evaluate(args) -> int:
    import sys
    import warnings

    from .evaluation import evaluate_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda m, *a, **k: print(f"warning: {m}", file=sys.stderr, flush=True)
        result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, split=args.split,
                                     batch_size=args.batch_size, output=args.output,
                                     strict=args.strict,
                                     unknown_classes="skip" if args.skip_unknown_classes else "error")
    print(result["report"])
    print(f"confusion matrix: {result['confusion_png']}")
    return 0
