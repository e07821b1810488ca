"""The training loop: data, model, optimizer, steps, evaluation, checkpoints and logs.

``train(TrainConfig(...))`` runs a whole training and returns a summary; the
``resnet-jax train`` command (and ``python train.py``) is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Loader, Preprocess, load_splits
from ..errors import ResNetJaxError
from ..models import create_model, init_variables, model_from_config
from ..models.layers import inference_jit
from . import sharding as shd
from . import trace_cache
from .checkpoints import RunCheckpoints, abstract
from .logs import MetricLog
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

    def per_class(self, num_classes: int) -> np.ndarray:
        """Confusion matrix: rows true class, columns predicted class."""
        m = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(m, (self.labels, self.predictions), 1)
        return m


def evaluate(state, loader: Loader, eval_step, mesh) -> EvalResult:
    """One pass over ``loader`` (in order, padded) with the jitted ``eval_step``."""
    sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "correct5": 0.0}
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
    )


def _jit_steps(model, pre: Preprocess, num_classes: int, label_smoothing: float, mesh,
               lr_schedule=None, opt_cfg: OptimizerConfig | None = None):
    step = make_train_step(pre.mean, pre.std, num_classes, label_smoothing, lr_schedule)
    if trace_cache.directory() is not None and mesh.devices.size == 1 and opt_cfg is not None:
        # The traced step is kept across processes (one device: its program names no mesh).
        parts = {"model": model, "optimizer": opt_cfg, "mean": tuple(pre.mean),
                 "std": tuple(pre.std), "num_classes": num_classes,
                 "label_smoothing": label_smoothing}
        train_step = trace_cache.CachedStep(step, parts)
    else:
        rep = shd.replicated(mesh)
        train_step = jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))
    eval_step = inference_jit(make_eval_step(pre.mean, pre.std, num_classes))
    return train_step, eval_step


def _finite_check(metrics: dict, step: int, epoch: int, ckpts: RunCheckpoints | None):
    bad = [k for k in ("loss", "param_norm", "grad_norm") if k in metrics and not math.isfinite(metrics[k])]
    if not bad:
        return
    last = ckpts.latest_step() if ckpts else None
    where = (f"the last good checkpoint, step {last}, is kept in {ckpts.directory}"
             if last is not None else "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"{' and '.join(bad)} became {metrics[bad[0]]} at step {step} (epoch {epoch + 1}); "
        f"training stopped and this state was not saved; {where}. "
        "Lower --lr, add --clip-norm, or use --warmup-epochs, then --resume or start again"
    )


def train(cfg: TrainConfig, *, log=print) -> dict:
    """Run a training; returns a summary (accuracies, run directory, last checkpoint)."""
    t_start = time.time()
    cfg = cfg.resolved()
    devices = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devices):
            raise ResNetJaxError(f"--devices {cfg.devices} asked for, only {len(devices)} present")
        devices = devices[: cfg.devices]
    mesh = shd.make_mesh(devices)
    shd.check_batch_size(cfg.batch_size, mesh)
    main_process = jax.process_index() == 0

    # ---------------------------------------------------------------- data
    sets = load_splits(cfg.dataset, test_fraction=cfg.test_fraction,
                       val_fraction=cfg.val_fraction, channels=cfg.channels, strict=cfg.strict)
    train_set = sets["train"]
    pre = train_set.preprocess
    if cfg.image_size:
        pre = dataclasses.replace(pre, image_size=int(cfg.image_size))
    for split in sets.values():
        if split.skipped:
            log(f"warning: {split.skipped} unreadable image(s) skipped in {split.name}")
    num_classes, channels = train_set.num_classes, train_set.channels
    host = dict(shard_index=jax.process_index(), shard_count=jax.process_count(),
                workers=cfg.workers)
    train_loader = Loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, preprocess=pre, **host)
    eval_loaders = {k: Loader(v, cfg.batch_size, train=False, preprocess=pre, **host)
                    for k, v in sets.items() if k in ("val", "test")}
    spe = len(train_loader)
    total_steps = cfg.epochs * spe
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))

    # ---------------------------------------------------------------- model and state
    run_dir = _run_dir(cfg)
    ckpts = None
    resume_step = None
    if cfg.resume:
        if not run_dir.is_dir():
            raise ResNetJaxError(f"--resume: {run_dir} does not exist; nothing to resume")
        ckpts = RunCheckpoints(run_dir, cfg.keep)
        resume_step = ckpts.latest_step()
        if resume_step is None:
            raise ResNetJaxError(f"--resume: {run_dir} holds no checkpoint to resume from")
    elif run_dir.is_dir() and any(p.name.isdigit() for p in run_dir.iterdir()):
        raise ResNetJaxError(
            f"{run_dir} already holds a run's checkpoints; pass --resume to continue it "
            "or choose another --output"
        )

    if resume_step is not None:
        info, saved = ckpts.restore_info(resume_step)
        model = model_from_config(saved)
        saved_classes = int(saved.get("num_classes", -1))
        if saved_classes != num_classes:
            raise ResNetJaxError(
                f"the checkpoint at {run_dir}/{resume_step} was trained for {saved_classes} classes "
                f"but data set {cfg.dataset!r} has {num_classes} ({', '.join(train_set.class_names[:10])}"
                f"{' ...' if num_classes > 10 else ''}); resume with the run's own data set, or "
                f"fine-tune it on this one with --init-from {run_dir} and a new --output"
            )
        if saved.get("in_channels", channels) != channels:
            raise ResNetJaxError(
                f"the checkpoint at {run_dir} takes {saved['in_channels']}-channel images, "
                f"data set {cfg.dataset!r} has {channels}"
            )
        arch = saved.get("arch", cfg.arch)
        variables = init_variables(model, cfg.seed, pre.image_size)
    elif cfg.init_from:
        model, variables = finetune_variables(cfg.init_from, num_classes, pre.image_size,
                                              cfg.seed, cfg.precision)
        if model.in_channels != channels:
            raise ResNetJaxError(
                f"the model in {cfg.init_from} takes {model.in_channels}-channel images but "
                f"{cfg.dataset!r} has {channels}-channel ones; pass --channels {model.in_channels} "
                "for an image folder"
            )
        arch = cfg.arch
        from ..checkpoint import arch_of

        arch = arch_of(cfg.init_from) or arch
    else:
        model = build_model(cfg, num_classes, channels, pre.image_size)
        variables = trace_cache.initial_variables(model, cfg.seed, pre.image_size)
        arch = cfg.arch

    opt_cfg = OptimizerConfig(
        optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, warmup_steps=int(round(cfg.warmup_epochs * spe)),
        total_steps=cfg.epochs * spe, clip_norm=cfg.clip_norm,
        freeze_backbone=cfg.freeze_backbone,
    )
    tx = make_optimizer(opt_cfg)
    lr_at = schedule(opt_cfg)
    state = TrainState.create(model.apply, variables, tx)
    data_state = None
    if resume_step is not None:
        restored_vars, opt_state = ckpts.restore_state(
            resume_step, abstract(state.variables), abstract(state.opt_state))
        state = state.replace(
            step=jnp.asarray(resume_step, jnp.int32), params=restored_vars["params"],
            batch_stats=restored_vars.get("batch_stats", {}), opt_state=opt_state,
        )
        data_state = info["data"]
    if ckpts is None:
        ckpts = RunCheckpoints(run_dir, cfg.keep)
    state = shd.replicate(state, mesh)
    start_step = int(resume_step or 0)

    model_extra = {
        "class_names": list(train_set.class_names),
        "preprocess": pre.to_json(),
        "dataset": cfg.dataset,
    }
    run_settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("progress", "resume", "output")}

    # ---------------------------------------------------------------- steps
    train_step, eval_step = _jit_steps(model, pre, num_classes, cfg.label_smoothing, mesh,
                                       lr_at, opt_cfg)
    logs = MetricLog(run_dir, enabled=main_process, tensorboard=cfg.tensorboard)
    if main_process:
        what = (f"resumed at step {start_step}" if resume_step is not None else
                f"fine-tuning {cfg.init_from}" if cfg.init_from else "from scratch")
        log(f"training {arch} on {cfg.dataset} ({len(train_set)} train images, {num_classes} classes, "
            f"{pre.image_size}px) for {total_steps} steps on {mesh.devices.size} device(s), "
            f"{what}; run directory {run_dir}")

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and main_process), leave=False)
    it = train_loader.iterator(data_state)
    last_saved = resume_step
    val = None
    throughput_window = []

    def save(step, metrics=None):
        nonlocal last_saved
        info = {"step": step, "data": it.state(), "settings": run_settings,
                "num_classes": num_classes}
        path = ckpts.save(step, model, state, arch=arch, model_extra=model_extra,
                          train_info=info, metrics=metrics)
        last_saved = step
        return path

    try:
        t_prev = time.time()
        for step in range(start_step, total_steps):
            epoch = step // spe
            batch = shd.shard_batch(next(it), mesh)
            state, metrics = train_step(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _finite_check(metrics, step + 1, epoch, ckpts)
            now = time.time()
            if step > start_step:  # the first step compiles
                throughput_window = (throughput_window + [cfg.batch_size / max(now - t_prev, 1e-9)])[-20:]
            t_prev = now
            ips = float(np.median(throughput_window)) if throughput_window else None
            logs.write({"kind": "train", "step": step + 1, "epoch": epoch + 1,
                        "images_per_s": ips, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{ips or 0:.0f}", refresh=False)
            done = step + 1
            epoch_end = done % spe == 0
            if epoch_end and "val" in eval_loaders and ((done // spe) % cfg.eval_every == 0 or done == total_steps):
                r = evaluate(state, eval_loaders["val"], eval_step, mesh)
                val = r
                logs.write({"kind": "val", "step": done, "epoch": done // spe, "loss": r.loss,
                            "accuracy": r.accuracy, "top5": r.top5})
                save(done, {"val_accuracy": r.accuracy, "val_loss": r.loss})
            elif epoch_end or done == total_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                save(done)
        if last_saved != total_steps and total_steps > start_step:
            save(total_steps)
        bar.close()

        # ------------------------------------------------------------ final evaluation
        test_loader = eval_loaders.get("test") or eval_loaders.get("val")
        test = evaluate(state, test_loader, eval_step, mesh)
        logs.write({"kind": "test", "step": total_steps, "loss": test.loss,
                    "accuracy": test.accuracy, "top5": test.top5})
        latest_step, best = ckpts.latest_step(), ckpts.best_step()
    finally:
        bar.close()
        it.close()
        logs.close()
        ckpts.close()

    latest = run_dir / str(latest_step) if latest_step is not None else None
    summary = {
        "test_accuracy": test.accuracy, "test_correct": int(round(test.accuracy * test.count)),
        "test_count": test.count, "test_loss": test.loss, "test_top5": test.top5,
        "val_accuracy": None if val is None else val.accuracy,
        "run_dir": str(run_dir), "checkpoint": str(latest) if latest else None,
        "best_checkpoint": str(run_dir / str(best)) if best is not None else None,
        "steps": total_steps, "seconds": time.time() - t_start,
    }
    if main_process and cfg.plots:
        from ..viz.curves import plot_curves
        from .logs import read_metrics

        summary["curves"] = str(plot_curves(read_metrics(logs.path), run_dir / "curves.png"))
    return summary
