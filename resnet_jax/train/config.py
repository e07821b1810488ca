"""A training run's settings: ``TrainConfig``, declared once.

Each field carries its command-line help and group in its metadata; the ``train``
command's flags are generated from these fields (``resnet_jax.train.cli``). This module
imports nothing heavy, so building the command line stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from ..errors import ResNetJaxError

# Settings per data set when the command line does not give them.
DATASET_DEFAULTS = {
    "digits": dict(arch="my_resnet", model_options={"stage_widths": [32, 64]}, epochs=30,
                   batch_size=64, lr=0.1, weight_decay=5e-4, warmup_epochs=2,
                   label_smoothing=0.1),
    "faces": dict(arch="my_resnet", epochs=40, batch_size=32, lr=0.05, weight_decay=5e-4,
                  warmup_epochs=2, label_smoothing=0.0),
}
GENERIC_DEFAULTS = dict(arch="resnet18", model_options={}, epochs=10, batch_size=64, lr=0.1,
                        weight_decay=5e-5, warmup_epochs=1, label_smoothing=0.1)


def setting(default, group: str, help: str = "", **flag):
    """A field with its command-line group, help and any argparse options (``choices``,
    ``metavar``); ``flag=False`` keeps it off the command line. A ``None`` default means
    "the data set's default" unless the help says otherwise."""
    return dataclasses.field(default=default, metadata={"group": group, "help": help, **flag})


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` means "the data set's default"."""

    # data
    dataset: str = setting(
        "digits", "data", "digits (default), faces, synthetic[:classes=4,size=16,n=256,channels=3], "
        "mnist:PATH (IDX files), folder:PATH or PATH (one sub-folder per class)")
    image_size: int | None = setting(None, "data", "side of the model's input (default: the data set's)")
    channels: int | None = setting(None, "data", "image folders: 3 (RGB, default) or 1", choices=(1, 3))
    strict: bool = setting(False, "data", "stop at the first unreadable image, naming it, instead of skipping "
                          "and counting it")
    skip_unknown_classes: bool = setting(
        False, "data", "image folders: leave out (with a warning) val/ or test/ classes that "
        "train/ lacks, instead of stopping")
    val_fraction: float = setting(0.1, "data", "share of the training images held out for validation")
    test_fraction: float = setting(0.2, "data", "share of the images held out for the test")
    workers: int = setting(0, "data", "worker processes that read, decode and augment image folders "
                           "and packs, for throughput that scales with cores (0: --threads threads "
                           "of the training process; in-memory data sets always use those)", metavar="N")
    threads: int = setting(2, "data", "threads of the training process that decode and augment when "
                           "there are no worker processes", metavar="N")
    # model
    arch: str | None = setting(None, "model", "registered architecture (resnet-jax summary lists them)")
    model_options: dict | None = setting(None, "model", flag=False)  # e.g. {"stage_widths": [32, 64]}
    precision: str = setting("fp32", "model", "bf16: bfloat16 compute, float32 parameters and "
                             "BatchNorm statistics", choices=("fp32", "bf16"))
    init_from: str | None = setting(None, "model", "fine-tune a saved or ported model: its weights "
                                    "with a new head", metavar="DIR")
    freeze_backbone: bool = setting(False, "model", "train only the head (the rest is masked out "
                                    "of the optimizer)")
    # optimization
    epochs: int | None = setting(None, "optimization", "passes over the training images")
    max_steps: int | None = setting(None, "optimization", "stop after this many steps in all")
    batch_size: int | None = setting(None, "optimization", "global batch size over all devices")
    optimizer: str = setting("sgd", "optimization", choices=("sgd", "adamw"))
    lr: float | None = setting(None, "optimization", "peak learning rate")
    momentum: float = setting(0.9, "optimization")
    nesterov: bool = setting(True, "optimization", "plain momentum instead of Nesterov's")
    weight_decay: float | None = setting(None, "optimization", "on kernels only")
    warmup_epochs: float | None = setting(None, "optimization", "linear warm-up before the cosine decay")
    label_smoothing: float | None = setting(None, "optimization")
    clip_norm: float | None = setting(None, "optimization", "clip gradients to this global norm")
    seed: int = setting(0, "optimization")
    # run
    output: str | None = setting(None, "run", "run directory (default runs/<data>-<arch>-<time>)",
                                 metavar="DIR")
    resume: bool = setting(False, "run", "continue the run in --output from its latest checkpoint")
    checkpoint_every: int = setting(0, "run", "also save every STEPS steps (it always saves at each epoch end)",
                                    metavar="STEPS")
    keep: int = setting(3, "run", "checkpoints kept besides the best")
    eval_every: int = setting(1, "run", "validate every EPOCHS epochs", metavar="EPOCHS")
    log_every: int = setting(10, "run", "fetch the training metrics from the device, check them and "
                             "log them every STEPS steps (and before each save)", metavar="STEPS")
    devices: int | None = setting(None, "run", "use the first N devices (default all)", metavar="N")
    progress: bool = setting(True, "run", "no progress bar")
    tensorboard: bool = setting(True, "run", "no TensorBoard event file")
    plots: bool = setting(True, "run", "no curves.png at the end")

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled from the data set's defaults."""
        base = DATASET_DEFAULTS.get(self.dataset.split(":")[0], GENERIC_DEFAULTS)
        base = {**GENERIC_DEFAULTS, **base}
        out = dataclasses.replace(self)
        arch_given = self.arch is not None
        for key, value in base.items():
            if getattr(out, key) is None:
                if key == "model_options" and arch_given and self.arch != base["arch"]:
                    value = {}
                setattr(out, key, value)
        return out

    def validate(self) -> TrainConfig:
        """Raise ``ResNetJaxError`` naming the first setting outside its valid range.

        ``train`` calls it on the resolved config before reading data or writing anything,
        so the command line and the API refuse the same values."""
        def need(ok: bool, field: str, rule: str):
            if not ok:
                raise ResNetJaxError(f"--{field.replace('_', '-')} must be {rule}; got {getattr(self, field)!r}")

        for field, low, optional, rule in _INTEGERS:
            need(_integer(getattr(self, field), low, optional), field, rule)
        need(_number(self.lr, 0), "lr", "a finite number >= 0")
        need(_number(self.momentum, 0, 1), "momentum", "a finite number in [0, 1)")
        need(_number(self.weight_decay, 0), "weight_decay", "a finite number >= 0")
        need(_number(self.warmup_epochs, 0), "warmup_epochs", "a finite number >= 0")
        need(_number(self.label_smoothing, 0, 1), "label_smoothing", "a finite number in [0, 1)")
        need(_number(self.clip_norm, 0, low_open=True, optional=True), "clip_norm",
             "a finite number > 0 (or left out: no clipping)")
        need(_number(self.val_fraction, 0, 1), "val_fraction", "a finite number in [0, 1)")
        need(_number(self.test_fraction, 0, 1, low_open=True), "test_fraction", "a finite number in (0, 1)")
        need(self.channels in (None, 1, 3), "channels", "1 or 3")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", "'sgd' or 'adamw'")
        need(self.precision in ("fp32", "bf16"), "precision", "'fp32' or 'bf16'")
        for key in ("stage_widths", "stage_sizes"):
            value = (self.model_options or {}).get(key)
            if value is not None and not (len(value) and all(_integer(v, 1) for v in value)):
                raise ResNetJaxError(f"--{key.replace('_', '-')} must be integers >= 1, one per stage; "
                                     f"got {','.join(map(str, value)) or 'none'}")
        return self


# (field, lowest value, may be left out, rule)
_INTEGERS = (
    ("epochs", 1, False, "an integer >= 1"),
    ("max_steps", 1, True, "an integer >= 1 (or left out: all epochs)"),
    ("image_size", 1, True, "an integer >= 1 (pixels)"),
    ("batch_size", 1, False, "an integer >= 1"),
    ("devices", 1, True, "an integer >= 1 (or left out: all)"),
    ("workers", 0, False, "an integer >= 0 (0: no worker processes)"),
    ("threads", 1, False, "an integer >= 1"),
    ("eval_every", 1, False, "an integer >= 1 (epochs)"),
    ("checkpoint_every", 0, False, "an integer >= 0 (0: at epoch ends only)"),
    ("log_every", 1, False, "an integer >= 1 (steps)"),
    ("keep", 1, False, "an integer >= 1"),
    ("seed", 0, False, "an integer >= 0"),
)


def _integer(v, low, optional=False) -> bool:
    if v is None:
        return optional
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _number(v, low, high=math.inf, low_open=False, optional=False) -> bool:
    if v is None:
        return optional
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > low if low_open else v >= low) and v < high
