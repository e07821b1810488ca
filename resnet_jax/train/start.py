"""Where a run begins: a new model (from scratch or fine-tuned with a new head), or the
newest intact step of a run being resumed, checked against this run's settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from ..errors import ResNetJaxError
from ..models import abstract_variables, create_model, init_variables, with_new_head
from .checkpoints import RunCheckpoints, abstract
from .config import TrainConfig
from .state import OptimizerConfig, TrainState, make_optimizer


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


def optimizer_config(cfg: TrainConfig, spe: int) -> OptimizerConfig:
    return OptimizerConfig(
        optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, warmup_steps=int(round(cfg.warmup_epochs * spe)),
        total_steps=cfg.epochs * spe, clip_norm=cfg.clip_norm,
        freeze_backbone=cfg.freeze_backbone,
    )


@dataclasses.dataclass
class Start:
    """Where a run begins: a model and its variables, and when resuming its saved state."""

    model: object
    variables: dict
    arch: str | None
    step: int | None = None
    opt_state: object = None
    data_state: dict | None = None


def fresh_start(cfg: TrainConfig, data, on_model=None) -> Start:
    """A new model drawn from ``cfg.seed``, or with ``--init-from`` a saved one with a new head.

    ``on_model(model)``, when given, is called as soon as a new model is built, before its
    variables are drawn (the loop starts compiling the train step for it then)."""
    if not cfg.init_from:
        model = build_model(cfg, data.num_classes, data.channels, data.pre.image_size)
        if on_model is not None:
            on_model(model)
        return Start(model, init_variables(model, cfg.seed, data.pre.image_size), cfg.arch)
    from ..checkpoint import arch_of, load

    model, variables = with_new_head(*load(cfg.init_from), data.num_classes, cfg.seed)
    if cfg.precision == "bf16":
        model = model.clone(dtype=jnp.bfloat16)
    want = jax.tree_util.tree_structure(abstract_variables(model, data.pre.image_size))
    if jax.tree_util.tree_structure(abstract(variables)) != want:
        raise ResNetJaxError(f"the model in {cfg.init_from} does not match its own config")
    if model.in_channels != data.channels:
        raise ResNetJaxError(
            f"the model in {cfg.init_from} takes {model.in_channels}-channel images but "
            f"{cfg.dataset!r} has {data.channels}-channel ones; pass --channels {model.in_channels} "
            "for an image folder"
        )
    return Start(model, variables, arch_of(cfg.init_from) or cfg.arch)


def _check_resume_matches(cfg: TrainConfig, given: TrainConfig, saved: dict, where: str,
                          data: object) -> None:
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
    structure = [jax.tree_util.tree_structure(jax.eval_shape(make_optimizer(optimizer_config(c, spe)).init, params))
                 for c in (saved_cfg, cfg)]
    if structure[0] != structure[1]:
        keys = ("optimizer", "clip_norm", "freeze_backbone", "momentum", "nesterov")
        diff = [f"--{k.replace('_', '-')} {getattr(saved_cfg, k)!r} (now {getattr(cfg, k)!r})"
                for k in keys if getattr(saved_cfg, k) != getattr(cfg, k)]
        raise ResNetJaxError(
            f"--resume: the optimizer state at {where} was saved with other optimizer settings: "
            f"{', '.join(diff) or 'a different optimizer'}; resume with the saved run's settings")


def _resume(cfg: TrainConfig, given: TrainConfig, run_dir: Path, ckpts: RunCheckpoints,
            data: object, tx, log) -> Start:
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
            loaded = load_step(run_dir / str(step))  # restored into the model's abstract variables
            params = abstract(loaded.variables["params"])
            _check_optimizer_matches(cfg, info, params, data.steps_per_epoch, where)
            opt_state = ckpts.restore_opt_state(step, jax.eval_shape(tx.init, params), info)
        except CheckpointError as e:
            damaged.append((step, str(e)))
            continue
        for bad, reason in damaged:
            if jax.process_index() == 0:  # one process renames; the folder is shared
                aside = ckpts.set_aside(bad)
                log(f"warning: {reason}; moved it to {aside.name} and resumed from step {step}, "
                    "the newest intact checkpoint")
        return Start(loaded.model, loaded.variables, loaded.config.get("arch", cfg.arch), step,
                      opt_state, info["data"])
    raise ResNetJaxError(f"--resume: no intact checkpoint in {run_dir}: "
                         + "; ".join(reason for _, reason in damaged))


def abstract_state(model, image_size: int, tx) -> TrainState:
    """Shapes and dtypes of a fresh ``TrainState`` for ``model``, drawing nothing."""
    return jax.eval_shape(lambda v: TrainState.create(model.apply, v, tx),
                          abstract_variables(model, image_size))


def initial_state(cfg: TrainConfig, given: TrainConfig, run_dir: Path, ckpts: RunCheckpoints,
                  data, tx, log, start: Start | None) -> tuple[TrainState, Start]:
    """The train state at the start: a fresh one for ``start``, else the resumed step's (its
    optimizer state restored into shapes from ``jax.eval_shape``: nothing drawn)."""
    start = start or _resume(cfg, given, run_dir, ckpts, data, tx, log)
    if start.step is None:
        return TrainState.create(start.model.apply, start.variables, tx), start
    state = TrainState(step=jnp.asarray(start.step, jnp.int32), params=start.variables["params"],
                       batch_stats=start.variables.get("batch_stats", {}),
                       opt_state=start.opt_state, apply_fn=start.model.apply, tx=tx)
    return state, start
