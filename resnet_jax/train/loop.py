"""The training loop: data, model, optimizer, steps, evaluation, checkpoints and logs.

``train(TrainConfig(...))`` runs a whole training and returns a summary; the
``resnet-jax train`` command (and ``python train.py``) is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import numbers
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Loader, Preprocess, load_splits
from ..errors import ResNetJaxError
from ..models import create_model, init_variables
from ..xla_cpu import inference_jit
from . import sharding as shd
from .checkpoints import RunCheckpoints, abstract
from .lock import RunLock
from .logs import METRICS_FILE, MetricLog, trim_metrics
from .state import OptimizerConfig, TrainState, make_optimizer, schedule
from .step import make_eval_step, make_train_step


class TrainingDiverged(ResNetJaxError):
    """The loss or the parameters stopped being finite."""


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


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` means "the data set's default"."""

    dataset: str = "digits"
    arch: str | None = None
    model_options: dict | None = None  # fields of the model, e.g. {"stage_widths": [32, 64]}
    image_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None  # stop early, after this many steps in all
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_norm: float | None = None
    precision: str = "fp32"  # or "bf16": bf16 compute, fp32 parameters and statistics
    seed: int = 0
    output: str | None = None
    resume: bool = False
    init_from: str | None = None  # fine-tune from a saved or ported model, new head
    freeze_backbone: bool = False
    checkpoint_every: int = 0  # steps; 0: only at epoch ends
    keep: int = 3
    eval_every: int = 1  # epochs
    workers: int = 2
    strict: bool = False
    channels: int | None = None  # for image folders: 3 (RGB, default) or 1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    devices: int | None = None  # use the first N devices (default all)
    skip_unknown_classes: bool = False  # image folders: drop val/test classes absent from train/
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True

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

        def integer(v, low, optional=False):
            if v is None:
                return optional
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

        def number(v, low, high=math.inf, low_open=False, optional=False):
            if v is None:
                return optional
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            return ok and (v > low if low_open else v >= low) and v < high

        need(integer(self.epochs, 1), "epochs", "an integer >= 1")
        need(integer(self.max_steps, 1, True), "max_steps", "an integer >= 1 (or left out: all epochs)")
        need(integer(self.image_size, 1, True), "image_size", "an integer >= 1 (pixels)")
        need(integer(self.batch_size, 1), "batch_size", "an integer >= 1")
        need(integer(self.devices, 1, True), "devices", "an integer >= 1 (or left out: all)")
        need(integer(self.workers, 0), "workers", "an integer >= 0")
        need(integer(self.eval_every, 1), "eval_every", "an integer >= 1 (epochs)")
        need(integer(self.checkpoint_every, 0), "checkpoint_every", "an integer >= 0 (0: at epoch ends only)")
        need(integer(self.keep, 1), "keep", "an integer >= 1")
        need(integer(self.seed, 0), "seed", "an integer >= 0")
        need(number(self.lr, 0), "lr", "a finite number >= 0")
        need(number(self.momentum, 0, 1), "momentum", "a finite number in [0, 1)")
        need(number(self.weight_decay, 0), "weight_decay", "a finite number >= 0")
        need(number(self.warmup_epochs, 0), "warmup_epochs", "a finite number >= 0")
        need(number(self.label_smoothing, 0, 1), "label_smoothing", "a finite number in [0, 1)")
        need(number(self.clip_norm, 0, low_open=True, optional=True), "clip_norm",
             "a finite number > 0 (or left out: no clipping)")
        need(number(self.val_fraction, 0, 1), "val_fraction", "a finite number in [0, 1)")
        need(number(self.test_fraction, 0, 1, low_open=True), "test_fraction", "a finite number in (0, 1)")
        need(self.channels in (None, 1, 3), "channels", "1 or 3")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", "'sgd' or 'adamw'")
        need(self.precision in ("fp32", "bf16"), "precision", "'fp32' or 'bf16'")
        for key in ("stage_widths", "stage_sizes"):
            value = (self.model_options or {}).get(key)
            if value is not None and not (len(value) and all(integer(v, 1) for v in value)):
                raise ResNetJaxError(f"--{key.replace('_', '-')} must be integers >= 1, one per stage; "
                                     f"got {','.join(map(str, value)) or 'none'}")
        return self


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    name = Path(cfg.dataset.split(":")[-1]).name or "data"
    prefix = f"{name}-{cfg.arch}"
    if cfg.resume:
        runs = sorted(Path("runs").glob(f"{prefix}-*")) if Path("runs").is_dir() else []
        if not runs:
            raise ResNetJaxError(
                f"--resume found no run under runs/{prefix}-*; pass --output DIR of the run to resume"
            )
        return runs[-1]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{prefix}-{stamp}"


def build_model(cfg: TrainConfig, num_classes: int, channels: int, image_size: int):
    options = dict(cfg.model_options or {})
    for key in ("stage_sizes", "stage_widths"):
        if key in options:
            options[key] = tuple(options[key])
    if cfg.precision == "bf16":
        options["dtype"] = jnp.bfloat16
    elif cfg.precision != "fp32":
        raise ResNetJaxError(f"unknown precision {cfg.precision!r}; expected 'fp32' or 'bf16'")
    options.setdefault("in_channels", channels)
    try:
        probe = create_model(cfg.arch, num_classes=num_classes)
        if hasattr(probe, "stem"):
            options.setdefault("stem", "small" if image_size <= 64 else "imagenet")
        return create_model(cfg.arch, num_classes=num_classes, **options)
    except TypeError as e:
        raise ResNetJaxError(str(e)) from None


def finetune_variables(source_dir, num_classes: int, image_size: int, seed: int,
                       precision: str | None = None):
    """A model loaded from ``source_dir`` with a fresh head for ``num_classes`` classes."""
    from ..checkpoint import load

    model0, variables0 = load(source_dir)
    updates = {"num_classes": num_classes}
    if precision == "bf16":
        updates["dtype"] = jnp.bfloat16
    model = model0.clone(**updates)
    fresh = init_variables(model, seed, image_size)
    params = dict(variables0["params"])
    params["fc"] = fresh["params"]["fc"]
    variables = {"params": params, "batch_stats": variables0.get("batch_stats", {})}
    want = jax.tree_util.tree_structure(abstract(fresh))
    if jax.tree_util.tree_structure(abstract(variables)) != want:
        raise ResNetJaxError(f"the model in {source_dir} does not match its own config")
    return model, variables


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


def evaluate(state, loader: Loader, eval_step, mesh) -> EvalResult:
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


def _jit_steps(model, pre: Preprocess, num_classes: int, label_smoothing: float, mesh,
               lr_schedule=None, opt_cfg: OptimizerConfig | None = None):
    step = make_train_step(pre.mean, pre.std, num_classes, label_smoothing, lr_schedule)
    rep = shd.replicated(mesh)
    train_step = jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))
    eval_step = inference_jit(make_eval_step(pre.mean, pre.std, num_classes))
    return train_step, eval_step


def _finite_check(metrics: dict, step: int, epoch: int, run_dir: Path, last_good: int | None):
    bad = [k for k in ("loss", "param_norm", "grad_norm") if k in metrics and not math.isfinite(metrics[k])]
    if not bad:
        return
    where = (f"the last good checkpoint, step {last_good}, is kept in {run_dir.absolute()}"
             if last_good is not None else "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"{' and '.join(bad)} became {metrics[bad[0]]} at step {step} (epoch {epoch + 1}); "
        f"training stopped and this state was not saved; {where}. "
        "Lower --lr, add --clip-norm, or use --warmup-epochs, then --resume or start again"
    )


@dataclasses.dataclass
class _Data:
    """The data side of a run: splits, preprocessing, loaders and the step count."""

    train_set: object
    pre: Preprocess
    train_loader: Loader
    eval_loaders: dict
    steps_per_epoch: int
    total_steps: int

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def channels(self) -> int:
        return self.train_set.channels


def _load_data(cfg: TrainConfig) -> _Data:
    sets = load_splits(cfg.dataset, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                       channels=cfg.channels, strict=cfg.strict,
                       unknown_classes="skip" if cfg.skip_unknown_classes else "error")
    train_set = sets["train"]
    if train_set.num_classes < 2:
        raise ResNetJaxError(
            f"data set {cfg.dataset!r} has {train_set.num_classes} class "
            f"({', '.join(map(str, train_set.class_names))}); a classifier needs at least 2")
    pre = train_set.preprocess
    if cfg.image_size:
        pre = dataclasses.replace(pre, image_size=int(cfg.image_size))
    host = dict(shard_index=jax.process_index(), shard_count=jax.process_count(),
                workers=cfg.workers)
    train_loader = Loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, preprocess=pre, **host)
    eval_loaders = {k: Loader(v, cfg.batch_size, train=False, preprocess=pre, **host)
                    for k, v in sets.items() if k in ("val", "test")}
    spe = len(train_loader)
    total_steps = cfg.epochs * spe
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    return _Data(train_set, pre, train_loader, eval_loaders, spe, total_steps)


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    if cfg.resume:
        if not run_dir.is_dir():
            raise ResNetJaxError(f"--resume: {run_dir} does not exist; nothing to resume")
    elif run_dir.is_dir() and any(p.name.isdigit() for p in run_dir.iterdir()):
        raise ResNetJaxError(
            f"{run_dir} already holds a run's checkpoints; pass --resume to continue it "
            "or choose another --output"
        )


def _optimizer_config(cfg: TrainConfig, spe: int) -> OptimizerConfig:
    return OptimizerConfig(
        optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, warmup_steps=int(round(cfg.warmup_epochs * spe)),
        total_steps=cfg.epochs * spe, clip_norm=cfg.clip_norm,
        freeze_backbone=cfg.freeze_backbone,
    )


@dataclasses.dataclass
class _Start:
    """Where a run begins: a model and its variables, and when resuming its saved state."""

    model: object
    variables: dict
    arch: str | None
    step: int | None = None
    opt_state: object = None
    data_state: dict | None = None


def _fresh_start(cfg: TrainConfig, data: _Data) -> _Start:
    if not cfg.init_from:
        model = build_model(cfg, data.num_classes, data.channels, data.pre.image_size)
        return _Start(model, init_variables(model, cfg.seed, data.pre.image_size), cfg.arch)
    model, variables = finetune_variables(cfg.init_from, data.num_classes, data.pre.image_size,
                                          cfg.seed, cfg.precision)
    if model.in_channels != data.channels:
        raise ResNetJaxError(
            f"the model in {cfg.init_from} takes {model.in_channels}-channel images but "
            f"{cfg.dataset!r} has {data.channels}-channel ones; pass --channels {model.in_channels} "
            "for an image folder"
        )
    from ..checkpoint import arch_of

    return _Start(model, variables, arch_of(cfg.init_from) or cfg.arch)


def _check_resume_matches(cfg: TrainConfig, given: TrainConfig, saved: dict, where: str,
                          data: _Data) -> None:
    """A resumed run keeps its model: options on the command line must agree with it."""
    saved_classes = int(saved.get("num_classes", -1))
    if saved_classes != data.num_classes:
        names = data.train_set.class_names
        raise ResNetJaxError(
            f"the checkpoint at {where} was trained for {saved_classes} classes "
            f"but data set {cfg.dataset!r} has {data.num_classes} ({', '.join(names[:10])}"
            f"{' ...' if data.num_classes > 10 else ''}); resume with the run's own data set, or "
            f"fine-tune it on this one with --init-from {where} and a new --output"
        )
    if saved.get("in_channels", data.channels) != data.channels:
        raise ResNetJaxError(f"the checkpoint at {where} takes {saved['in_channels']}-channel images, "
                             f"data set {cfg.dataset!r} has {data.channels}")
    asked = {"arch": given.arch, **(given.model_options or {})}
    if given.precision == "bf16":
        asked["dtype"] = "bfloat16"
    saved_size = (saved.get("preprocess") or {}).get("image_size", data.pre.image_size)
    if data.pre.image_size != saved_size:
        raise ResNetJaxError(
            f"--resume: the checkpoint at {where} was trained on {saved_size}px images, this run "
            f"would feed it {data.pre.image_size}px ones; pass --image-size {saved_size}")
    for key, value in asked.items():
        want = list(value) if isinstance(value, (tuple, list)) else value
        if value is not None and saved.get(key) != want:
            flag = {"dtype": "precision"}.get(key, key).replace("_", "-")
            raise ResNetJaxError(
                f"--resume: the checkpoint at {where} has {key} {saved.get(key)!r}, this run asks for "
                f"{want!r}; resume without --{flag} (or with the run's own value), or start a new "
                "run with another --output")


def _check_optimizer_matches(cfg: TrainConfig, info: dict, params, spe: int, where: str) -> None:
    """Refuse a resume whose optimizer settings give a differently shaped optimizer state."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved_cfg = dataclasses.replace(cfg, **{k: v for k, v in (info.get("settings") or {}).items()
                                            if k in fields and k != "model_options"})
    structure = [jax.tree_util.tree_structure(jax.eval_shape(make_optimizer(_optimizer_config(c, spe)).init, params))
                 for c in (saved_cfg, cfg)]
    if structure[0] != structure[1]:
        keys = ("optimizer", "clip_norm", "freeze_backbone", "momentum", "nesterov")
        diff = [f"--{k.replace('_', '-')} {getattr(saved_cfg, k)!r} (now {getattr(cfg, k)!r})"
                for k in keys if getattr(saved_cfg, k) != getattr(cfg, k)]
        raise ResNetJaxError(
            f"--resume: the optimizer state at {where} was saved with other optimizer settings: "
            f"{', '.join(diff) or 'a different optimizer'}; resume with the saved run's settings")


def _resume(cfg: TrainConfig, given: TrainConfig, run_dir: Path, ckpts: RunCheckpoints,
            data: _Data, tx, log) -> _Start:
    """The newest intact step of ``run_dir``; damaged newer steps are set aside, saying so."""
    from ..checkpoint import CheckpointError, load_step, read_config

    steps = sorted(ckpts.all_steps(), reverse=True)
    if not steps:
        raise ResNetJaxError(f"--resume: {run_dir} holds no checkpoint to resume from")
    damaged = []
    for step in steps:
        where = f"{run_dir}/{step}"
        try:
            info = ckpts.read_train_info(step)
            _check_resume_matches(cfg, given, read_config(run_dir / str(step)), where, data)
            loaded = load_step(run_dir / str(step))
            _check_optimizer_matches(cfg, info, loaded.variables["params"], data.steps_per_epoch, where)
            abstract_opt = abstract(jax.eval_shape(tx.init, loaded.variables["params"]))
            opt_state = ckpts.restore_opt_state(step, abstract_opt, info)
        except CheckpointError as e:
            damaged.append((step, str(e)))
            continue
        for bad, reason in damaged:
            if jax.process_index() == 0:  # one process renames; the folder is shared
                aside = ckpts.set_aside(bad)
                log(f"warning: {reason}; moved it to {aside.name} and resumed from step {step}, "
                    "the newest intact checkpoint")
        return _Start(loaded.model, loaded.variables, loaded.config.get("arch", cfg.arch), step,
                      opt_state, info["data"])
    raise ResNetJaxError(f"--resume: no intact checkpoint in {run_dir}: "
                         + "; ".join(reason for _, reason in damaged))


def _initial_state(cfg: TrainConfig, given: TrainConfig, run_dir: Path, ckpts: RunCheckpoints,
                   data: _Data, tx, log, start: _Start | None) -> tuple[TrainState, _Start]:
    start = start or _resume(cfg, given, run_dir, ckpts, data, tx, log)
    state = TrainState.create(start.model.apply, start.variables, tx)
    if start.step is not None:
        state = state.replace(step=jnp.asarray(start.step, jnp.int32), opt_state=start.opt_state)
    return state, start


def _mesh(cfg: TrainConfig):
    devices = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devices):
            raise ResNetJaxError(f"--devices {cfg.devices} asked for, only {len(devices)} present")
        devices = devices[: cfg.devices]
    mesh = shd.make_mesh(devices)
    shd.check_batch_size(cfg.batch_size, mesh)
    return mesh


def train(cfg: TrainConfig, *, log=print) -> dict:
    """Run a training; returns a summary (accuracies, run directory, last checkpoint).

    Every setting is checked first, then the data; nothing is written before both pass.
    The run directory is locked for the run's life (``resnet_jax.train.lock``)."""
    t_start = time.time()
    given, cfg = cfg, cfg.resolved().validate()
    mesh = _mesh(cfg)
    data = _load_data(cfg)
    run_dir = _run_dir(cfg)
    _check_run_dir(cfg, run_dir)
    start = None if cfg.resume else _fresh_start(cfg, data)  # a bad model option: nothing written
    lock = RunLock(run_dir).acquire() if jax.process_index() == 0 else None
    ckpts = RunCheckpoints(run_dir, cfg.keep)
    try:
        summary = _train_locked(cfg, given, data, mesh, run_dir, ckpts, start, log)
    finally:
        ckpts.close()  # before the interpreter exits, whatever stopped the run
        if lock is not None:
            lock.release()
    summary["seconds"] = time.time() - t_start
    return summary


def _train_locked(cfg: TrainConfig, given: TrainConfig, data: _Data, mesh, run_dir: Path,
                  ckpts: RunCheckpoints, start: _Start | None, log) -> dict:
    main_process = jax.process_index() == 0
    opt_cfg = _optimizer_config(cfg, data.steps_per_epoch)
    tx = make_optimizer(opt_cfg)
    state, start = _initial_state(cfg, given, run_dir, ckpts, data, tx, log, start)
    state = shd.replicate(state, mesh)
    if main_process:  # records past the start step: from a crashed attempt, logged again
        trim_metrics(run_dir / METRICS_FILE, start.step or 0)
    train_step, eval_step = _jit_steps(start.model, data.pre, data.num_classes, cfg.label_smoothing,
                                       mesh, schedule(opt_cfg), opt_cfg)
    logs = MetricLog(run_dir, enabled=main_process, tensorboard=cfg.tensorboard)
    if main_process:
        what = (f"resumed at step {start.step}" if start.step is not None else
                f"fine-tuning {cfg.init_from}" if cfg.init_from else "from scratch")
        log(f"training {start.arch} on {cfg.dataset} ({len(data.train_set)} train images, "
            f"{data.num_classes} classes, {data.pre.image_size}px) for {data.total_steps} steps on "
            f"{mesh.devices.size} device(s), {what}; run directory {run_dir}")
    run_settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("progress", "resume", "output")}
    saver = _Saver(ckpts, start, data, run_settings, cfg)
    try:
        state, val = _run_steps(cfg, state, data, saver, logs, train_step, eval_step, mesh, run_dir)
        test_loader = data.eval_loaders.get("test") or data.eval_loaders.get("val")
        test = evaluate(state, test_loader, eval_step, mesh)
        logs.write({"kind": "test", "step": data.total_steps, "loss": test.loss,
                    "accuracy": test.accuracy, "top5": test.top5})
        latest_step, best = ckpts.latest_step(), ckpts.best_step()
    finally:
        saver.close()
        logs.close()
    return _summary(cfg, data, test, val, run_dir, latest_step, best, logs, main_process)


class _Saver:
    """Saves steps of the run and remembers the newest intact one."""

    def __init__(self, ckpts: RunCheckpoints, start: _Start, data: _Data, run_settings: dict,
                 cfg: TrainConfig):
        self.ckpts, self.start, self.last_good = ckpts, start, start.step
        self.it = data.train_loader.iterator(start.data_state)
        self.model_extra = {"class_names": list(data.train_set.class_names),
                            "preprocess": data.pre.to_json(), "dataset": cfg.dataset}
        self.run_settings, self.num_classes = run_settings, data.num_classes

    def save(self, step: int, state, metrics=None) -> Path:
        info = {"step": step, "data": self.it.state(), "settings": self.run_settings,
                "num_classes": self.num_classes}
        path = self.ckpts.save(step, self.start.model, state, arch=self.start.arch,
                               model_extra=self.model_extra, train_info=info, metrics=metrics)
        self.last_good = step
        return path

    def close(self):
        self.it.close()


def _run_steps(cfg: TrainConfig, state, data: _Data, saver: _Saver, logs: MetricLog, train_step,
               eval_step, mesh, run_dir: Path):
    """The training steps from the start step to the end, with evaluations and saves."""
    from tqdm import tqdm

    spe, total_steps = data.steps_per_epoch, data.total_steps
    start_step = int(saver.start.step or 0)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and jax.process_index() == 0), leave=False)
    val, window = None, []
    try:
        t_prev = time.time()
        for step in range(start_step, total_steps):
            epoch = step // spe
            state, metrics = train_step(state, shd.shard_batch(next(saver.it), mesh))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _finite_check(metrics, step + 1, epoch, run_dir, saver.last_good)
            now = time.time()
            if step > start_step:  # the first step compiles
                window = (window + [cfg.batch_size / max(now - t_prev, 1e-9)])[-20:]
            t_prev = now
            ips = float(np.median(window)) if window else None
            logs.write({"kind": "train", "step": step + 1, "epoch": epoch + 1,
                        "images_per_s": ips, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{ips or 0:.0f}", refresh=False)
            done = step + 1
            epoch_end = done % spe == 0
            if epoch_end and "val" in data.eval_loaders and (
                    (done // spe) % cfg.eval_every == 0 or done == total_steps):
                val = evaluate(state, data.eval_loaders["val"], eval_step, mesh)
                logs.write({"kind": "val", "step": done, "epoch": done // spe, "loss": val.loss,
                            "accuracy": val.accuracy, "top5": val.top5})
                saver.save(done, state, {"val_accuracy": val.accuracy, "val_loss": val.loss})
            elif epoch_end or done == total_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                saver.save(done, state)
        if saver.last_good != total_steps and total_steps > start_step:
            saver.save(total_steps, state)
    finally:
        bar.close()
    return state, val


def _summary(cfg, data: _Data, test: EvalResult, val, run_dir: Path, latest_step, best, logs,
             main_process: bool) -> dict:
    latest = run_dir / str(latest_step) if latest_step is not None else None
    summary = {
        "test_accuracy": test.accuracy, "test_correct": int(round(test.accuracy * test.count)),
        "test_count": test.count, "test_loss": test.loss, "test_top5": test.top5,
        "val_accuracy": None if val is None else val.accuracy,
        "run_dir": str(run_dir), "checkpoint": str(latest) if latest else None,
        "best_checkpoint": str(run_dir / str(best)) if best is not None else None,
        "steps": data.total_steps,
    }
    if main_process and cfg.plots:
        from ..viz.curves import plot_curves
        from .logs import read_metrics

        summary["curves"] = str(plot_curves(read_metrics(logs.path), run_dir / "curves.png"))
    return summary
