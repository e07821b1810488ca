"""The ``train`` and ``evaluate`` subcommands (heavy imports stay inside the functions)."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (default: my_resnet on the embedded digits)",
        description="Train a registered architecture with a jitted optax step. With no "
        "arguments: the embedded handwritten digits, about a minute on a laptop CPU.",
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="digits (default), faces, synthetic[:classes=4,size=16,n=256,channels=3], "
                   "mnist:PATH (IDX files), folder:PATH or PATH (one sub-folder per class)")
    d.add_argument("--image-size", type=int, help="side of the model's input (default: the data set's)")
    d.add_argument("--channels", type=int, choices=(1, 3), help="image folders: 3 (RGB, default) or 1")
    d.add_argument("--strict", action="store_true",
                   help="stop on an unreadable image instead of skipping it with a warning")
    d.add_argument("--skip-unknown-classes", action="store_true",
                   help="image folders: leave out (with a warning) val/ or test/ classes that "
                   "train/ lacks, instead of stopping")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--test-fraction", type=float, default=0.2)
    d.add_argument("--workers", type=int, default=2, help="threads that decode and augment")
    m = p.add_argument_group("model")
    m.add_argument("--arch", help="registered architecture (resnet-jax summary lists them)")
    m.add_argument("--stage-widths", type=_int_list, help="e.g. 32,64")
    m.add_argument("--stage-sizes", type=_int_list, help="blocks per stage, e.g. 1,1")
    m.add_argument("--stem", choices=("imagenet", "small"))
    m.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 compute, float32 parameters and BatchNorm statistics")
    m.add_argument("--init-from", metavar="DIR",
                   help="fine-tune a saved or ported model: its weights with a new head")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the head (the rest is masked out of the optimizer)")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int)
    o.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    o.add_argument("--batch-size", type=int, help="global batch size over all devices")
    o.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--label-smoothing", type=float)
    o.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--output", metavar="DIR", help="run directory (default runs/<data>-<arch>-<time>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also save every STEPS steps (always at each epoch end)")
    r.add_argument("--keep", type=int, default=3, help="checkpoints kept besides the best")
    r.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS")
    r.add_argument("--devices", type=int, help="use the first N devices (default all)")
    r.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0")
    r.add_argument("--num-processes", type=int)
    r.add_argument("--process-id", type=int)
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    r.add_argument("--no-plots", dest="plots", action="store_false")
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
    from .loop import TrainConfig

    options = {}
    if args.stage_widths:
        options["stage_widths"] = args.stage_widths
    if args.stage_sizes:
        options["stage_sizes"] = args.stage_sizes
    if args.stem:
        options["stem"] = args.stem
    return TrainConfig(
        dataset=args.dataset, arch=args.arch, model_options=options or None,
        image_size=args.image_size, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        clip_norm=args.clip_norm, precision=args.precision, seed=args.seed,
        output=args.output, resume=args.resume, init_from=args.init_from,
        freeze_backbone=args.freeze_backbone, checkpoint_every=args.checkpoint_every,
        keep=args.keep, eval_every=args.eval_every, workers=args.workers, strict=args.strict,
        skip_unknown_classes=args.skip_unknown_classes,
        channels=args.channels, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        devices=args.devices, progress=args.progress, tensorboard=args.tensorboard,
        plots=args.plots,
    )


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

    from .evaluate import evaluate_checkpoint

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
